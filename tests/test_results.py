"""The SQLite results store (results.py) and the sweeps that write it: claims, leases and their
takeover, schema migration and the refusal to invent stores, resumable sweeps with several workers
or processes, and the sweep's accounting of every run (done / skipped / failed / failed before /
running elsewhere)."""

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
from hypothesis import given, strategies as st

from reservoir_depth import data
from reservoir_depth.report import markdown, rank_table
from reservoir_depth.results import ResultsStore, SweepCounts
from reservoir_depth.study import Study
from reservoir_depth.sweep import run_study, sweep
from reservoir_depth.run import Run
from conftest import make_blobs

STUDY = {"study": "t", "dataset": "blobs", "seeds": [0, 1], "full": True, "ranks": [0, 2],
         "arch": {"name": "mlp", "hidden": [16, 8]}, "train": {"epochs": 2, "batch_size": 64}}

QUICK_STUDY = {"study": "t", "dataset": "blobs", "seeds": [0, 1], "full": True, "ranks": [0, 2],
               "arch": {"name": "mlp", "hidden": [16, 8]}, "train": {"epochs": 1, "batch_size": 64}}
TESTS = os.path.dirname(__file__)

# the schema every store written before leases has (docs/results/*/runs.sqlite)
OLD_SCHEMA = """CREATE TABLE runs (run_id TEXT PRIMARY KEY, study TEXT NOT NULL, config TEXT NOT NULL, seed INTEGER,
version TEXT NOT NULL, status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')), metrics TEXT,
history TEXT, error TEXT, trainable INTEGER, total INTEGER, seconds REAL, host TEXT, pid INTEGER, started REAL,
finished REAL)"""


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


# ----------------------------------------------------------------------------- the store's columns and leases as the tests below read them

