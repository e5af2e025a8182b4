"""A results store on SQLite: one row per run, safe for several workers, resumable.

A run is keyed by the hash of its resolved config. ``claim`` takes a run that is
new, failed, or left 'running' by a dead process, inside one IMMEDIATE
transaction, so two workers never run the same config and a killed sweep
retries only the runs it did not finish. ``frame`` loads everything into pandas.
"""

from __future__ import annotations

import json
import math
import os
import re
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

def natural(name: str) -> list:
    """Sort key: stages.2 before stages.10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def rank_table(df, metric: str = "test_acc"):
    """Per method and rank: metric mean, sd, n; recovery = mean / mean of full training;
    trainable fraction; mean beta per scaffold layer. One row for full training, one per rank."""
    import pandas as pd

    df = df.copy()
    df["rank"] = df.get("cfg.scaffold.r", pd.Series(index=df.index, dtype=float))
    df.loc[df["cfg.method"] != "lotta", "rank"] = float("nan")
    beta_cols = sorted((c for c in df.columns if c.startswith("beta/")), key=natural)
    rows = []
    full = df[df["cfg.method"] == "full"][metric]
    full_mean = full.mean() if len(full) else float("nan")
    for (method, rank), g in df.groupby(["cfg.method", "rank"], dropna=False, sort=False):
        label = {"full": "full", "twin": "twin"}.get(method)
        row = {"method": {"full": "full training", "twin": "full, from scaffold"}.get(method, "LottaLoRA"),
               "r": label or int(rank),
               f"{metric} mean": g[metric].mean(), f"{metric} sd": g[metric].std(ddof=1), "n": len(g),
               "recovery": g[metric].mean() / full_mean, "trainable": int(g["trainable"].iloc[0]),
               "trainable fraction": g["trainable_fraction"].mean()}
        row.update({c.replace("beta/", "beta "): g[c].mean() for c in beta_cols})
        rows.append(row)
    out = pd.DataFrame(rows)
    order = out["r"].map(lambda r: {"full": math.inf, "twin": -math.inf}.get(r, r) if isinstance(r, str) else r)
    return out.assign(_o=order).sort_values("_o").drop(columns="_o").reset_index(drop=True)


def markdown(table, floatfmt: dict[str, str] | None = None) -> str:
    """A pipe table without the tabulate dependency."""
    fmt = {"test_acc mean": "{:.4f}", "test_acc sd": "{:.4f}", "recovery": "{:.3f}",
           "trainable fraction": "{:.4f}", **(floatfmt or {})}
    cols = list(table.columns)

    def cell(c, v):
        if isinstance(v, float):
            if v != v:
                return ""
            return fmt.get(c, "{:.3f}").format(v)
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(c, v) for c, v in zip(cols, row)) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def plot_rank(df, path: str | os.PathLike, metric: str = "test_acc", title: str = "",
              r_star: dict[float, float] | None = None) -> None:
    """Metric vs LoRA rank (mean +- sd over seeds), full training as a band, r*(eps) marked;
    beta per layer vs rank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lotta = df[df["cfg.method"] == "lotta"]
    full = df[df["cfg.method"] == "full"][metric]
    ranks = sorted(lotta["cfg.scaffold.r"].unique())
    pos = [r if r > 0 else 0.5 for r in ranks]  # rank 0 drawn at 0.5 on the log axis
    g = lotta.groupby("cfg.scaffold.r")
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    if len(full):
        m, s = full.mean(), full.std(ddof=1) if len(full) > 1 else 0.0
        ax.axhspan(m - s, m + s, color="C1", alpha=0.25, label=f"full training {m:.4f}")
        ax.axhline(m, color="C1")
    ax.errorbar(pos, g[metric].mean().loc[ranks], yerr=g[metric].std(ddof=1).loc[ranks].fillna(0), marker="o",
                capsize=3, label="LottaLoRA (mean +- sd)")
    for i, (eps, r) in enumerate(sorted((r_star or {}).items())):
        if math.isfinite(r):
            ax.axvline(r if r > 0 else 0.5, color=f"C{i + 2}", ls="--", lw=1, label=f"r*({eps:g}) = {int(r)}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(pos, [str(int(r)) for r in ranks])
    ax.set_xlabel("LoRA rank r (0: beta + head only)")
    ax.set_ylabel(metric)
    ax.set_title(title or "metric vs rank")
    ax.legend(loc="best", fontsize=8)
    for c in sorted((c for c in lotta.columns if c.startswith("beta/")), key=natural):
        bx.plot(pos, g[c].mean().loc[ranks], marker="o", label=c.removeprefix("beta/"))
    bx.axhline(1.0, color="grey", lw=0.8, ls=":")
    bx.set_xscale("log", base=2)
    bx.set_xticks(pos, [str(int(r)) for r in ranks])
    bx.set_xlabel("LoRA rank r")
    bx.set_ylabel("learned beta (final)")
    bx.set_title("beta per layer")
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
