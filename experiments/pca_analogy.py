"""Prop. 6 (theory/06_pca_analogy.md): which spectrum, if any, predicts r*? Real tasks only.

Reads what the benchmark studies stored (run and report them first: docs/results.md names each
command); it trains nothing. For each classification benchmark: r*(eps = 0.01) from its results
store (report.saturation: paired bootstrap over seeds, or the seed range with fewer than 5 seeds),
and the spectra its report wrote (docs/results/<study>/spectra.csv: inputs, between-class scatter,
activations of the scaffold at init, Delta W of the fully trained twin, the adapter at the largest
rank; means over the target layers, head excluded). Each spectrum kind is set against r* with the
same measure on both sides of a comparison (participation ratio with participation ratio, k_tau
with k_tau): Spearman's rho across benchmarks, its exact one-sided permutation p-value, a
bootstrap CI, and how often the measure is within a factor 2 of r*. The data-free predictor
C - 1 = 9 is the baseline.

Planted tasks are left out on purpose: in a planted linear task Delta W of the twin is the
planted update by construction, so its participation ratio is k = r* and a correlation there is
not evidence.

    python experiments/pca_analogy.py [--out docs/results/pca_analogy]
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from reservoir_depth import __version__
from reservoir_depth.report import markdown
from reservoir_depth.saturation import saturation
from reservoir_depth.results import ResultsStore
from reservoir_depth.study import Study
from reservoir_depth.sweep import SPECTRA_ROWS, dataset_rows
from reservoir_depth.theory.analogy import rank_correlation

sys.path.insert(0, str(Path(__file__).parent))
from _common import parser, write_provenance  # noqa: E402

ROOT = Path("docs/results")
EPS = 0.01  # absolute: one accuracy point
BENCHMARKS = ["digits_mlp", "digits_linear_head", "fashion_mnist_mlp", "mnist5k_mlp", "mnist5k_mlp_rslora"]
KINDS = {  # row label prefix in spectra.csv -> short name
    "inputs (PCA)": "inputs",
    "between-class scatter": "between-class",
    "activations, scaffold at init": "activations at init",
    "Delta W of the trained twin": "Delta W of the twin",
    "adapter s B A": "adapter at max rank",
}
MEASURES = ("participation_ratio", "k_0.9", "k_0.95", "k_0.99")


def measure(name: str) -> dict:
    study = Study.load(f"experiments/{name}.toml")
    folder = ROOT / name
    df = study.frame(ResultsStore(folder / "runs.sqlite"))
    if df.empty or not (folder / "spectra.csv").exists():
        raise SystemExit(f"{name}: no runs or no spectra.csv in {folder}; run and report its study first "
                         "(docs/results.md)")
    sr = saturation(df, study, "test_acc", EPS)
    if sr is None:
        raise SystemExit(f"{name}: r*({EPS}) cannot be stated (no full training or no complete rank)")
    row = {"benchmark": name, "r*": sr.r_star_, "lo": sr.ci_[0], "hi": sr.ci_[1], "interval": sr.ci_kind_,
           "seeds": sr.n_seeds_, "max rank": sr.max_rank_, "C - 1": 9}
    spectra = pd.read_csv(folder / "spectra.csv")
    if not spectra["spectrum"].str.startswith("inputs (PCA)").any():  # stored before the store recorded them
        d = (study.runs()[0]).data()
        rows, _ = dataset_rows(d, d.X_train[:SPECTRA_ROWS])  # the data set's own spectra: no model, no training
        spectra = pd.concat([pd.DataFrame(rows), spectra], ignore_index=True)
        row["data set spectra"] = "computed here"
    for label, short in KINDS.items():
        sel = spectra[spectra["spectrum"].str.startswith(label) & (spectra["layer"].fillna("") != "head")]
        for m in MEASURES:
            if len(sel) and sel[m].notna().any():
                row[f"{short}: {m}"] = float(sel[m].mean())
    return row


def correlations(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (spectrum kind, measure), plus the data-free C - 1."""
    # r* beyond the largest rank is censored: ranked above every finite r*; within 2x uses finite r* only
    y_rank = np.array([r if math.isfinite(r) else 2 * m for r, m in zip(df["r*"], df["max rank"])])
    finite = np.isfinite(df["r*"].to_numpy())
    rows = []
    predictors = [c for c in df.columns if ": " in c] + ["C - 1"]
    for col in predictors:
        x = df[col].to_numpy(float)
        res = rank_correlation(x, y_rank)
        fin = finite & np.isfinite(x)
        within = int(np.sum(np.maximum(x, df["r*"])[fin] <= 2 * np.minimum(x, df["r*"])[fin]))
        kind, _, m = col.partition(": ")
        rows.append({"spectrum": kind, "measure": m or "(no data)", "n": res["n"], "rho": res["rho"],
                     "p (one-sided, exact)": res["p"], "95% CI lo": res["lo"], "95% CI hi": res["hi"],
                     "within 2x of r*": f"{within} / {int(fin.sum())}"})
    return pd.DataFrame(rows)


def main() -> None:
    out = parser(__doc__, out="docs/results/pca_analogy").parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame([measure(b) for b in BENCHMARKS])
    df.to_csv(out / "benchmarks.csv", index=False)
    cdf = correlations(df)
    cdf.to_csv(out / "correlations.csv", index=False)
    by_measure = cdf.sort_values(["measure", "rho"], ascending=[True, False], na_position="last")
    show = ["benchmark", "r*", "lo", "hi", "interval", "seeds"] + [f"{k}: participation_ratio" for k in KINDS.values()
                                                                   if f"{k}: participation_ratio" in df]
    fmt = {c: "{:.3g}" for c in show if c not in ("benchmark", "interval")}
    text = "\n".join([
        "# Which spectrum predicts r*? (Prop. 6, real tasks)", "",
        f"reservoir-depth {__version__}. Regenerate (after the studies in docs/results.md; trains nothing): "
        "`python experiments/pca_analogy.py --out docs/results/pca_analogy`.", "",
        f"r*(eps = {EPS}, absolute: accuracy within one point of full training) from each study's store; "
        "interval: paired bootstrap over seeds (>= 5 seeds) or the seed range. Spectral measures: means over the "
        "target layers, head excluded. Planted tasks are left out (their Delta W is the planted update by "
        "construction).", "",
        markdown(df[show], fmt),
        f"Spearman's rho of each measure with r* across the {len(df)} benchmarks (r* beyond the largest rank "
        "ranked last); p: exact one-sided permutation p-value (all n! orderings; the smallest possible is "
        f"1/{math.factorial(len(df))} = {1 / math.factorial(len(df)):.4f}); CI: 95% bootstrap over benchmarks; "
        "within 2x: benchmarks with a finite r* where the measure lies within a factor 2 of it. C - 1 = 9 is the "
        "data-free predictor (the same for every 10-class task, so it cannot rank them).", "",
        markdown(by_measure, {"rho": "{:.3f}", "p (one-sided, exact)": "{:.3f}", "95% CI lo": "{:.2f}",
                              "95% CI hi": "{:.2f}"}), ""])
    (out / "pca_analogy.md").write_text(text)
    write_provenance(out, config={"eps": EPS, "benchmarks": BENCHMARKS, "measures": list(MEASURES)},
                     seeds=[], metrics={"r_star": {b: (r if math.isfinite(r) else f"> {m}")
                                                   for b, r, m in zip(df["benchmark"], df["r*"], df["max rank"])}})
    print(text)


if __name__ == "__main__":
    main()
