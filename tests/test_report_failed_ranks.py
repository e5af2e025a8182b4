"""A study whose every rank run failed, or that has no rank (issue 20.12): `reservoir-depth run` renders
report.md with the full-training runs and the failures shown, instead of dying in the report."""

import pytest

from reservoir_depth import cli

STUDY = '''study = "{name}"
dataset = "digits"
seeds = [0]
ranks = {ranks}
full = true
arch = {{name = "mlp", hidden = [8]}}
train = {{epochs = 1, batch_size = 512}}
'''


@pytest.mark.parametrize("ranks, failed", [("[100]", True), ("[]", False)])
@pytest.mark.filterwarnings("error")
def test_run_reports_full_training_when_no_rank_run_finished(ranks, failed, tmp_path, capsys):
    study = tmp_path / "s.toml"
    study.write_text(STUDY.format(name="no_ranks", ranks=ranks))
    code = cli.main(["run", str(study), "--out", str(tmp_path / "out"), "--no-progress"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "KeyError" not in captured.err, captured.err
    assert code == (cli.FAILED if failed else 0)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| full training | full |" in report  # the runs that finished
    assert "r*(eps) needs full training and at least one rank that ran for every seed: not stated." in report
    if failed:  # the failures, first, with their error
        assert "Runs: 1 of 2 done, 1 failed." in report and "- failed: lotta r=100 seed=0" in report
        assert "rank r=100 for layer 'layers.0' must lie in [0, min(d_in, d_out)]" in report
    assert (tmp_path / "out" / "rank.png").is_file() and (tmp_path / "out" / "study.json").is_file()
