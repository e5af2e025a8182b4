"""A study's report: the rank table, r*(eps), file sizes, figures, provenance.

``write_report(study, out)`` reads ``out``/runs.sqlite and writes report.md,
table.csv, runs.csv, rank.png and study.json (resolved configs, seeds, versions).
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import tempfile
from pathlib import Path
from typing import Any, Mapping

from . import __version__
from .rank import SaturationRank
from .results import ResultsStore
from .sweep import Run, build_model, dataset_of, runs_of, study_frame

EPS = (0.005, 0.01, 0.02)


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


def adapter_bytes(run: Run) -> tuple[int, int]:
    """(adapter file bytes, dense merged checkpoint bytes) of the run's model, as io.save writes them."""
    from . import io

    model = build_model(run, dataset_of(run))
    with tempfile.TemporaryDirectory() as tmp:
        rep = io.save(model, tmp, arch=dict(run.arch))
    return rep.bytes, rep.full_bytes


MEASURES = ("d", "k_0.9", "k_0.95", "k_0.99", "participation_ratio", "entropy_rank", "stable_rank", "intrinsic_dim")


def dataset_rows(d, X_id) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The data set's own spectra: input PCA, between-class scatter (classification) or
    Cov(x, y) (regression), and the intrinsic dimensions of ``X_id``. Returns (rows, {"inputs": eigenvalues})."""
    from .spectra import IntrinsicDimension, TaskSpectrum

    task = TaskSpectrum(d.task).fit(d.X_train, d.y_train)
    rows = [{"spectrum": "inputs (PCA)", "layer": "", **task.input_spectrum_.summary()}]
    if d.task == "classification":
        rows.append({"spectrum": f"between-class scatter (rank {task.between_class_rank_} <= C-1 = "
                                 f"{task.n_classes_ - 1})", "layer": "", **task.between_class_spectrum_.summary()})
    else:
        rows.append({"spectrum": "Cov(x, y) (squared singular values)", "layer": "", **task.cross_spectrum_.summary()})
    for method in ("twonn", "mle"):
        rows.append({"spectrum": f"inputs, intrinsic dimension ({method})", "layer": "",
                     "d": d.d_in, "intrinsic_dim": IntrinsicDimension(method).fit(X_id).dimension_})
    return rows, {"inputs": task.input_spectrum_.eigenvalues}


def spectra_table(study: Mapping[str, Any], df):
    """One row per spectrum: inputs, between-class scatter, activations (scaffold at init and
    trained twin), Delta W of the twin, the largest-rank adapter; summary measures (spectra.py)
    averaged over seeds. Returns (table, {label: eigenvalues} for the figure)."""
    import numpy as np
    import pandas as pd

    from .spectra import ActivationSpectra

    run0 = runs_of(study, ranks=[0], baselines=False)[0]
    d = dataset_of(run0)
    X = d.X_train[:5000]
    rows, curves = dataset_rows(d, X)
    init = ActivationSpectra(layers=run0.scaffold_config().target_modules).fit(build_model(run0, d), X)
    for name, sp in init.spectra_.items():
        rows.append({"spectrum": "activations, scaffold at init", "layer": name, **sp.summary()})
        if not (len(sp.eigenvalues) == len(curves["inputs"]) and np.allclose(sp.eigenvalues, curves["inputs"])):
            curves[f"act@init {name}"] = sp.eigenvalues  # the first layer's inputs are the inputs: drawn once
    lotta = df[df["cfg.method"] == "lotta"]
    groups = [("twin", "act", "activations, trained twin"), ("twin", "dW", "Delta W of the trained twin")]
    if len(lotta):
        groups.append(("lotta_max", "adapter", f"adapter s B A at r = {int(lotta['cfg.scaffold.r'].max())}"))
    for method, kind, label in groups:
        sel = lotta[lotta["cfg.scaffold.r"] == lotta["cfg.scaffold.r"].max()] if method == "lotta_max" \
            else df[df["cfg.method"] == method]
        layers = sorted({c.split("/")[1] for c in sel.columns if c.startswith(f"{kind}/") and sel[c].notna().any()})
        for layer in layers:
            rows.append({"spectrum": label, "layer": layer,
                         **{m: sel[f"{kind}/{layer}/{m}"].mean() for m in MEASURES if f"{kind}/{layer}/{m}" in sel}})
    table = pd.DataFrame(rows)
    return table[["spectrum", "layer", *[m for m in MEASURES if m in table]]], curves


def plot_spectra(curves: Mapping[str, Any], path: str | Path, r_star: float) -> None:
    """Cumulative explained variance vs k for each spectrum, with tau = 0.9 / 0.95 / 0.99 and r*(0.01)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd
    import seaborn as sns

    from .spectra import explained_variance_ratio, k_tau

    long = pd.concat([pd.DataFrame({"k": np.arange(1, len(v) + 1), "explained variance": np.cumsum(
        explained_variance_ratio(v)), "spectrum": label}) for label, v in curves.items() if np.sum(v) > 0])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sns.lineplot(long, x="k", y="explained variance", hue="spectrum", ax=ax)
    colors = {line.get_label(): line.get_color() for line in ax.get_lines()}
    for tau, marker in ((0.9, "o"), (0.95, "s"), (0.99, "^")):
        ax.axhline(tau, color="grey", lw=0.6, ls=":")
        for label, v in curves.items():  # k_tau of every curve, on its curve
            if np.sum(v) > 0:
                k = k_tau(v, tau)
                ax.plot(k, np.cumsum(explained_variance_ratio(v))[k - 1], marker, ms=4, color=colors.get(label, "k"))
    if math.isfinite(r_star) and r_star > 0:
        ax.axvline(r_star, color="k", ls="--", lw=1, label=f"r*(0.01) = {int(r_star)}")
        ax.legend(fontsize=7)
    ax.set_xscale("log")
    ax.set_title("cumulative explained variance; k_tau at tau = 0.9 (o), 0.95 (s), 0.99 (^)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def spectra_section(study, df, store, out: Path, r_ref: float) -> list[str]:
    """The report's "rank vs spectra" section: writes spectra.csv and spectra.png, returns markdown lines."""
    table, curves = spectra_table(study, df)
    twins = df[df["cfg.method"] == "twin"]
    if len(twins):  # the first twin's Delta W spectra, from its stored history
        hist = store.history(twins.iloc[0]["run_id"]) or {}
        curves.update({f"dW twin {k.split('/', 1)[1]}": v for k, v in hist.get("spectra", {}).items()
                       if k.startswith("dW/")})
    table.to_csv(out / "spectra.csv", index=False)
    plot_spectra(curves, out / "spectra.png", r_ref)
    return ["## Rank vs spectra", "",
            f"r*(0.01) = {_fmt_r(r_ref)}. k_tau = smallest k whose top-k eigenvalues explain a fraction tau of "
            "the variance; participation ratio (sum lam)^2 / sum lam^2; entropy rank exp H(lam / sum lam); "
            "stable rank sum lam / max lam; intrinsic_dim: TwoNN and MLE estimates (scikit-dimension). "
            "Twin and adapter rows are means over seeds.", "",
            markdown(table, {m: "{:.1f}" for m in MEASURES}), "![explained variance](spectra.png)", ""]


def _fmt_r(r: float) -> str:
    return "> max rank" if math.isinf(r) else str(int(r))


def write_report(study: Mapping[str, Any], out: str | Path, eps: tuple[float, ...] = EPS) -> str:
    """Write report.md, table.csv, runs.csv, rank.png (and spectra.*) and study.json to ``out``; return the markdown."""
    import torch

    out = Path(out)
    store = ResultsStore(out / "runs.sqlite")
    df = study_frame(study, store)
    if df.empty:
        raise ValueError(f"no finished runs of {study['study']!r} in {out / 'runs.sqlite'}: run the sweep first")
    task = dataset_of(runs_of(study)[0]).task
    metric = "test_acc" if task == "classification" else "test_loss"
    table = rank_table(df, metric=metric)
    sizes = {}
    for run in runs_of(study, baselines=False):
        r = run.scaffold.get("r")
        if r not in sizes:
            sizes[r] = adapter_bytes(run)
    table["adapter bytes"] = [sizes.get(r, (math.nan,))[0] if r != "full" else math.nan for r in table["r"]]
    full_bytes = next(iter(sizes.values()))[1] if sizes else math.nan
    table.to_csv(out / "table.csv", index=False)
    df.to_csv(out / "runs.csv", index=False)

    lines = [f"# {study['study']}", "",
             f"Dataset `{json.dumps(study['dataset'])}`, architecture `{json.dumps(study['arch'])}`, "
             f"seeds {list(study['seeds'])}; metric `{metric}` on the test split after the last epoch. "
             f"Recovery = LottaLoRA mean / full-training mean. A dense checkpoint of the merged model takes "
             f"{full_bytes:,} bytes.", "", markdown(table, {"adapter bytes": "{:,.0f}"})]
    has_full = (df["cfg.method"] == "full").any()
    r_stars: dict[float, float] = {}
    if has_full and (df["cfg.method"] == "lotta").any():
        lines += ["Saturation rank r*(eps) = min{r : metric within eps of full training}, "
                  "95% bootstrap CI over seeds:", "", "| eps | r* | CI |", "|---|---|---|"]
        for e in eps:
            sr = SaturationRank.from_frame(df, metric=metric, eps=e)
            r_stars[e] = sr.r_star_
            lines.append(f"| {e:g} | {_fmt_r(sr.r_star_)} | [{_fmt_r(sr.ci_[0])}, {_fmt_r(sr.ci_[1])}] |")
        lines.append("")
    plot_rank(df, out / "rank.png", metric=metric, title=f"{study['study']}", r_star=r_stars)
    lines += ["![metric and beta vs rank](rank.png)", ""]
    if study.get("spectra"):
        r_ref = SaturationRank.from_frame(df, metric=metric, eps=0.01, n_boot=0).r_star_ if has_full else math.inf
        lines += spectra_section(study, df, store, out, r_ref)
    failed = [r for r in store.rows(study["study"]) if r["status"] == "failed"]
    if failed:
        lines += [f"**{len(failed)} failed run(s)**; first error: `{failed[0]['error'].splitlines()[0]}`", ""]
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    meta = {"study": study, "version": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "runs": [r.config() | {"run_id": r.run_id} for r in runs_of(study)],
            "n_done": int(len(df)), "n_failed": len(failed)}
    (out / "study.json").write_text(json.dumps(meta, sort_keys=True, indent=1) + "\n")
    return text