def columns(path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [r[1] for r in db.execute("PRAGMA table_info(runs)")]


def age_lease(store: ResultsStore, run_id: str, seconds: float) -> None:
    """Pretend the holder of ``run_id`` last refreshed its lease ``seconds`` ago."""
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE runs SET heartbeat = ? WHERE run_id = ?", (time.time() - seconds, run_id))


def other_host(store: ResultsStore, lease: float | None = None) -> ResultsStore:
    """The same store file as seen from another machine (its pids mean nothing here)."""
    s = ResultsStore(store.path, lease=lease or store.lease)
    s.host = "elsewhere"
    return s


# ----------------------------------------------------------------------------- opening a store

def test_a_missing_store_is_refused_unless_asked_to_create(tmp_path):
    path = tmp_path / "sub" / "runs.sqlite"
    with pytest.raises(FileNotFoundError, match=rf"no results store at {path}.*create=True"):
        ResultsStore(path)
    assert not path.exists() and not path.parent.exists()
    ResultsStore(path, create=True)
    assert path.exists() and ResultsStore(path).rows() == []
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_file_that_is_not_a_store_is_refused_naming_it(tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("not a database " * 100)
    with pytest.raises(ValueError, match=rf"{junk} is not a results store"):
        ResultsStore(junk)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE t (x)")
    with pytest.raises(ValueError, match=rf"{other} is not a results store .*'runs'"):
        ResultsStore(other)
    with pytest.raises(ValueError, match=rf"{tmp_path} is a folder.*runs.sqlite"):
        ResultsStore(tmp_path)


@pytest.mark.parametrize("lease", [0, -1.0, float("nan"), float("inf"), "60", True])
def test_lease_must_be_a_positive_number_of_seconds(tmp_path, lease):
    with pytest.raises(ValueError, match=rf"lease must be a positive finite number of seconds, got {lease!r}"):
        ResultsStore(tmp_path / "r.sqlite", create=True, lease=lease)


def test_a_store_from_before_leases_is_read_as_is_and_upgraded_on_first_write(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(OLD_SCHEMA)
        db.execute("INSERT INTO runs (run_id, study, config, version, status, metrics, host, pid, started) "
                   "VALUES ('a', 't', '{\"x\": 1}', '0.1', 'done', '{\"acc\": 0.5}', 'h', 1, 1.0)")
        db.execute("INSERT INTO runs (run_id, study, config, version, status, host, pid, started) "
                   "VALUES ('b', 't', '{\"x\": 2}', '0.1', 'running', 'elsewhere', 1, 1.0)")
    old = columns(path)
    store = ResultsStore(path)
    assert store.frame("t")["acc"].tolist() == [0.5] and store.status("b") == "running"
    assert columns(path) == old  # reading never rewrites the file
    assert not store.claim("a", "t", {"x": 1})  # done stays done
    assert store.claim("b", "t", {"x": 2})  # an old 'running' row with no heartbeat: its start is its lease
    assert columns(path)[: len(old)] == old and {"heartbeat", "invocation"} <= set(columns(path))
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert list(store.frame("t").columns) == list(ResultsStore(path).frame("t").columns)
    assert "heartbeat" not in store.frame("t", status=None).columns  # bookkeeping stays out of the frame


# ----------------------------------------------------------------------------- leases

def test_a_live_lease_holds_the_run_and_a_stale_one_is_taken_over(tmp_path):
    a = ResultsStore(tmp_path / "r.sqlite", create=True, lease=30)
    b = other_host(a)
    assert a.claim("x", "t", {})
    assert not b.claim("x", "t", {})  # fresh heartbeat, another host: held
    age_lease(a, "x", 10)
    assert not b.claim("x", "t", {})  # 10 s < 30 s lease
    age_lease(a, "x", 31)
    assert a.beat("x")  # the holder refreshes in time
    assert not b.claim("x", "t", {})
    age_lease(a, "x", 31)
    assert b.claim("x", "t", {})  # expired: another process takes it over
    assert not a.beat("x")  # the old holder learns it lost the run
    assert not a.finish("x", {"acc": 1.0}) and not a.fail("x", "late")  # and cannot overwrite it
    assert b.finish("x", {"acc": 0.5})
    assert a.frame()["acc"].tolist() == [0.5]


def test_hold_refreshes_the_heartbeat_from_a_background_thread(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite", create=True, lease=0.4)  # a beat every 0.1 s
    assert store.claim("x", "t", {})
    with store.hold("x"):
        age_lease(store, "x", 1000)
        deadline = time.time() + 60
        while time.time() < deadline and store.rows()[0]["heartbeat"] < time.time() - 500:
            time.sleep(0.05)
        assert store.rows()[0]["heartbeat"] > time.time() - 500
    age_lease(store, "x", 1000)
    time.sleep(0.5)
    assert store.rows()[0]["heartbeat"] < time.time() - 500  # the thread stopped with the block


def test_failed_runs_are_retried_only_when_asked_and_never_twice_in_one_invocation(tmp_path):
    s = ResultsStore(tmp_path / "r.sqlite", create=True)
    assert s.claim("x", "t", {}, invocation="first")
    s.fail("x", "RuntimeError: boom")
    assert not s.claim("x", "t", {}, invocation="second")
    assert not s.claim("x", "t", {}, invocation="first", retry_failed=True)  # failed in this invocation
    assert s.claim("x", "t", {}, invocation="second", retry_failed=True)


# ----------------------------------------------------------------------------- the sweep's accounting

def broken_loader(log):
    def load(**kwargs):
        with open(log, "a") as f:
            f.write("attempt\n")
        raise RuntimeError("no such data here; install it with: apt-get install dataset-broken")
    return load


def test_failing_runs_with_two_workers_are_attempted_once_each_and_counted_right(tmp_path, monkeypatch):
    log = tmp_path / "attempts.log"
    monkeypatch.setitem(data.DATASETS, "broken", broken_loader(log))
    study = {**QUICK_STUDY, "dataset": "broken"}
    n = len(Study.of(study).runs())
    store = ResultsStore(tmp_path / "r.sqlite", create=True)
    counts = run_study(study, store, workers=2, progress=False)
    assert counts == SweepCounts(failed=n, errors={"RuntimeError": "RuntimeError: no such data here; install it "
                                                                  "with: apt-get install dataset-broken"})
    assert len(log.read_text().splitlines()) == n  # each run once, not once per worker
    again = run_study(study, store, workers=2, progress=False)
    assert again == SweepCounts(failed_before=n, errors=counts.errors) and len(log.read_text().splitlines()) == n
    retried = run_study(study, store, workers=2, progress=False, retry_failed=True)
    assert retried == counts and len(log.read_text().splitlines()) == 2 * n
    assert "1 failed" not in retried.summary() and f"{n} failed" in retried.summary()
    assert "apt-get install dataset-broken" in retried.summary()


outcome = st.sampled_from(SweepCounts.OUTCOMES).map(lambda o: (o, f"E{o}: {o}" if "failed" in o else None))


@given(st.lists(st.dictionaries(st.sampled_from("abcdef"), outcome), min_size=1, max_size=4))
def test_counts_count_each_run_once_with_the_outcome_of_the_worker_that_ran_it(parts):
    run_ids = list("abcdef")
    counts = SweepCounts.of(run_ids + ["a"], parts)  # a run listed twice is one run
    assert counts.total == len(run_ids)
    ran = {k for p in parts for k, (o, _) in p.items() if o in ("done", "failed")}
    assert counts.done + counts.failed == len(ran)  # whatever the other workers saw of those runs
    unseen = set(run_ids) - {k for p in parts for k in p}
    assert counts.running_elsewhere >= len(unseen)  # a run no worker reported is not counted as finished
    final = {k: min((p[k][0] for p in parts if k in p), key=SweepCounts.OUTCOMES.index) for k in set(run_ids) - unseen}
    assert set(counts.errors) == {f"E{o}" for o in final.values() if "failed" in o}


def test_two_workers_count_done_skipped_and_failed_once_each(tmp_path, monkeypatch):
    store = ResultsStore(tmp_path / "r.sqlite", create=True)
    study = {**QUICK_STUDY, "ranks": [0, 2, 99]}  # r = 99 > min(d_in, d_out) fails
    sweep(Study.of(study).runs(ranks=[0], baselines=False), store, progress=False)  # 2 runs done before
    counts = run_study(study, store, workers=2, progress=False)
    assert (counts.done, counts.skipped, counts.failed, counts.failed_before, counts.running_elsewhere) == (4, 2, 2, 0, 0)
    assert list(counts.errors) == ["ValueError"] and "rank r=99" in counts.errors["ValueError"]
    assert counts.total == len(Study.of(study).runs()) == 8
    for workers in (1, 3):
        c = run_study(study, store, workers=workers, progress=False)
        assert (c.done, c.skipped, c.failed, c.failed_before, c.running_elsewhere) == (0, 6, 0, 2, 0)


def test_a_run_held_by_another_live_process_is_counted_as_running_elsewhere(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite", create=True)
    runs = Study.of({**QUICK_STUDY, "seeds": [0], "ranks": [0]}).runs()
    assert other_host(store).claim(runs[0].run_id, "t", {})
    counts = sweep(runs, store, progress=False)
    assert (counts.done, counts.running_elsewhere, counts.total) == (1, 1, 2)
    assert "1 held by another live process" in counts.summary()


# ----------------------------------------------------------------------------- killed and stopped workers

LEASED_WORKER = textwrap.dedent("""
    import json, sys, time, torch
    sys.path.insert(0, {tests!r})
    torch.set_num_threads(1)
    from conftest import make_blobs
    from reservoir_depth import data
    from reservoir_depth.results import ResultsStore
    from reservoir_depth.study import Study
    from reservoir_depth.sweep import run_study, sweep
    data.DATASETS["blobs"] = lambda: make_blobs(n_train=512)
    data.DATASETS["slow"] = lambda: time.sleep(600)
    study = json.loads({study!r})
    store = ResultsStore(sys.argv[1], create=True, lease=float(sys.argv[2]))
    print(run_study(study, store, workers=int(sys.argv[3]), progress=False), flush=True)
""")


def start_worker(tmp_path, study, lease, workers=1):
    script = tmp_path / "worker.py"
    script.write_text(LEASED_WORKER.format(tests=TESTS, study=json.dumps(study)))
    return subprocess.Popen([sys.executable, str(script), str(tmp_path / "r.sqlite"), str(lease), str(workers)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(predicate, what: str, bound: float = 120):
    deadline = time.time() + bound
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def running(db) -> list[dict]:
    """The store's 'running' rows, once the worker has created it."""
    try:
        return [r for r in ResultsStore(db).rows() if r["status"] == "running"]
    except (FileNotFoundError, ValueError):  # not there yet, or being created
        return []


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting to be reaped counts as exited)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.split()[:2] == ["State:", "Z"] for line in f)
    except FileNotFoundError:
        return True


def test_a_stopped_workers_run_is_taken_over_once_its_lease_expires(tmp_path):
    study = {**QUICK_STUDY, "seeds": [0], "ranks": [2], "full": False, "train": {"epochs": 200, "batch_size": 16}}
    proc = start_worker(tmp_path, study, lease=1.0)
    db = tmp_path / "r.sqlite"
    try:
        wait_for(lambda: running(db), "the worker to claim its run")
        proc.send_signal(signal.SIGSTOP)  # alive, but no longer refreshing its lease
        store = ResultsStore(db, lease=1.0)
        wait_for(lambda: store.rows()[0]["heartbeat"] < time.time() - 1.5, "the stopped worker's lease to expire")
        counts = sweep(Study.of(study).runs(), store, progress=False)
        assert (counts.done, counts.running_elsewhere) == (1, 0)
        (row,) = store.rows()
        assert row["status"] == "done" and row["pid"] == os.getpid()
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc")
def test_pool_workers_exit_when_their_parent_is_killed(tmp_path):
    study = {**QUICK_STUDY, "dataset": "slow"}  # every run sleeps in its data loader
    proc = start_worker(tmp_path, study, lease=60, workers=2)
    db = tmp_path / "r.sqlite"
    pids = []
    try:
        # each worker claims a unit of work: a seed's runs, trained together (sweep.units)
        pids = wait_for(lambda: len(pids := {r["pid"] for r in running(db)}) == 2 and sorted(pids),
                        "both workers to claim their runs")
        assert proc.pid not in pids
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        wait_for(lambda: all(gone(p) for p in pids), "the orphaned workers to exit", bound=60)
    finally:
        proc.kill()
        proc.wait()
        for p in pids:
            if not gone(p):
                os.kill(p, signal.SIGKILL)


def test_amend_adds_missing_keys_to_a_done_run_and_never_changes_a_recorded_value(tmp_path):
    s = ResultsStore(tmp_path / "r.sqlite", create=True)
    assert s.claim("x", "t", {})
    assert not s.amend("x", {"n_test": 10})  # not done yet
    s.finish("x", {"acc": 0.5}, {"epochs": [1]})
    assert s.amend("x", {"n_test": 10, "acc": 0.9}, {"dataset": [1], "epochs": []})
    assert s.frame()[["acc", "n_test"]].values.tolist() == [[0.5, 10]]
    assert s.history("x") == {"epochs": [1], "dataset": [1]}
    assert not s.amend("missing", {"n_test": 1})


def test_an_interrupted_sweep_frees_its_run_at_once(tmp_path, monkeypatch):
    def interrupted(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setitem(data.DATASETS, "interrupted", interrupted)
    store = ResultsStore(tmp_path / "r.sqlite", create=True)
    runs = Study.of({**QUICK_STUDY, "dataset": "interrupted", "seeds": [0], "ranks": []}).runs()
    with pytest.raises(KeyboardInterrupt):
        sweep(runs, store, progress=False)
    assert store.rows() == []  # not left 'running' (held by this live process) until its lease lapses
    monkeypatch.setitem(data.DATASETS, "interrupted", make_blobs)
    assert sweep(runs, store, progress=False) == SweepCounts(done=1)


@pytest.mark.parametrize("workers", [0, -2, 1.5, True, "2"])
def test_workers_must_be_a_positive_integer(tmp_path, workers):
    with pytest.raises(ValueError, match=rf"workers must be a positive integer, got {workers!r}"):
        run_study(QUICK_STUDY, ResultsStore(tmp_path / "r.sqlite", create=True), workers=workers)


def test_lapsed_tells_a_stale_running_row_from_a_held_one(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite", create=True, lease=30)
    assert store.claim("x", "t", {})
    (row,) = store.rows()
    assert not store.lapsed(row)
    assert store.lapsed({**row, "heartbeat": time.time() - 31})
    assert not other_host(store).lapsed({**row, "heartbeat": time.time() - 29})
    assert other_host(store).lapsed({**row, "heartbeat": None, "started": time.time() - 31})  # before leases
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert store.lapsed({**row, "pid": dead.pid})  # its process on this host is gone
    assert not other_host(store).lapsed({**row, "pid": dead.pid})  # a pid on another host means nothing here
