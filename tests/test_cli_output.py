"""What `reservoir-depth run` prints: a short summary (r* with its tolerance, the rank table, where the
report is) instead of the whole report, and no nested progress bars when stderr is not a terminal."""

from __future__ import annotations

from reservoir_depth.cli import main

STUDY = ('study = "short"\ndataset = "digits"\nseeds = [0]\nranks = [0, 2]\nfull = true\nspectra = true\n'
         '[arch]\nname = "mlp"\nhidden = [16]\n[train]\nepochs = 2\nbatch_size = 256\n')


def test_run_prints_a_short_summary_and_quiet_progress(tmp_path, capsys):
    study = tmp_path / "s.toml"
    study.write_text(STUDY)
    out = tmp_path / "out"
    assert main(["run", str(study), "--out", str(out)]) == 0  # progress on, but stderr is captured (no terminal)
    printed = capsys.readouterr()
    report = (out / "report.md").read_text()
    assert len(printed.out.splitlines()) < 25 < len(report.splitlines()), printed.out
    assert "0.01 (1.00 pp, absolute)" in printed.out and f"{out / 'report.md'}" in printed.out
    assert "LottaLoRA" in printed.out and "full" in printed.out  # the rank table
    assert printed.err.count("\n") <= 2, printed.err  # the sweep's bar at most, no per-run training bars
