"""A study's report, rendered from its results store alone: the runs' status, the rank
table, r*(eps) with its interval and margin, file sizes, spectra, figures, provenance.

``write_report(study, out)`` reads ``out``/runs.sqlite (read-only: it never builds a
model or loads data; everything it shows was recorded by the sweep, see sweep.records)
and writes report.md, table.csv, runs.csv, rank.png, spectra.* and study.json.
Missing, failed and running runs are listed at the top, cells with missing seeds are
marked, and r* is never stated beyond the largest rank that ran for every seed.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .rank import MIN_BOOTSTRAP_SEEDS, SaturationRank
from .saturation import RECOVERY_LEVELS, fmt_rank, n_test_of, recovery_rank, saturation
from .results import Columns, ResultsStore, error_head
from .study import Study, provenance
from .run import Run
from .tasks import TOLERANCES, Metric, metric_of

C = Columns
NOT_RECORDED = "not recorded"


def natural(name: str) -> list:
    """Sort key: stages.2 before stages.10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _label(method: str, rank: Any) -> Any:
    return {"full": "full", "twin": "twin"}.get(method, rank)


def rank_table(df, metric: str = "test_acc", seeds: Sequence[int] | None = None):
    """Per method and rank: metric mean, sd, n (seeds that finished); ``missing seeds`` when
    ``seeds`` is given and a cell lacks some; recovery = mean / mean of full training (relative);
    trainable count and fraction; adapter file bytes (as recorded); mean beta per scaffold layer."""
    import pandas as pd

    df = df.copy()
    df["rank"] = df.get(C.RANK, pd.Series(index=df.index, dtype=float))
    df.loc[df[C.METHOD] != "lotta", "rank"] = float("nan")
    beta_cols = sorted((c for c in df.columns if c.startswith(C.BETA)), key=natural)
    rows = []
    full = df[df[C.METHOD] == "full"][metric]
    full_mean = full.mean() if len(full) else float("nan")
    for (method, rank), g in df.groupby([C.METHOD, "rank"], dropna=False, sort=False):
        row = {"method": {"full": "full training", "twin": "full, from scaffold"}.get(method, "LottaLoRA"),
               "r": _label(method, None if method != "lotta" else int(rank)),
               f"{metric} mean": g[metric].mean(), f"{metric} sd": g[metric].std(ddof=1), "n": len(g)}
        if seeds is not None:
            missing = sorted(set(seeds) - {int(s) for s in g[C.SEED]})
            row["missing seeds"] = ", ".join(map(str, missing))
        row.update({"recovery": g[metric].mean() / full_mean, "trainable": int(g[C.TRAINABLE].iloc[0]),
                    "trainable fraction": g[C.TRAINABLE_FRACTION].mean()})
        if method == "lotta":
            b = g[C.ADAPTER_BYTES] if C.ADAPTER_BYTES in g else pd.Series(dtype=float)
            row["adapter bytes"] = f"{b.mean():,.0f}" if b.notna().any() else NOT_RECORDED
        else:
            row["adapter bytes"] = ""
        row.update({c.replace(C.BETA, "beta "): g[c].mean() for c in beta_cols})
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


def pyplot():
    """matplotlib.pyplot on the Agg backend (files, no display), imported when a figure is drawn (not at start-up)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> None:
    """The tail of every figure: tight layout, written to ``path`` at ``dpi``, closed."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)


