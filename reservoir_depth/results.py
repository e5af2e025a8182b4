"""A results store on SQLite: one row per run, safe for several workers, resumable.

A run is keyed by the hash of its resolved config. ``claim`` takes a run inside one
IMMEDIATE transaction, so two workers never run the same config. The process that
holds a run keeps a lease on it (a heartbeat, ``hold``); a run whose holder died or
stopped refreshing its lease for ``lease`` seconds is taken over, so a killed sweep
retries only the runs it did not finish. A failed run is retried only when asked
(``retry_failed``), and never twice in one invocation. ``frame`` loads everything
into pandas, its column names owned by ``Columns``; ``SweepCounts`` says what one sweep did with each of its runs.
"""

from __future__ import annotations

import json
import math
import os
import random
import socket
import sqlite3
import threading
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from ._version import __version__
from .checks import is_number

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id    TEXT PRIMARY KEY,
    study     TEXT NOT NULL,
    config    TEXT NOT NULL,
    seed      INTEGER,
    version   TEXT NOT NULL,
    status    TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    metrics   TEXT,
    history   TEXT,
    error     TEXT,
    trainable INTEGER,
    total     INTEGER,
    seconds   REAL,
    host      TEXT,
    pid       INTEGER,
    started   REAL,
    finished  REAL,
    heartbeat REAL,
    invocation TEXT
)
"""
# columns a store written before leases lacks: added on its first write; bookkeeping, not in frame()
LEASE_COLUMNS = {"heartbeat": "REAL", "invocation": "TEXT"}
LEASE = 120.0  # seconds without a heartbeat after which another process may take a 'running' run over


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ResultsStore:
    """SQLite file of runs (WAL mode, so readers never block the writer).

    ``create=True`` starts a new store where none exists (the sweep does; a report only reads).
    ``lease``: seconds a 'running' run stays held without a heartbeat from its process."""

    def __init__(self, path: str | os.PathLike, create: bool = False, lease: float = LEASE) -> None:
        if not is_number(lease) or not 0 < lease < math.inf:
            raise ValueError(f"lease must be a positive finite number of seconds, got {lease!r}")
        self.path, self.lease, self.host = Path(path), float(lease), socket.gethostname()
        self._upgraded = False
        if self.path.is_dir():
            raise ValueError(f"{self.path} is a folder; a results store is a file such as "
                             f"{self.path / 'runs.sqlite'}")
        if not self.path.exists():
            if not create:
                raise FileNotFoundError(f"no results store at {self.path} (run the sweep first, or pass "
                                        f"create=True to start an empty one)")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with closing(self._connect()) as db:
                tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as e:
            raise ValueError(f"{self.path} is not a results store: {e}") from None
        if create:
            self._writer().close()
        elif "runs" not in tables:
            raise ValueError(f"{self.path} is not a results store (it has no 'runs' table)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=60, isolation_level=None)

    @staticmethod
    @contextmanager
    def _immediate(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction on ``db``: committed when the block ends (a block that returns
        early, having written nothing, commits nothing), rolled back on any error."""
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _writer(self) -> sqlite3.Connection:
        """A connection to write with. The first one creates the table, or adds the lease columns
        to a store from before leases (reading never rewrites the file)."""
        db = self._connect()
        if not self._upgraded:
            try:
                self._wal(db)
                with self._immediate(db):
                    db.execute(SCHEMA)
                    have = {r[1] for r in db.execute("PRAGMA table_info(runs)")}
                    for name, kind in LEASE_COLUMNS.items():
                        if name not in have:
                            db.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")
            except BaseException:
                db.close()
                raise
            self._upgraded = True
        return db

    @staticmethod
    def _wal(db: sqlite3.Connection, wait: float = 60.0) -> None:
        """Switch ``db`` to WAL. Two processes switching one new file at the same instant get
        SQLITE_BUSY at once (SQLite does not wait there, to avoid a deadlock): retry until ``wait``."""
        deadline = time.monotonic() + wait
        while True:
            try:
                db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01 + 0.05 * random.random())

    def status(self, run_id: str) -> str | None:
        row = self.row(run_id)
        return row["status"] if row else None

    def row(self, run_id: str) -> dict[str, Any] | None:
        """The run's row as a dict (None if the store has no such run)."""
        with closing(self._connect()) as db:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return dict(row) if row else None

    def claim(self, run_id: str, study: str, config: Mapping[str, Any], seed: int | None = None, *,
              invocation: str | None = None, retry_failed: bool = False) -> bool:
        """Mark the run 'running' for this process, with a fresh lease; True if this process now holds it.

        Taken: a new run; a 'running' run whose lease lapsed (no heartbeat for ``lease`` seconds, or
        its process on this host is dead); with ``retry_failed``, a failed run, unless it failed in
        this same ``invocation`` (the id the workers of one sweep share). Never a done run."""
        now = time.time()
        with closing(self._writer()) as db, self._immediate(db):
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT status, host, pid, started, heartbeat, invocation FROM runs "
                             "WHERE run_id = ?", (run_id,)).fetchone()
            if row is not None and not self._takeable(dict(row), now, invocation, retry_failed):
                return False
            db.execute(
                "INSERT OR REPLACE INTO runs (run_id, study, config, seed, version, status, host, pid, started, "
                "heartbeat, invocation) VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, ?)",
                (run_id, study, json.dumps(config, sort_keys=True), seed, __version__, self.host, os.getpid(),
                 now, now, invocation))
            return True

    def _takeable(self, row: Mapping[str, Any], now: float, invocation: str | None, retry_failed: bool) -> bool:
        if row["status"] == "failed":
            return retry_failed and (invocation is None or row["invocation"] != invocation)
        return row["status"] == "running" and self.lapsed(row, now)

    def lapsed(self, row: Mapping[str, Any], now: float | None = None) -> bool:
        """Whether the lease on a 'running' row (from ``rows``) has lapsed, so another process may take
        the run over: no heartbeat for ``lease`` seconds (a row from before leases: since it started),
        or its process on this host is dead."""
        beat = row.get("heartbeat")
        beat = row["started"] if beat is None else beat
        now = time.time() if now is None else now
        return (row["host"] == self.host and not _pid_alive(row["pid"])) or beat is None or now - beat > self.lease

    def _update_held(self, run_id: str, assignments: str, values: tuple) -> bool:
        """UPDATE the run only while this process still holds it; False if its lease was taken over."""
        with closing(self._writer()) as db:
            cur = db.execute(f"UPDATE runs SET {assignments} WHERE run_id = ? AND status = 'running' "
                             "AND host = ? AND pid = ?", (*values, run_id, self.host, os.getpid()))
            return cur.rowcount == 1

    def beat(self, run_id: str) -> bool:
        """Refresh this process's lease on the run; False if it no longer holds it."""
        return self._update_held(run_id, "heartbeat = ?", (time.time(),))

    @contextmanager
    def hold(self, run_id: str) -> Iterator[None]:
        """Keep this process's lease on ``run_id`` fresh while the block runs (hold_all of one run)."""
        with self.hold_all({run_id}):
            yield

    @contextmanager
    def hold_all(self, held: set[str]) -> Iterator[None]:
        """Keep this process's leases on every run in ``held`` fresh while the block runs (a beat every
        ``lease / 4`` seconds from one background thread); the caller may add and remove ids meanwhile.
        A run taken over by another process is dropped from ``held``."""
        stop = threading.Event()

        def beats() -> None:
            while not stop.wait(self.lease / 4):
                for run_id in list(held):
                    try:
                        if not self.beat(run_id):
                            held.discard(run_id)  # taken over: nothing left to hold
                    except sqlite3.OperationalError:
                        pass  # the store is busy: try again at the next beat

        thread = threading.Thread(target=beats, name="leases", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def release(self, run_id: str) -> bool:
        """Give up a run this process holds without a result (an interrupted run): it is new again."""
        with closing(self._writer()) as db:
            cur = db.execute("DELETE FROM runs WHERE run_id = ? AND status = 'running' AND host = ? AND pid = ?",
                             (run_id, self.host, os.getpid()))
            return cur.rowcount == 1

    def finish(self, run_id: str, metrics: Mapping[str, Any], history: Mapping[str, Any] | None = None,
               trainable: int | None = None, total: int | None = None, seconds: float | None = None) -> bool:
        """Record the run as done; False (nothing written) if another process took it over."""
        return self._update_held(
            run_id, "status = 'done', metrics = ?, history = ?, trainable = ?, total = ?, seconds = ?, "
            "finished = ?, error = NULL",
            (json.dumps(metrics, sort_keys=True), json.dumps(history, sort_keys=True), trainable, total, seconds,
             time.time()))

    def fail(self, run_id: str, error: str) -> bool:
        """Record the run as failed with its error; False (nothing written) if another process took it over."""
        return self._update_held(run_id, "status = 'failed', error = ?, finished = ?", (error, time.time()))

    def amend(self, run_id: str, metrics: Mapping[str, Any], history: Mapping[str, Any] | None = None) -> bool:
        """Add keys missing from a done run's metrics and history (a backfill of what newer sweeps
        record); a recorded value is never changed. False if the run is not done."""
        with closing(self._writer()) as db, self._immediate(db):
            row = db.execute("SELECT metrics, history FROM runs WHERE run_id = ? AND status = 'done'",
                             (run_id,)).fetchone()
            if row is None:
                return False
            old_metrics, old_history = json.loads(row[0] or "{}"), json.loads(row[1] or "null") or {}
            db.execute("UPDATE runs SET metrics = ?, history = ? WHERE run_id = ?",
                       (json.dumps({**metrics, **old_metrics}, sort_keys=True),
                        json.dumps({**(history or {}), **old_history}, sort_keys=True), run_id))
            return True

    def rows(self, study: str | None = None) -> list[dict[str, Any]]:
        q, args = "SELECT * FROM runs", ()
        if study is not None:
            q, args = q + " WHERE study = ?", (study,)
        db = self._connect()
        db.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in db.execute(q + " ORDER BY started", args)]
        finally:
            db.close()

    def frame(self, study: str | None = None, status: str | None = "done"):
        """One row per run: run metadata, config fields (``Columns.config``) and metrics, flattened."""
        import pandas as pd

        records = []
        for r in self.rows(study):
            if status is not None and r["status"] != status:
                continue
            cfg = json.loads(r.pop("config"))
            metrics = json.loads(r.pop("metrics") or "{}")
            for name in ("history", *LEASE_COLUMNS):
                r.pop(name, None)
            records.append({**r, **{Columns.config(k): v for k, v in _flatten(cfg).items()}, **metrics})
        return pd.DataFrame.from_records(records)

    def history(self, run_id: str) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute("SELECT history FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return json.loads(row[0]) if row and row[0] else None


class Columns:
    """Column names of a results frame (ResultsStore.frame): the run's metadata, its resolved
    config flattened under ``cfg.`` and its metrics."""

    RUN_ID = "run_id"
    SEED = "seed"
    STATUS = "status"
    CONFIG = "cfg."
    METHOD = CONFIG + "method"
    RANK = CONFIG + "scaffold.r"
    TRAINABLE = "trainable"
    TRAINABLE_FRACTION = "trainable_fraction"
    ADAPTER_BYTES = "adapter_bytes"  # the adapter file (io.save) of a LottaLoRA run
    DENSE_BYTES = "dense_bytes"  # a dense checkpoint of the merged model
    BETA = "beta/"  # beta/<layer>: learned beta per scaffold layer
    BAYES = "bayes/"  # bayes/<metric>: the Bayes-optimal predictor's test metric, where the data set knows it
    NULL = "null/"  # null/<metric>: the null model's test metric (tasks.Task.null), the bottom of recovery
    ENV = "env/"  # env/<what>: what decides a run's numbers besides its config (sweep.environment)
    SPECTRA = ("act", "dW", "adapter", "init")  # <kind>/<layer>/<measure>

    @staticmethod
    def config(*path: str) -> str:
        """The column of a config field: config("scaffold", "alpha") -> "cfg.scaffold.alpha"."""
        return Columns.CONFIG + ".".join(path)

    @staticmethod
    def spectrum(kind: str, layer: str, measure: str) -> str:
        return f"{kind}/{layer}/{measure}"


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, list) else v
    return out



