import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from reservoir_depth import data
from reservoir_depth.report import markdown, rank_table
from reservoir_depth.results import ResultsStore, SweepCounts
from reservoir_depth.study import Study
from reservoir_depth.sweep import Run, sweep
from conftest import make_blobs

STUDY = {"study": "t", "dataset": "blobs", "seeds": [0, 1], "full": True, "ranks": [0, 2],
         "arch": {"name": "mlp", "hidden": [16, 8]}, "train": {"epochs": 2, "batch_size": 64}}

WORKER = textwrap.dedent("""
    import dataclasses, json, sys, torch
    sys.path.insert(0, {tests!r})
    torch.set_num_threads(1)
    from conftest import make_blobs
    from reservoir_depth import data
    from reservoir_depth.results import ResultsStore
    from reservoir_depth.study import Study
    from reservoir_depth.sweep import sweep
    data.DATASETS["blobs"] = lambda: make_blobs(n_train={n})
    study = json.loads({study!r})
    counts = sweep(Study.of(study).runs(), ResultsStore(sys.argv[1], create=True), progress=False)
    print(json.dumps(dataclasses.asdict(counts)), flush=True)
""")


@pytest.fixture(autouse=True)
def _blobs(monkeypatch):
    monkeypatch.setitem(data.DATASETS, "blobs", make_blobs)
    from reservoir_depth import run as run_mod
    run_mod._dataset.cache_clear()


def worker_script(tmp_path, n=256, study=STUDY):
    p = tmp_path / "worker.py"
    p.write_text(WORKER.format(tests=os.path.dirname(__file__), n=n, study=json.dumps(study)))
    return p


def test_claim_finish_skip(tmp_path):
    s = ResultsStore(tmp_path / "r.sqlite", create=True)
    assert s.claim("a", "t", {"x": 1}, 0)
    assert not s.claim("a", "t", {"x": 1}, 0)  # running in this (live) process
    s.finish("a", {"acc": 0.5}, {"epochs": []}, 10, 100, 1.0)
    assert not s.claim("a", "t", {"x": 1}, 0) and s.status("a") == "done"
    assert s.claim("b", "t", {"x": 2}, 1)
    s.fail("b", "boom")
    assert not s.claim("b", "t", {"x": 2}, 1)  # failed runs are retried only when asked
    assert s.claim("b", "t", {"x": 2}, 1, retry_failed=True)
    df = s.frame("t")
    assert list(df["run_id"]) == ["a"] and df.loc[0, "acc"] == 0.5 and df.loc[0, "cfg.x"] == 1
    assert s.history("a") == {"epochs": []}


