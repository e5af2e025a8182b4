"""Prop. 6 (theory/06_pca_analogy.md): which spectrum, if any, predicts r*?

Reads the results stores of the benchmark studies (run them first: docs/results.md
names each command), measures r*(eps) and, for every benchmark, the spectra of the
inputs, the between-class scatter, the layer inputs of the scaffold at init, the
Delta W of the fully trained twin and the adapter at the largest rank (means over
target layers); then the Spearman correlation of each predictor with r* across
benchmarks, with a bootstrap CI.

    python experiments/pca_analogy.py [--out docs/results/pca_analogy]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd

from reservoir_depth import __version__
from reservoir_depth.cli import DEFAULT_STUDY
from reservoir_depth.rank import SaturationRank
from reservoir_depth.report import spectra_table
from reservoir_depth.results import ResultsStore, markdown
from reservoir_depth.sweep import load_study, study_frame
from reservoir_depth.theory.analogy import rank_correlation

sys.path.insert(0, str(Path(__file__).parent))
from planted_rank import FAMILIES, study as planted_study  # noqa: E402

ROOT = Path("docs/results")
EPS_CLASSIFICATION = 0.01
KINDS = {  # row label prefix in report.spectra_table -> short name
    "inputs (PCA)": "input",
    "between-class scatter": "between-class",
    "Cov(x, y)": "cross-cov",
    "activations, scaffold at init": "act@init",
    "Delta W of the trained twin": "dW twin",
    "adapter s B A": "adapter@max",
}
MEASURES = ("k_0.9", "k_0.95", "k_0.99", "participation_ratio", "entropy_rank")


def benchmarks():
    """(name, study, store folder, eps, reference loss or None for full training)."""
    yield "digits MLP", DEFAULT_STUDY, ROOT / "digits_mlp", EPS_CLASSIFICATION, None
    yield "MNIST-5k MLP", load_study("experiments/mnist5k_mlp.toml"), ROOT / "mnist5k_mlp", EPS_CLASSIFICATION, None
    yield ("Fashion-MNIST MLP", load_study("experiments/fashion_mnist_mlp.toml"), ROOT / "fashion_mnist_mlp",
           EPS_CLASSIFICATION, None)
    yield ("digits linear+head", load_study("experiments/digits_linear_head.toml"), ROOT / "digits_linear_head",
           EPS_CLASSIFICATION, None)
    for family, (_, _, _, ks, _, eps) in FAMILIES.items():
        for k in ks:
            yield f"planted {family} k={k}", planted_study(family, k), ROOT / "planted", eps, 0.0


def measure(name, study, folder, eps, reference) -> dict:
    store = ResultsStore(folder / "runs.sqlite")
    df = study_frame(study, store)
    if df.empty:
        raise SystemExit(f"{name}: no runs in {folder / 'runs.sqlite'}; run its study first (docs/results.md)")
    lotta = df[df["cfg.method"] == "lotta"]
    if reference is None:
        sr = SaturationRank.from_frame(df, metric="test_acc", eps=eps, n_boot=500)
    else:
        sr = SaturationRank(eps=eps, higher_is_better=False, n_boot=500).fit(
            lotta["cfg.scaffold.r"].astype(int), lotta["test_loss"], [reference])
    r_max = int(lotta["cfg.scaffold.r"].max())
    row = {"benchmark": name, "eps": eps, "r*": sr.r_star_, "CI lo": sr.ci_[0], "CI hi": sr.ci_[1], "r max": r_max}
    table, _ = spectra_table(study, df)
    for label, short in KINDS.items():
        sel = table[table["spectrum"].str.startswith(label) & (table["layer"] != "head")]
        for m in MEASURES:
            if m in sel and sel[m].notna().any():
                row[f"{short} {m}"] = float(sel[m].mean())
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/results/pca_analogy")
    out = Path(p.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for b in benchmarks():
        rows.append(measure(*b))
        print(rows[-1]["benchmark"], rows[-1]["r*"], flush=True)
    df = pd.DataFrame(rows)
    df.to_csv(out / "benchmarks.csv", index=False)
    # r* beyond the largest rank is censored: ranked above every finite r* (2 x r max)
    y = [r if math.isfinite(r) else 2 * m for r, m in zip(df["r*"], df["r max"])]
    corr = []
    for col in [c for c in df.columns if any(c.endswith(m) for m in MEASURES)]:
        corr.append({"predictor": col, **rank_correlation(df[col], y)})
    cdf = pd.DataFrame(corr).sort_values("rho", ascending=False)
    cdf.to_csv(out / "correlations.csv", index=False)
    show = ["benchmark", "eps", "r*", "CI lo", "CI hi", "r max"] + [
        c for c in df.columns if c.endswith("k_0.99") or c.endswith("participation_ratio")]
    text = "\n".join([
        "# Which spectrum predicts r*? (Prop. 6)", "",
        f"reservoir-depth {__version__}. Regenerate (after the studies in docs/results.md): "
        "`python experiments/pca_analogy.py --out docs/results/pca_analogy`.", "",
        "r*(eps): classification, accuracy within eps of full training; planted, loss within eps of the Bayes risk. "
        "Spectral measures are means over the target layers (head excluded).", "",
        markdown(df[show], {c: "{:.3g}" for c in show}),
        "Spearman correlation of each predictor with r* across benchmarks (r* beyond the largest rank ranked "
        "last), 95% bootstrap CI over benchmarks; within_2x = fraction of benchmarks where predictor and r* are "
        "within a factor 2.", "",
        markdown(cdf, {c: "{:.3f}" for c in ("rho", "lo", "hi", "within_2x")}), ""])
    (out / "pca_analogy.md").write_text(text)
    (out / "provenance.json").write_text(json.dumps({"version": __version__, "eps_classification": EPS_CLASSIFICATION,
                                                     "benchmarks": [b[0] for b in benchmarks()]}, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
