"""A results store on SQLite: one row per run, safe for several workers, resumable.

A run is keyed by the hash of its resolved config. ``claim`` takes a run that is
new, failed, or left 'running' by a dead process, inside one IMMEDIATE
transaction, so two workers never run the same config and a killed sweep
retries only the runs it did not finish. ``frame`` loads everything into pandas.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any, Mapping

from . import __version__

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
    finished  REAL
)
"""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ResultsStore:
    """SQLite file of runs (WAL mode, so readers never block the writer)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=60, isolation_level=None)

    def status(self, run_id: str) -> str | None:
        with self._connect() as db:
            row = db.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return row[0] if row else None

    def claim(self, run_id: str, study: str, config: Mapping[str, Any], seed: int | None = None) -> bool:
        """Mark the run 'running' for this process; False if done or held by a live worker."""
        host, pid = socket.gethostname(), os.getpid()
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT status, host, pid FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is not None:
                status, rhost, rpid = row
                if status == "done" or (status == "running" and (rhost != host or _pid_alive(rpid))):
                    db.execute("ROLLBACK")
                    return False
            db.execute(
                "INSERT OR REPLACE INTO runs (run_id, study, config, seed, version, status, host, pid, started) "
                "VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?)",
                (run_id, study, json.dumps(config, sort_keys=True), seed, __version__, host, pid, time.time()))
            db.execute("COMMIT")
            return True
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def finish(self, run_id: str, metrics: Mapping[str, Any], history: Mapping[str, Any] | None = None,
               trainable: int | None = None, total: int | None = None, seconds: float | None = None) -> None:
        with self._connect() as db:
            db.execute("UPDATE runs SET status='done', metrics=?, history=?, trainable=?, total=?, seconds=?, "
                       "finished=?, error=NULL WHERE run_id=?",
                       (json.dumps(metrics, sort_keys=True), json.dumps(history, sort_keys=True), trainable, total,
                        seconds, time.time(), run_id))

    def fail(self, run_id: str, error: str) -> None:
        with self._connect() as db:
            db.execute("UPDATE runs SET status='failed', error=?, finished=? WHERE run_id=?",
                       (error, time.time(), run_id))

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
        """One row per run: run metadata, config fields (``cfg.*``) and metrics, flattened."""
        import pandas as pd

        records = []
        for r in self.rows(study):
            if status is not None and r["status"] != status:
                continue
            cfg = json.loads(r.pop("config"))
            metrics = json.loads(r.pop("metrics") or "{}")
            r.pop("history")
            records.append({**r, **{f"cfg.{k}": v for k, v in _flatten(cfg).items()}, **metrics})
        return pd.DataFrame.from_records(records)

    def history(self, run_id: str) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute("SELECT history FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return json.loads(row[0]) if row and row[0] else None


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, list) else v
    return out


# ----------------------------------------------------------------------------- tables and figures
# Tables and figures live in report.py (store, then present). These names are forwarded for
# callers that still import them from here; import them from reservoir_depth.report.
_MOVED_TO_REPORT = ("natural", "rank_table", "markdown", "plot_rank")


def __getattr__(name: str):
    if name in _MOVED_TO_REPORT:
        from . import report  # deferred: report imports this module

        return getattr(report, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