def error_head(error: str) -> tuple[str, str]:
    """(error type, message) of an error recorded by the sweep ("Type: message" then the traceback)."""
    head = error.split("\nTraceback (most recent call last):")[0].strip()
    return head.split(":", 1)[0].strip(), head


@dataclass
class SweepCounts:
    """What one sweep did with each of its runs (each run counted once, whatever the number of workers)."""

    done: int = 0  # ran to completion in this sweep
    skipped: int = 0  # already done (before this sweep, or by another process during it)
    failed: int = 0  # raised in this sweep (the error and traceback are in the store)
    failed_before: int = 0  # failed in an earlier sweep and not retried (retry_failed=True retries them)
    running_elsewhere: int = 0  # held by another live process whose lease is current
    errors: dict[str, str] = field(default_factory=dict)  # error type -> first message, of failed and failed_before

    # a run's outcome as seen by one worker; when workers saw it differently, the first in this order wins
    OUTCOMES = ("done", "failed", "skipped", "failed_before", "running_elsewhere")
    SEEN = {"done": "skipped", "failed": "failed_before", "running": "running_elsewhere"}  # by status, not run here

    @classmethod
    def of(cls, run_ids: Sequence[str], parts: Iterable[Mapping[str, tuple[str, str | None]]]) -> SweepCounts:
        """Tally the workers' ``run_id -> (outcome, error)`` maps over the sweep's runs."""
        parts = list(parts)
        counts = cls()
        for run_id in dict.fromkeys(run_ids):
            seen = [p[run_id] for p in parts if run_id in p]
            outcome, error = min(seen, key=lambda o: cls.OUTCOMES.index(o[0]), default=("running_elsewhere", None))
            setattr(counts, outcome, getattr(counts, outcome) + 1)
            if error and outcome in ("failed", "failed_before"):
                kind, message = error_head(error)
                counts.errors.setdefault(kind, message)
        return counts

    @property
    def total(self) -> int:
        return self.done + self.skipped + self.failed + self.failed_before + self.running_elsewhere

    def summary(self) -> str:
        """One line of counts, then the first error of each type ("Type: message")."""
        line = (f"{self.done} run, {self.skipped} already done, {self.failed} failed, {self.failed_before} failed "
                f"in an earlier sweep (not retried), {self.running_elsewhere} held by another live process "
                f"({self.total} in all)")
        return "\n".join([line, *(f"  {message}" for message in self.errors.values())])
