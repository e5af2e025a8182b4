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


def identifiable(b: pd.DataFrame) -> pd.DataFrame:
    """One row per identifiable beta: within a run, betas of one module (the layer name less its last part)
    that are exactly equal are one value counted once ("tied": how many layers share it). At r = 0, q and k,
    v and o, up and down enter the model only through their products, so their betas stay equal; counting
    each as its own value would count one number twice."""
    parent = b["layer"].str.rsplit(".", n=1).str[0].where(b["layer"].str.contains(r"\."), "")
    keys = [b["run_id"], parent, b["beta"]]
    tied = b.groupby(keys)["layer"].transform("size")
    return b.assign(tied=tied)[~b.assign(parent=parent).duplicated(["run_id", "parent", "beta"])]


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
    every = betas(a.results)
    every.to_csv(a.out / "beta.csv", index=False)
    b = identifiable(every)
    ties = b[b["tied"] > 1]
    s = summary(b).rename(columns={"(run, layer) pairs": "identifiable betas"})
    by_rank = b.pivot_table(index="store", columns="r", values="beta", aggfunc="median")
    by_rank.columns = [f"r = {c}" for c in by_rank.columns]
    text = "\n".join([
        "# Learned beta under a static scaffold, every benchmark", "",
        f"Regenerate: `python experiments/beta_summary.py --out {a.out}` (reads the committed stores; trains "
        f"nothing). {len(every)} (run, layer) betas from {b['run_id'].nunique()} LottaLoRA runs in "
        f"{b['store'].nunique()} stores, final epoch; {len(b)} identifiable values after counting once the "
        f"{len(ties)} groups of exactly equal betas within one module ({int(ties['tied'].sum())} betas: at r = 0 q and "
        "k, v and o, up and down enter the model only through their products). Every figure below counts each "
        f"identifiable value once. Overall: min {b['beta'].min():.3f}, median "
        f"{b['beta'].median():.3f}, max {b['beta'].max():.3f}; {int((b['beta'] <= 0).sum())} are <= 0.", "",
        markdown(s, {"min": "{:.3f}", "median": "{:.3f}", "max": "{:.3f}"}),
        "Median by rank:", "",
        markdown(by_rank.reset_index(), {c: "{:.3f}" for c in by_rank.columns}), ""])
    (a.out / "beta.md").write_text(text)
    write_provenance(a.out, config={"results": str(a.results)}, seeds=sorted(b["seed"].unique().tolist()),
                     metrics={"betas": len(every), "identifiable": len(b),
                              "min": float(b["beta"].min()), "median": float(b["beta"].median()),
                              "nonpositive": int((b["beta"] <= 0).sum()), "stores": sorted(b["store"].unique())})
    print(text)


if __name__ == "__main__":
    main()
