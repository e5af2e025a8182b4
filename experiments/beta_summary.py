"""Issue 10, study 11: the learned beta of every LottaLoRA run under a static scaffold, read from
every committed results store (docs/results/*/runs.sqlite); nothing is trained. Runs of the zeros
family (W_seed = 0, the no-scaffold control) are left out: their beta multiplies nothing.

The paper: beta strictly positive everywhere, median about 0.92 in Transformers. Per benchmark
(the study name): runs, layers, min / median / max of the final beta over every (run, layer),
how many are <= 0, and the median by rank.

    python experiments/beta_summary.py [--results docs/results] [--out docs/results/beta_summary]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from _common import parser, write_provenance

from reservoir_depth.report import markdown
from reservoir_depth.results import Columns, ResultsStore

SCHEDULE = "cfg.scaffold.schedule"
SPEC = "cfg.scaffold.spec.name"


def betas(results: Path) -> pd.DataFrame:
    """One row per (store, study, run, layer): the final beta of a static-scaffold LottaLoRA run."""
    rows = []
    for path in sorted(results.glob("*/runs.sqlite")):
        df = ResultsStore(path).frame()
        if df.empty or Columns.METHOD not in df:
            continue
        df = df[(df[Columns.METHOD] == "lotta")]
        if SCHEDULE in df:
            df = df[df[SCHEDULE].fillna("static") == "static"]
        if SPEC in df:  # W_seed = 0: beta multiplies nothing and gets no gradient
            df = df[df[SPEC] != "zeros"]
        cols = [c for c in df.columns if c.startswith(Columns.BETA)]
        for _, run in df.iterrows():
            for c in cols:
                if run[c] == run[c]:  # NaN: the layer is not in this run's model
                    rows.append({"store": path.parent.name, "study": run["study"], "run_id": run["run_id"],
                                 "r": int(run[Columns.RANK]), "seed": int(run[Columns.SEED]),
                                 "layer": c[len(Columns.BETA):], "beta": float(run[c])})
    return pd.DataFrame(rows)


def summary(b: pd.DataFrame) -> pd.DataFrame:
    g = b.groupby(["store", "study"])
    out = pd.DataFrame({"runs": g["run_id"].nunique(), "(run, layer) pairs": g.size(),
                        "min": g["beta"].min(), "median": g["beta"].median(), "max": g["beta"].max(),
                        "<= 0": g["beta"].apply(lambda v: int((v <= 0).sum()))}).reset_index()
    return out


def main() -> None:
    p = parser(__doc__, out="docs/results/beta_summary")
    p.add_argument("--results", type=Path, default=Path("docs/results"), help="folder of results stores")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    b = betas(a.results)
    b.to_csv(a.out / "beta.csv", index=False)
    s = summary(b)
    by_rank = b.pivot_table(index="store", columns="r", values="beta", aggfunc="median")
    by_rank.columns = [f"r = {c}" for c in by_rank.columns]
    text = "\n".join([
        "# Learned beta under a static scaffold, every benchmark", "",
        f"Regenerate: `python experiments/beta_summary.py --out {a.out}` (reads the committed stores; trains "
        f"nothing). {len(b)} (run, layer) betas from {b['run_id'].nunique()} LottaLoRA runs in "
        f"{b['store'].nunique()} stores; final epoch. Overall: min {b['beta'].min():.3f}, median "
        f"{b['beta'].median():.3f}, max {b['beta'].max():.3f}; {int((b['beta'] <= 0).sum())} are <= 0.", "",
        markdown(s, {"min": "{:.3f}", "median": "{:.3f}", "max": "{:.3f}"}),
        "Median by rank:", "",
        markdown(by_rank.reset_index(), {c: "{:.3f}" for c in by_rank.columns}), ""])
    (a.out / "beta.md").write_text(text)
    write_provenance(a.out, config={"results": str(a.results)}, seeds=sorted(b["seed"].unique().tolist()),
                     metrics={"min": float(b["beta"].min()), "median": float(b["beta"].median()),
                              "nonpositive": int((b["beta"] <= 0).sum()), "stores": sorted(b["store"].unique())})
    print(text)


if __name__ == "__main__":
    main()
