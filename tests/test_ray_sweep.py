"""Sweeps on a local Ray instance (2 CPUs): the same store rows as the local path, failures
recorded, a killed driver resumed without redoing finished runs."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from reservoir_depth.results import ResultsStore
from reservoir_depth.study import Study
from reservoir_depth.sweep import sweep

ray = pytest.importorskip("ray")
from reservoir_depth.ray_sweep import run_study_ray  # noqa: E402

STUDY = {"study": "t", "dataset": "digits", "seeds": [0, 1], "full": True, "ranks": [0, 2],
         "arch": {"name": "mlp", "hidden": [8]}, "train": {"epochs": 1, "batch_size": 128}}


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _rows(store):
    return {r["run_id"]: r for r in store.rows("t")}


def test_ray_sweep_gives_the_rows_of_the_local_path(tmp_path, cluster):
    local = ResultsStore(tmp_path / "local.sqlite", create=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray task (1 CPU): the same float reductions
    try:
        sweep(Study.of(STUDY).runs(), local, progress=False)
    finally:
        torch.set_num_threads(threads)
    remote = ResultsStore(tmp_path / "ray.sqlite", create=True)
    counts = run_study_ray(STUDY, remote, progress=False)
    assert (counts.done, counts.failed, counts.total) == (6, 0, 6)
    a, b = _rows(local), _rows(remote)
    assert set(a) == set(b) and len(a) == 6
    for run_id in a:
        assert b[run_id]["status"] == "done" and b[run_id]["pid"] == os.getpid()  # the driver wrote it
        ma, mb = json.loads(a[run_id]["metrics"]), json.loads(b[run_id]["metrics"])
        assert ma["test_acc"] == mb["test_acc"] and ma["train_loss"] == pytest.approx(mb["train_loss"], rel=1e-6)
        assert json.loads(a[run_id]["config"]) == json.loads(b[run_id]["config"])
    again = run_study_ray(STUDY, remote, progress=False)  # resumable: nothing left to do
    assert (again.done, again.skipped) == (0, 6)


def test_a_failing_run_is_recorded_with_its_error(tmp_path, cluster):
    bad = {**STUDY, "study": "bad", "full": False, "ranks": [64], "seeds": [0]}  # r > the 8 hidden units
    store = ResultsStore(tmp_path / "r.sqlite", create=True)
    counts = run_study_ray(bad, store, progress=False)
    assert (counts.done, counts.failed) == (0, 1)
    (row,) = store.rows("bad")
    assert row["status"] == "failed" and row["error"].startswith("ValueError: rank r=64")


def test_resources_per_run_are_checked():
    for kwargs in ({"cpus": -1}, {"cpus": 0, "gpus": 0}, {"gpus": "one"}, {"cpus": True}):
        with pytest.raises(ValueError, match="per run|some resource"):
            run_study_ray(STUDY, None, **kwargs)


def test_a_study_file_sets_the_resources_of_each_run(tmp_path, monkeypatch):
    """[resources] cpus / gpus reach ray.remote (not the run configs: run ids do not change)."""
    from reservoir_depth.study import Study, StudyError

    seen = {}

    class FakeRay:
        def is_initialized(self):
            return True

        def remote(self, **kw):
            seen.update(kw)
            raise RuntimeError("stop")

    from reservoir_depth import ray_sweep

    monkeypatch.setattr(ray_sweep, "_ray", lambda: FakeRay())
    with pytest.raises(RuntimeError, match="stop"):
        run_study_ray({**STUDY, "resources": {"cpus": 2, "gpus": 0.5}}, None)
    assert (seen["num_cpus"], seen["num_gpus"]) == (2, 0.5)
    with pytest.raises(RuntimeError, match="stop"):
        run_study_ray(STUDY, None)
    assert (seen["num_cpus"], seen["num_gpus"]) == (1, 0)
    assert [r.run_id for r in Study.of({**STUDY, "resources": {"cpus": 4}}).runs()] == \
        [r.run_id for r in Study.of(STUDY).runs()]
    for bad in ({"cpus": -1}, {"cpus": 0, "gpus": 0}, {"tpus": 1}):
        with pytest.raises(StudyError, match="resources"):
            Study.of({**STUDY, "resources": bad})


def test_missing_ray_names_the_install_command(monkeypatch):
    from reservoir_depth import ray_sweep

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[ray\]'"):
        ray_sweep._ray()


DRIVER = textwrap.dedent("""
    import json, sys
    from reservoir_depth.results import ResultsStore
    from reservoir_depth.ray_sweep import run_study_ray
    study = json.loads({study!r})
    run_study_ray(study, ResultsStore(sys.argv[1], create=True), cpus=1, progress=False)
""")


def test_killed_driver_resumes_without_redoing_finished_runs(tmp_path):
    """The driver holds each run's lease; killed, its finished runs stay done and the others are retaken.
    A Ray task trains one seed's runs together (a group): 4 seeds on 2 CPUs, so the kill lands between groups."""
    study = {**STUDY, "seeds": [0, 1, 2, 3], "train": {"epochs": 4, "batch_size": 16}}
    n = len(Study.of(study).runs())
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(study=json.dumps(study)))
    db = tmp_path / "r.sqlite"
    proc = subprocess.Popen([sys.executable, str(script), str(db)], stderr=subprocess.DEVNULL,
                            start_new_session=True)
    store = ResultsStore(db, create=True)
    deadline = time.time() + 240
    while time.time() < deadline and not any(r["status"] == "done" for r in store.rows()):
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray instance it started
    proc.wait()
    done = {r["run_id"]: r["finished"] for r in store.rows() if r["status"] == "done"}
    assert 1 <= len(done) < n, "the kill should land mid-sweep"
    counts = sweep(Study.of(study).runs(), store, progress=False)  # any path resumes it; here the local one
    assert counts.skipped == len(done) and counts.done == n - len(done)
    after = {r["run_id"]: r for r in store.rows()}
    assert all(after[k]["finished"] == t for k, t in done.items())


def test_cli_runs_a_study_on_ray_and_refuses_mixed_options(tmp_path, capsys, cluster):
    from reservoir_depth.cli import main

    study = tmp_path / "s.toml"
    study.write_text('study = "tiny"\ndataset = "digits"\nseeds = [0]\nranks = [1]\nfull = false\n'
                     '[arch]\nname = "mlp"\nhidden = [8]\n[train]\nepochs = 1\n')
    out = tmp_path / "out"
    assert main(["run", str(study), "--out", str(out), "--backend", "ray", "--no-progress"]) == 0
    assert "1 run, 0 already done" in capsys.readouterr().out and (out / "report.md").exists()
    assert main(["sweep", str(study), "--out", str(out), "--backend", "ray", "--workers", "2"]) == 2
    assert "--workers 2 is for the local backend" in capsys.readouterr().err
    assert main(["sweep", str(study), "--out", str(out), "--address", "auto"]) == 2
    assert "--address needs --backend ray" in capsys.readouterr().err