def test_run_left_running_by_a_dead_process_is_retried(tmp_path):
    s = ResultsStore(tmp_path / "r.sqlite", create=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert s.claim("a", "t", {}, 0)
    with s._connect() as db:
        db.execute("UPDATE runs SET pid = ? WHERE run_id = 'a'", (dead.pid,))
    assert s.claim("a", "t", {}, 0)


def test_sweep_skips_finished_runs(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite", create=True)
    runs = Study.of(STUDY).runs()
    assert len(runs) == 6 and len({r.run_id for r in runs}) == 6
    assert sweep(runs, store, progress=False) == SweepCounts(done=6)
    assert sweep(runs, store, progress=False) == SweepCounts(skipped=6)
    df = store.frame("t")
    assert len(df) == 6 and df["test_acc"].between(0, 1).all()
    assert set(df["cfg.method"]) == {"full", "lotta"}
    lotta = df[df["cfg.method"] == "lotta"]
    assert (lotta["cfg.scaffold.root_seed"] == lotta["seed"]).all()
    assert (lotta["cfg.scaffold.target_modules"] == json.dumps([r"layers\.\d+"])).all()


def test_failed_run_is_recorded_and_sweep_goes_on(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite", create=True)
    runs = Study.of({**STUDY, "seeds": [0], "ranks": [0, 99]}).runs()  # r=99 > min(d_in, d_out)
    counts = sweep(runs, store, progress=False)
    assert (counts.done, counts.skipped, counts.failed) == (2, 0, 1) and "rank r=99" in counts.errors["ValueError"]
    failed = [r for r in store.rows() if r["status"] == "failed"]
    assert "rank r=99" in failed[0]["error"]


def test_killed_sweep_resumes_without_losing_or_repeating_runs(tmp_path):
    db = tmp_path / "r.sqlite"
    study = {**STUDY, "train": {"epochs": 30, "batch_size": 16}}
    proc = subprocess.Popen([sys.executable, str(worker_script(tmp_path, n=512, study=study)), str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    store = ResultsStore(db, create=True)
    deadline = time.time() + 120
    # kill once a run is done and the next one is running (not in the instant between the two)
    while time.time() < deadline and not {"done", "running"} <= {r["status"] for r in store.rows()}:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {r["run_id"]: r for r in store.rows()}
    done_before = {k: r["finished"] for k, r in before.items() if r["status"] == "done"}
    assert 1 <= len(done_before) < 6, "the kill should land mid-sweep"
    interrupted = [k for k, r in before.items() if r["status"] == "running"]  # almost always one (see the poll)
    counts = sweep(Study.of(study).runs(), store, progress=False)
    assert counts.skipped == len(done_before) and counts.done == 6 - len(done_before)
    after = {r["run_id"]: r for r in store.rows()}
    assert len(after) == 6 and all(r["status"] == "done" for r in after.values())
    assert all(after[k]["finished"] == t for k, t in done_before.items())  # not redone
    assert all(after[k]["pid"] == os.getpid() for k in interrupted)  # the killed run was run again, here


def test_two_workers_share_a_store(tmp_path):
    db = tmp_path / "r.sqlite"
    script = worker_script(tmp_path)
    procs = [subprocess.Popen([sys.executable, str(script), str(db)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in procs]
    assert sum(o["done"] for o in outs) == 6  # each run once; the other process saw it done or running
    assert all(o["done"] + o["skipped"] + o["running_elsewhere"] == 6 and o["failed"] == 0 for o in outs)
    assert len(ResultsStore(db).frame("t")) == 6


class _LockedOnce(sqlite3.Connection):
    """A connection whose first switch to WAL is refused as SQLite refuses it when another process
    switches the same new file at the same instant (SQLITE_BUSY without waiting)."""
    refused = 0

    def execute(self, sql, *args):
        if sql.upper().startswith("PRAGMA JOURNAL_MODE=WAL") and _LockedOnce.refused < 2:
            _LockedOnce.refused += 1
            raise sqlite3.OperationalError("database is locked")
        return super().execute(sql, *args)


def test_creating_a_store_retries_when_another_process_holds_the_lock(tmp_path, monkeypatch):
    _LockedOnce.refused = 0
    monkeypatch.setattr(ResultsStore, "_connect",
                        lambda self: sqlite3.connect(self.path, timeout=60, isolation_level=None,
                                                     factory=_LockedOnce))
    store = ResultsStore(tmp_path / "r.sqlite", create=True)
    assert _LockedOnce.refused == 2 and store.rows() == []


def _create(path, barrier):
    barrier.wait()
    ResultsStore(path, create=True)


def test_many_processes_create_one_store_at_once(tmp_path):
    """The race CI hit: workers that start together all create the same new store."""
    ctx = multiprocessing.get_context("fork")
    for i in range(20):
        barrier = ctx.Barrier(6)
        procs = [ctx.Process(target=_create, args=(tmp_path / f"{i}.sqlite", barrier)) for _ in range(6)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        assert [p.exitcode for p in procs] == [0] * 6


def test_rank_table_recovery(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite", create=True)
    sweep(Study.of(STUDY).runs(), store, progress=False)
    df = store.frame("t")
    table = rank_table(df)
    assert list(table["r"]) == [0, 2, "full"]
    full = df[df["cfg.method"] == "full"]["test_acc"].mean()
    r2 = df[(df["cfg.method"] == "lotta") & (df["cfg.scaffold.r"] == 2)]["test_acc"].mean()
    assert table.loc[1, "recovery"] == pytest.approx(r2 / full)
    assert table.loc[2, "recovery"] == pytest.approx(1.0) and (table["n"] == 2).all()
    md = markdown(table)
    assert md.count("\n") == 5 and "| LottaLoRA | 2 |" in md


def test_run_validates_method():
    with pytest.raises(ValueError, match=r"method must be one of .*'twin'.*, got 'half'"):
        Run(study="t", dataset="blobs", arch={"name": "mlp"}, method="half", seed=0)