def plot_rank(df, path: str | os.PathLike, metric: str = "test_acc", title: str = "",
              r_star: dict[float, float] | None = None) -> None:
    """Metric vs LoRA rank (mean +- sd over seeds, and each seed's curve), full training as a band,
    r*(eps) marked; beta per layer vs rank."""
    plt = pyplot()

    lotta = df[df[C.METHOD] == "lotta"]
    full = df[df[C.METHOD] == "full"][metric]
    ranks = sorted(lotta[C.RANK].unique())
    pos = {r: r if r > 0 else 0.5 for r in ranks}  # rank 0 drawn at 0.5 on the log axis
    g = lotta.groupby(C.RANK)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    if len(full):
        m, s = full.mean(), full.std(ddof=1) if len(full) > 1 else 0.0
        ax.axhspan(m - s, m + s, color="C1", alpha=0.25, label=f"full training {m:.4f}")
        ax.axhline(m, color="C1")
    for seed, curve in lotta.sort_values(C.RANK).groupby(C.SEED):
        ax.plot([pos[r] for r in curve[C.RANK]], curve[metric], color="C0", alpha=0.25, lw=0.8)
    ax.errorbar([pos[r] for r in ranks], g[metric].mean().loc[ranks], yerr=g[metric].std(ddof=1).loc[ranks].fillna(0),
                marker="o", capsize=3, label="LottaLoRA (mean +- sd; thin: each seed)")
    for i, (eps, r) in enumerate(sorted((r_star or {}).items())):
        if math.isfinite(r):
            ax.axvline(r if r > 0 else 0.5, color=f"C{i + 2}", ls="--", lw=1, label=f"r*({eps:g}) = {int(r)}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(pos.values()), [str(int(r)) for r in ranks])
    ax.set_xlabel("LoRA rank r (0: beta + head only)")
    ax.set_ylabel(metric)
    ax.set_title(title or "metric vs rank")
    ax.legend(loc="best", fontsize=8)
    for c in sorted((c for c in lotta.columns if c.startswith(C.BETA)), key=natural):
        bx.plot(list(pos.values()), g[c].mean().loc[ranks], marker="o", label=c.removeprefix(C.BETA))
    bx.axhline(1.0, color="grey", lw=0.8, ls=":")
    bx.set_xscale("log", base=2)
    bx.set_xticks(list(pos.values()), [str(int(r)) for r in ranks])
    bx.set_xlabel("LoRA rank r")
    bx.set_ylabel("learned beta (final)")
    bx.set_title("beta per layer")
    if bx.get_legend_handles_labels()[0]:  # no finished scaffolded run: no beta to name
        bx.legend(fontsize=8)
    save_figure(fig, path)


# ----------------------------------------------------------------------------- what the store holds

def run_label(run: Run) -> str:
    """A run as the report names it: "lotta r=4 seed=1", "full seed=0"."""
    r = run.scaffold.get("r")
    return f"{run.method}{f' r={r}' if run.method == 'lotta' else ''} seed={run.seed}"


@dataclass
class StudyStatus:
    """Each run of a study as the store has it: done, failed (with its error), running (its
    worker's lease is current), stale ('running' without a heartbeat for longer than the lease:
    a stopped worker's; the next sweep takes it over), or missing (never claimed); ``other``
    counts stored rows of the same study name that are not runs of the current study file."""

    done: list[Run] = field(default_factory=list)
    failed: list[tuple[Run, str]] = field(default_factory=list)
    running: list[Run] = field(default_factory=list)
    stale: list[Run] = field(default_factory=list)
    missing: list[Run] = field(default_factory=list)
    other: int = 0

    @property
    def n_runs(self) -> int:
        return len(self.done) + len(self.failed) + len(self.running) + len(self.stale) + len(self.missing)

    def errors(self) -> dict[str, tuple[int, str]]:
        """Error type -> (number of failed runs, the first one's message)."""
        out: dict[str, tuple[int, str]] = {}
        for _, error in self.failed:
            kind, message = error_head(error or "unknown error")
            n, first = out.get(kind, (0, message))
            out[kind] = (n + 1, first)
        return out

    def lines(self) -> list[str]:
        """Markdown lines for the top of the report (or a CLI message)."""
        out = [f"Runs: {len(self.done)} of {self.n_runs} done"
               + (f", {len(self.failed)} failed" if self.failed else "")
               + (f", {len(self.running)} running" if self.running else "")
               + (f", {len(self.stale)} stale (left by a stopped worker)" if self.stale else "")
               + (f", {len(self.missing)} not run yet" if self.missing else "") + "."]
        if self.failed:
            out.append(f"- failed: {', '.join(run_label(r) for r, _ in self.failed)}")
            out += [f"  - {kind} ({n} run{'s' if n > 1 else ''}): `{msg.splitlines()[0]}`"
                    for kind, (n, msg) in self.errors().items()]
        if self.running:
            out.append(f"- running: {', '.join(map(run_label, self.running))}")
        if self.stale:
            out.append(f"- stale (no heartbeat within the lease; the next sweep reruns them): "
                       f"{', '.join(map(run_label, self.stale))}")
        if self.missing:
            out.append(f"- not run yet: {', '.join(map(run_label, self.missing))}")
        if self.other:
            out.append(f"- {self.other} stored run(s) of this study name belong to other settings "
                       "(an edited study file) and are not shown")
        return out


def study_status(study: Study | Mapping[str, Any], store: ResultsStore) -> StudyStatus:
    """Where each run of ``study`` stands in ``store`` (see StudyStatus)."""
    study = Study.of(study)
    rows = {r[C.RUN_ID]: r for r in store.rows(study.study)}
    st = StudyStatus()
    runs = study.runs()
    for run in runs:
        row = rows.get(run.run_id)
        if row is None:
            st.missing.append(run)
        elif row["status"] == "done":
            st.done.append(run)
        elif row["status"] == "failed":
            st.failed.append((run, row.get("error") or ""))
        elif row.get("heartbeat") is None or time.time() - row["heartbeat"] > store.lease:
            st.stale.append(run)
        else:
            st.running.append(run)
    st.other = len(set(rows) - {r.run_id for r in runs})
    return st


class NoResults(ValueError):
    """A report was asked for a study with no finished run; the message says what happened."""


# ----------------------------------------------------------------------------- r*(eps)

def _r_star_cell(sr: SaturationRank, m: Metric, n_test: int | None) -> tuple[str, str, bool]:
    """(r* cell, margin cell, tie) of one r*(eps). For accuracy with n_test recorded, the margin is also
    given in test examples (margin x n_test per seed), and an r* whose margin is below one test example
    per seed (margin < 1 / n_test) is a tie with the threshold: the next complete rank is shown with its
    own margin, as "6 (tie; 7 clears by 0.40 pp, 4 test examples per seed)"."""
    r = fmt_rank(sr.r_star_, sr.max_rank_)
    if sr.crossing_:  # a first rank within delta that larger ranks undo is stated, not reported as r*
        r += f" (r = {fmt_rank(sr.r_first_, sr.max_rank_)} crossed first, undone at r = " \
             f"{', '.join(map(str, sr.undone_at_))})"
    if not math.isfinite(sr.margin_):
        return r, "", False
    examples = m.counted and n_test is not None

    def by(margin: float) -> str:
        return m.points(margin) + (f", {margin * n_test:.2g} test examples per seed" if examples else "")

    tie = m.is_tie(sr.margin_, n_test)
    if tie:
        later = [q for q in sorted(sr.curve_) if sr.r_star_ < q <= sr.max_rank_]
        if later:
            gap = (sr.curve_[later[0]] - sr.threshold_) * (1 if sr.higher_is_better else -1)
            r += f" (tie; {later[0]} {'clears' if gap >= 0 else 'misses'} by {by(abs(gap))})"
        else:
            r += " (tie; no larger complete rank)"
    return r, by(sr.margin_), tie


def recovery_section(df, study: Study, metric: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Markdown lines and a JSON summary of r*_q at each of RECOVERY_LEVELS (recovery_rank), with the null
    model, the reference, the trainable parameters at r*_q and the crossings."""
    m = metric_of(metric)
    rows, summary, why = [], [], ""
    null = None
    for q in RECOVERY_LEVELS:
        sr, null, why = recovery_rank(df, study, metric, q)
        if sr is None:
            break
        r_cell, _, _ = _r_star_cell(sr, m, None)
        lotta = df[(df[C.METHOD] == "lotta") & (df[C.RANK] == sr.r_star_)]
        trainable = f"{lotta[C.TRAINABLE].mean():,.0f}" if math.isfinite(sr.r_star_) and len(lotta) else ""
        lo, hi = (fmt_rank(v, sr.max_rank_) for v in sr.ci_)
        rows.append(f"| {q:g} | {sr.threshold_:.4g} | {r_cell} | [{lo}, {hi}] ({sr.ci_kind_}, {sr.n_seeds_} seeds) | "
                    f"{trainable} |")
        summary.append({"q": q, "threshold": sr.threshold_, "r_star": sr.r_star_, "ci": list(sr.ci_),
                        "ci_kind": sr.ci_kind_, "r_first": sr.r_first_, "crossing": sr.crossing_, "null": null,
                        "reference": sr.full_, "trainable": float(lotta[C.TRAINABLE].mean()) if trainable else None})
    head = (f"Recovery levels: r*_q = min{{r : (M(r) - M_null) / (M_ref - M_null) >= q at r and every larger rank "
            f"that ran}}, the reference M_ref = full training's mean {metric}")
    if not rows:
        return [head + f"; not stated: {why}.", ""], []
    return [head + f" and M_null = {null:.4g}, the null model's (the best constant predictor fitted on the training "
            f"split: majority class / class frequencies, unigram, mean or persistence forecast). q = 0.9 is Li et "
            f"al.'s d_int90 convention, read on ranks.", "",
            "| q | threshold | r*_q | interval | trainable at r*_q |", "|---|---|---|---|---|", *rows, ""], summary


def rank_section(df, study: Study, metric: str) -> tuple[list[str], dict[float, float], dict[str, Any]]:
    """The r*(eps) tables, one per tolerance kind (Study.tolerances: the metric's own kind unless the
    study sets eps), each stating its kind and unit: r*, its interval, the interval's kind with the number
    of seeds, the seed range of the per-seed r*, the margin by which the mean at r* clears its threshold
    (and in test examples, for accuracy; a margin below one test example per seed is a tie), the largest
    rank that ran for every seed, and the test-set resolution. Returns (markdown lines, {eps: r*} of
    the first table's kind for the figures, a JSON summary)."""
    m = metric_of(metric)
    n_test = n_test_of(df)
    tables: dict[bool, list[str]] = {}
    r_stars, summary = {}, []
    for eps, relative in study.tolerances(m):
        sr = saturation(df, study, metric, eps, relative)
        if sr is None:
            continue
        if not tables or relative == next(iter(tables)):
            r_stars[eps] = sr.r_star_
        seeds = f"{sr.n_seeds_} seed{'s' if sr.n_seeds_ > 1 else ''}"
        kind = (f"{seeds}, {'paired ' if sr.paired_ else ''}bootstrap, {int(100 * sr.ci)}%"
                if sr.ci_kind_ == "bootstrap" else f"{seeds}: seed range (< {MIN_BOOTSTRAP_SEEDS} seeds, "
                                                   f"not a confidence interval)")
        lo, hi = (fmt_rank(v, sr.max_rank_) for v in (sr.seed_r_star_.min(), sr.seed_r_star_.max()))
        r_cell, margin, tie = _r_star_cell(sr, m, n_test)
        tables.setdefault(relative, []).append(
            f"| {m.eps_text(eps, relative)} | {r_cell} | [{fmt_rank(sr.ci_[0], sr.max_rank_)}, "
            f"{fmt_rank(sr.ci_[1], sr.max_rank_)}] | {kind} | [{lo}, {hi}] | {margin} | {sr.max_rank_} |")
        summary.append({"eps": eps, "relative": relative, "tolerance": "relative" if relative else "absolute",
                        "r_star": sr.r_star_, "tie": tie, "ci": list(sr.ci_), "r_first": sr.r_first_,
                        "crossing": sr.crossing_, "undone_at": list(sr.undone_at_),
                        "beats_reference": list(sr.beats_reference_),
                        "ci_kind": sr.ci_kind_, "paired": sr.paired_, "n_seeds": sr.n_seeds_,
                        "seed_range": [float(sr.seed_r_star_.min()), float(sr.seed_r_star_.max())],
                        "margin": sr.margin_, "threshold": sr.threshold_, "full": sr.full_,
                        "max_rank": sr.max_rank_})
    if not tables:
        return (["r*(eps) needs full training and at least one rank that ran for every seed: "
                 "not stated.", ""], {}, {"r_star": []})
    lines = [f"Saturation rank r*(eps) = min{{r : mean {metric} within delta of full training at r and at every "
             f"larger rank that ran}} (a saturation that lasts; a first crossing that larger ranks undo is named), on the "
             f"mean over seeds ({'higher' if m.higher_is_better else 'lower'} is better). delta = eps "
             f"(absolute, in the metric's units: {m.unit}) or eps x |full-training mean| (relative). "
             f"{metric}'s own tolerance is {TOLERANCES[m.tolerance]}, headline eps = {m.eps_text(m.headline_eps, m.tolerance == 'relative')}"
             "; a study's `eps` is absolute (`eps_relative = true` adds relative rows). The recovery column above "
             "is relative (for a loss-like metric, recovery = metric at r / full, so above 1 is worse). The margin "
             "is how far the mean at r* clears its threshold" + (" (also in test examples per seed; below one "
             "example per seed, r* is a tie and the next rank is shown)" if m.counted else "") +
             "; the seed range is that of each seed's own r*; r* is never stated beyond the largest rank that "
             "ran for every seed.", ""]
    lines += [("The reference is full training's mean." if study.reference == "full" else
               "The reference is the Bayes risk the runs recorded (`reference = \"bayes\"`: the Bayes-optimal "
               "predictor's test metric, a planted teacher's own), not full training."), ""]
    for relative, rows in tables.items():
        lines += [f"r*(eps), eps {TOLERANCES['relative' if relative else 'absolute']}:", "",
                  "| eps | r* | interval | interval kind | seed range | margin | largest complete rank |",
                  "|---|---|---|---|---|---|---|", *rows, ""]
    beaten = sorted({r for row in summary for r in row["beats_reference"]})
    if beaten:
        lines += [f"**The reference is not a ceiling:** LottaLoRA at r = {', '.join(map(str, beaten))} beats full "
                  f"training by more than the tolerance (on the test split; full training's learning rate and epochs "
                  f"are not tuned on a validation split here), so r* against it reads the training protocol as "
                  f"much as the task.", ""]
    if m.counted:
        if n_test is not None:
            S = len(study.seeds)
            lines += [f"Test-set resolution: {n_test} test images, so one image moves a run's accuracy by "
                      f"{100 / n_test:.2g} pp" + (f" and the mean over {S} seeds by {100 / (n_test * S):.2g} pp."
                                                  if S > 1 else "."), ""]
        else:
            lines += [f"Test-set resolution: {NOT_RECORDED} (run `reservoir-depth sweep` on this study to record it).",
                      ""]
    return lines, r_stars, {"r_star": summary}


def headline_r_star(summary: Sequence[Mapping[str, Any]], m: Metric) -> tuple[float, str]:
    """(r*, its label) at the metric's headline eps and tolerance kind, else the first stated r*;
    (inf, "r*") when none was stated."""
    own = [s for s in summary if s["eps"] == m.headline_eps and s["relative"] == (m.tolerance == "relative")]
    if not (own or summary):
        return math.inf, "r*"
    s = (own or summary)[0]
    return s["r_star"], f"r*({s['eps']:g}, {s['tolerance']})"


# ----------------------------------------------------------------------------- spectra

MEASURES = ("d", "k_0.9", "k_0.95", "k_0.99", "participation_ratio", "entropy_rank", "stable_rank", "intrinsic_dim")


def _recorded_history(df, store: ResultsStore, key: str) -> dict[str, Any] | None:
    """history[key] of the first run (in the frame's order) that recorded it."""
    for run_id in df[C.RUN_ID]:
        h = store.history(run_id) or {}
        if key in h:
            return h[key]
    return None


def spectra_table(study: Study | Mapping[str, Any], df, store: ResultsStore):
    """One row per spectrum, from the store: the data set's (inputs, between-class scatter or
    Cov(x, y), intrinsic dimension), activations of the scaffold at init and of the trained twin,
    Delta W of the twin, the largest-rank adapter; summary measures (spectra.py) averaged over
    seeds. Returns (table, {label: eigenvalues} for the figure)."""
    import pandas as pd

    measured = df[df[C.METHOD].isin(["twin", "lotta"])]
    rows: list[dict[str, Any]] = []
    curves_: dict[str, Any] = {}
    dataset = _recorded_history(measured, store, "dataset")
    if dataset is not None:
        rows += dataset["rows"]
        curves_["inputs"] = np.asarray(dataset["inputs"])
    else:
        rows.append({"spectrum": f"data set spectra: {NOT_RECORDED}", "layer": ""})
    init_cols = [c for c in df.columns if c.startswith("init/")]
    if init_cols:
        layers = sorted({c.split("/")[1] for c in init_cols}, key=natural)
        for layer in layers:
            rows.append({"spectrum": "activations, scaffold at init", "layer": layer,
                         **{m: df[f"init/{layer}/{m}"].mean() for m in MEASURES if f"init/{layer}/{m}" in df}})
        for name, v in (_recorded_history(measured, store, "spectra_init") or {}).items():
            v = np.asarray(v)
            if not ("inputs" in curves_ and len(v) == len(curves_["inputs"]) and np.allclose(v, curves_["inputs"])):
                curves_[f"act@init {name}"] = v  # the first layer's inputs are the inputs: drawn once
    else:
        rows.append({"spectrum": f"activations, scaffold at init: {NOT_RECORDED}", "layer": ""})
    lotta = df[df[C.METHOD] == "lotta"]
    groups = [("twin", "act", "activations, trained twin"), ("twin", "dW", "Delta W of the trained twin")]
    if len(lotta):
        groups.append(("lotta_max", "adapter", f"adapter s B A at r = {int(lotta[C.RANK].max())}"))
    for method, kind, label in groups:
        sel = lotta[lotta[C.RANK] == lotta[C.RANK].max()] if method == "lotta_max" else df[df[C.METHOD] == method]
        layers = sorted({c.split("/")[1] for c in sel.columns if c.startswith(f"{kind}/") and sel[c].notna().any()},
                        key=natural)
        for layer in layers:
            rows.append({"spectrum": label, "layer": layer,
                         **{m: sel[f"{kind}/{layer}/{m}"].mean() for m in MEASURES if f"{kind}/{layer}/{m}" in sel}})
    twins = df[df[C.METHOD] == "twin"]
    if len(twins):  # the first twin's Delta W spectra, from its stored history
        hist = store.history(twins.iloc[0][C.RUN_ID]) or {}
        curves_.update({f"dW twin {k.split('/', 1)[1]}": np.asarray(v) for k, v in hist.get("spectra", {}).items()
                        if k.startswith("dW/")})
    table = pd.DataFrame(rows)
    return table[["spectrum", "layer", *[m for m in MEASURES if m in table]]], curves_


def plot_spectra(curves: Mapping[str, Any], path: str | Path, r_star: float, label: str = "r*") -> None:
    """Cumulative explained variance vs k for each spectrum, with tau = 0.9 / 0.95 / 0.99 and the headline
    r* (``label``: "r*(0.01, absolute)")."""
    plt = pyplot()
    import pandas as pd
    import seaborn as sns

    from .spectra import explained_variance_ratio, k_tau

    fig, ax = plt.subplots(figsize=(7, 4.5))
    shown = {label: v for label, v in curves.items() if np.sum(v) > 0}
    if shown:
        long = pd.concat([pd.DataFrame({"k": np.arange(1, len(v) + 1), "explained variance": np.cumsum(
            explained_variance_ratio(v)), "spectrum": label}) for label, v in shown.items()])
        sns.lineplot(long, x="k", y="explained variance", hue="spectrum", ax=ax)
        ax.set_xscale("log")
    colors = {line.get_label(): line.get_color() for line in ax.get_lines()}
    for tau, marker in ((0.9, "o"), (0.95, "s"), (0.99, "^")):
        ax.axhline(tau, color="grey", lw=0.6, ls=":")
        for label, v in shown.items():  # k_tau of every curve, on its curve
            k = k_tau(v, tau)
            ax.plot(k, np.cumsum(explained_variance_ratio(v))[k - 1], marker, ms=4, color=colors.get(label, "k"))
    if math.isfinite(r_star) and r_star > 0:
        ax.axvline(r_star, color="k", ls="--", lw=1, label=f"{label} = {int(r_star)}")
        ax.legend(fontsize=7)
    ax.set_title("cumulative explained variance; k_tau at tau = 0.9 (o), 0.95 (s), 0.99 (^)", fontsize=9)
    save_figure(fig, path)


def spectra_section(study: Study, df, store: ResultsStore, out: Path, r_ref: float, label: str = "r*") -> list[str]:
    """The report's "rank vs spectra" section: writes spectra.csv and spectra.png, returns markdown lines;
    ``r_ref`` is the headline r*, named ``label``."""
    table, curves_ = spectra_table(study, df, store)
    table.to_csv(out / "spectra.csv", index=False)
    plot_spectra(curves_, out / "spectra.png", r_ref, label)
    return ["## Rank vs spectra", "",
            f"{label} = {fmt_rank(r_ref)}. k_tau = smallest k whose top-k eigenvalues explain a fraction tau of "
            "the variance; participation ratio (sum lam)^2 / sum lam^2; entropy rank exp H(lam / sum lam); "
            "stable rank sum lam / max lam; intrinsic_dim: TwoNN and MLE estimates (scikit-dimension). "
            "Activations at init, twin and adapter rows are means over seeds.", "",
            markdown(table, {m: "{:.1f}" for m in MEASURES}), "![explained variance](spectra.png)", ""]


# ----------------------------------------------------------------------------- the report

def no_results_message(study: Study, path: Path, status: StudyStatus) -> str:
    """What happened, when a study has no finished run to report."""
    head = f"no finished runs of {study.study!r} in {path}"
    if status.failed:
        return "\n".join([f"{head}: every run that ran failed", *status.lines()])
    return "\n".join([f"{head}: run `reservoir-depth sweep` on the study first", *status.lines()])


def write_report(study: Study | Mapping[str, Any], out: str | Path) -> str:
    """Write report.md, table.csv, runs.csv, rank.png (and spectra.*) and study.json to ``out`` from
    ``out``/runs.sqlite alone; return the markdown. Raises NoResults (writing nothing) when no run finished,
    FileNotFoundError when there is no store."""
    study = Study.of(study)
    out = Path(out)
    store = ResultsStore(out / "runs.sqlite")  # read-only: refuses a missing store
    status = study_status(study, store)
    df = study.frame(store)
    if df.empty:
        raise NoResults(no_results_message(study, out / "runs.sqlite", status))
    metric = study.metric.name
    table = rank_table(df, metric=metric, seeds=study.seeds)
    table.to_csv(out / "table.csv", index=False)
    df.to_csv(out / "runs.csv", index=False)
    dense = df[C.DENSE_BYTES].dropna() if C.DENSE_BYTES in df else []
    dense_text = f"{int(dense.iloc[0]):,} bytes" if len(dense) else f"({NOT_RECORDED})"

    lines = [f"# {study.study}", "", *status.lines(), "",
             f"Dataset `{json.dumps(study.dataset)}`, architecture `{json.dumps(dict(study.arch))}`, "
             f"seeds {list(study.seeds)}; metric `{metric}` on the test split after the last epoch. "
             f"Recovery = LottaLoRA mean / full-training mean. n = seeds that finished; a cell with missing "
             f"seeds averages fewer runs. A dense checkpoint of the merged model takes {dense_text}.", "",
             markdown(table)]
    r_lines, r_stars, r_summary = rank_section(df, study, metric)
    lines += r_lines
    q_lines, r_summary["recovery"] = recovery_section(df, study, metric)
    lines += q_lines
    plot_rank(df, out / "rank.png", metric=metric, title=study.study, r_star=r_stars)
    lines += ["![metric and beta vs rank](rank.png)", ""]
    if study.measured:
        lines += spectra_section(study, df, store, out, *headline_r_star(r_summary["r_star"], metric_of(metric)))
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    meta = provenance(study.to_dict(), study.seeds,
                      {**r_summary, "n_done": len(status.done), "n_failed": len(status.failed),
                       "n_running": len(status.running), "n_stale": len(status.stale),
                       "n_missing": len(status.missing)},
                      runs=[r.config() | {"run_id": r.run_id} for r in study.runs()])
    (out / "study.json").write_text(json.dumps(meta, sort_keys=True, indent=1, default=_numpy_scalar) + "\n")
    return text


def _numpy_scalar(v: Any) -> Any:
    """json.dumps' default: a numpy scalar as its Python number; anything else is refused."""
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    raise TypeError(f"not JSON-serialisable: {v!r}")


def summary(report: str, out: str | Path, columns: int = 7) -> str:
    """A terminal's view of report.md (``report``, as write_report returns it): the runs line(s), the
    rank table's first ``columns`` columns (method, r, mean, sd, n, missing seeds, recovery), the r*(eps)
    table and where the report is; the spectra and the prose stay in the file."""
    blocks: list[list[str]] = [[]]
    for line in report.splitlines():
        if line.strip():
            blocks[-1].append(line)
        elif blocks[-1]:
            blocks.append([])
    tables = [b for b in blocks if b and b[0].startswith("|")]
    status = next((b for b in blocks if b and b[0].startswith("Runs:")), [])
    lines = [*status, ""]
    for i, table in enumerate(tables[:2]):
        cells = [row.strip("|").split("|") for row in table if not row.startswith("|---")]
        keep = columns if i == 0 else len(cells[0])
        cells = [[c.strip() for c in row[:keep]] for row in cells]
        if i == 1:
            lines.append("r*(eps): the smallest rank whose mean is within eps of full training")
        widths = [max(len(row[j]) for row in cells) for j in range(len(cells[0]))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells] + [""]
    if len(tables) < 2:
        lines += ["r*(eps): not stated (see the report)", ""]
    return "\n".join([*lines, f"report: {Path(out) / 'report.md'}"])
