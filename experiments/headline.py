"""The headline table of docs/results.md, from the committed stores: every benchmark's full training,
LottaLoRA at r = 8 and at r*, and r* at its metric's own headline tolerance (accuracy: 1 pp absolute;
bits per character and NRMSE: 5 % of full training, relative), bracketed up to the targets' full rank.

    python experiments/headline.py [--out docs/results/headline]

Writes headline.csv, headline.md (the table docs/results.md carries between its "headline" markers;
tests/test_docs.py checks they agree) and provenance.json. Reads the stores only (and builds each
model at init for its full rank), and the Decision Transformer's rows from
docs/results/decision_transformer/provenance.json (experiments/decision_transformer.py: its metric,
the mean return in the environment, is measured outside a study's trainer); trains nothing.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd

from reservoir_depth.predict import study_of, target
from reservoir_depth.rank import SaturationRank
from reservoir_depth.report import markdown
from reservoir_depth.results import Columns, ResultsStore
from reservoir_depth.tasks import metric_of

sys.path.insert(0, str(Path(__file__).parent))
from _common import parser, write_provenance  # noqa: E402

RESULTS = Path("docs/results")
PAPER_96_100 = "recovery within 96-100 % (design.md; the row's own figure is not quoted here)"
BENCHMARKS = {  # results folder -> (the paper's benchmark, the paper's figure, our profile in words)
    "fashion_mnist_mlp": ("MNIST MLP, medium", "r = 8: 96.80 vs 98.38 (0.984)", "Fashion-MNIST medium MLP, 60k, 20 epochs"),
    "fashion_mnist_mlp_width_tiny": ("MNIST MLP, tiny..large", "-", "Fashion-MNIST tiny MLP, 20k, 10 epochs"),
    "fashion_mnist_mlp_width_small": ("", "", "Fashion-MNIST small MLP, 20k, 10 epochs"),
    "fashion_mnist_mlp_width_medium": ("", "", "Fashion-MNIST medium MLP, 20k, 10 epochs"),
    "fashion_mnist_mlp_width_large": ("", "", "Fashion-MNIST large MLP, 20k, 10 epochs"),
    "digits_mlp": ("(the main job)", "-", "digits, small MLP, 30 epochs"),
    "mnist5k_mlp": ("MNIST MLP", "-", "MNIST-5k, small MLP, 30 epochs"),
    "mnist5k_mlp_rslora": ("", "", "MNIST-5k, small MLP, rsLoRA"),
    "mnist1d_mlp": ("MNIST MLP", "-", "MNIST-1D, small MLP, 60 epochs"),
    "digits_linear_head": ("single-layer classifier", "-", "digits, one linear layer (16) + head"),
    "mnist1d_one_hidden": ("", "", "MNIST-1D, one hidden layer of 256"),
    "fashion_mnist_plain20": ("CIFAR-10 Plain-20", "r = 16: 87.70 vs 90.81 (0.966)", "Fashion-MNIST Plain-20, 10k, 5 epochs (not converged)"),
    "fashion_mnist_vit": ("ViT-B/16 Flowers, fully random", "r = 16: 54.27", "fully random ViT, Fashion-MNIST 5k"),
    "shakespeare_milton_encoder": ("IMDB 3-layer Transformer", "r = 8: 85.12 vs 85.69 (0.993)", "Shakespeare-vs-Milton encoder"),
    "shakespeare_char_lm": ("WikiText Llama LM, 3M", "r = 8 train loss 5.639 vs 5.007 (1.126)", "char LM, llama 3M, attention adapters"),
    "shakespeare_char_lm_all": ("", "", "char LM, llama 3M, every linear layer"),
    "reservoir_mackey_glass": ("CfC PhysioNet (AUROC)", "r = 1: 0.832 vs 0.836", "reservoir, Mackey-Glass, one-step NRMSE"),
    "reservoir_lorenz": ("", "", "reservoir, Lorenz, one-step NRMSE"),
    "gru_mackey_glass": ("", "", "GRU reservoir, Mackey-Glass, one-step NRMSE"),
    "pattern_gcn": ("GIN / GCN graphs", PAPER_96_100, "PATTERN (Dwivedi et al., generated), GCN, 1k graphs, 12 epochs"),
    "cluster_gin": ("", "", "CLUSTER (Dwivedi et al., generated), GIN, 1k graphs, 12 epochs (not converged)"),
    "sbm_communities_gin": ("", "", "SBM community count (graph classification), GIN, 1k graphs"),
}
DT = RESULTS / "decision_transformer"  # experiments/decision_transformer.py: its own loop, not a study store
DT_ROWS = {"cartpole": ("Decision Transformer", PAPER_96_100, "DT, CartPole-v1, mixed-quality offline data, return; recovery (R - R_random) / (R_full - R_random)"),
           "acrobot": ("", "", "DT, Acrobot-v1, mixed-quality offline data, return; recovery as above")}
R = 8  # the fixed rank every row reports beside r*


def value(m, v: float) -> str:
    return f"{100 * v:.2f}" if m.name in ("test_acc", "test_bacc") else f"{v:.4f}" if "nrmse" in m.name else f"{v:.3f}"


def r_star_cell(t: dict) -> str:
    if t["censored"]:
        cell = f"> {t['max_rank']}" + (" (full rank)" if t["max_rank"] >= t["full_rank"] else
                                       f" (full rank {t['full_rank']} not run)")
    else:
        cell = f"{int(t['r_star'])}"
        if metric_of(t["metric"]).is_tie(t["margin"], t["n_test"]):
            cell += " (a tie: its margin is below one test example per seed)"
        if t["r_star"] == t["max_rank"]:
            cell += " (at the largest rank run: not shown to last)"
    if t["crossing"]:
        undone = ", ".join(str(r) for r in t["undone_at"])
        cell += f" (r = {int(t['r_first'])} crossed first, undone at r = {undone})"
    if t["n_seeds"] == 1:
        cell += " (one seed)"
    if t["beats_reference"]:
        cell += f" (reference not a ceiling: r = {', '.join(str(r) for r in t['beats_reference'])} beats full training)"
    lo, hi = (("> %d" % t["max_rank"]) if math.isinf(v) else "%d" % v for v in (t["lo"], t["hi"]))
    kind = "paired bootstrap" if t["interval"] == "bootstrap" else "seed range"
    return f"{cell} [{lo}, {hi}] ({kind})"


def q90_cell(t: dict) -> str:
    """r*_0.90 (recovery 90 % of the way from the null model to full training) and its trainable count."""
    if math.isnan(t["r_star_q90"]):
        return "not recorded"
    lo, hi = (("> %d" % t["max_rank"]) if math.isinf(v) else "%d" % v for v in (t["q90_lo"], t["q90_hi"]))
    if math.isinf(t["r_star_q90"]):
        return f"> {t['max_rank']} [{lo}, {hi}]"
    return f"{int(t['r_star_q90'])} [{lo}, {hi}]; {t['trainable_q90']:,.0f} trainable"


def row(folder: Path) -> dict:
    t = target(folder)
    study = study_of(folder)
    df = study.frame(ResultsStore(folder / "runs.sqlite"))
    m = metric_of(t["metric"])
    full = df[df[Columns.METHOD] == "full"][t["metric"]]
    lotta = df[df[Columns.METHOD] == "lotta"]
    at = lambda r: lotta[lotta[Columns.RANK] == r]
    at_r = at(R) if len(at(R)) else at(lotta[Columns.RANK].max())
    r_used = int(at_r[Columns.RANK].iloc[0])
    rec = lambda v: v / full.mean()
    paper, paper_fig, profile = BENCHMARKS[folder.name]
    out = {"paper benchmark": paper, "the paper": paper_fig, "ours": f"{profile} ({t['n_seeds']} seed{'s' if t['n_seeds'] > 1 else ''})",
           "metric": t["metric"], "tolerance": m.eps_text(t["eps"], t["tolerance"] == "relative"),
           "full": value(m, full.mean()), f"LottaLoRA, r = {R}": f"{value(m, at_r[t['metric']].mean())}"
           + ("" if r_used == R else f" (r = {r_used})"), "recovery": f"{rec(at_r[t['metric']].mean()):.3f}",
           "trainable": f"{100 * at_r['trainable_fraction'].mean():.2f} %", "r*": r_star_cell(t),
           "r*_0.90": q90_cell(t),
           "ranks run": ", ".join(str(int(r)) for r in sorted(lotta[Columns.RANK].unique())),
           "full rank": t["full_rank"]}
    if not t["censored"]:
        out["LottaLoRA at r*"] = value(m, at(t["r_star"])[t["metric"]].mean())
    else:
        out["LottaLoRA at r*"] = f"{value(m, at(t['max_rank'])[t['metric']].mean())} (r = {t['max_rank']})"
    return out


def dt_rows() -> list[dict]:
    """The Decision Transformer's rows from its experiment's provenance.json: mean return over seeds;
    recovery on the D4RL scale (R - R_random) / (R_full - R_random); r* at 5 % of full training's
    mean return (relative), a seed range over its 3 seeds."""
    import json

    rec = json.loads((DT / "provenance.json").read_text())
    summary = pd.DataFrame(rec["metrics"]["summary"])
    runs = pd.read_csv(DT / "runs.csv")
    rows = []
    for star in rec["metrics"]["r_star"]:
        env = star["env"]
        # r* re-read from the per-seed returns with today's estimator (a saturation that lasts), not the stored one
        g = runs[runs.env == env]
        lotta_runs, full_runs = g[g.method == "lotta"], g[g.method == "full"].sort_values("seed")
        ranks = sorted(int(r) for r in lotta_runs.r.unique())
        V = [[lotta_runs[(lotta_runs.r == r) & (lotta_runs.seed == s)].mean_return.iloc[0] for r in ranks]
             for s in full_runs.seed]
        sr = SaturationRank(eps=star["eps"], relative=True).fit(ranks, V, full_runs.mean_return.to_numpy())
        star = {**star, "r_star": sr.r_star_, "interval": list(sr.ci_), "beats": sr.beats_reference_}
        d = summary[summary.env == env]
        lotta = d[d.method == "lotta"].assign(r=lambda x: x.r.astype(int))
        at = lambda r: lotta[lotta.r == r].iloc[0]
        r_used = R if (lotta.r == R).any() else int(lotta.r[lotta.r <= R].max())
        full = d[d.method == "full"].iloc[0]
        censored = not math.isfinite(star["r_star"])
        r_at = star["max_rank"] if censored else int(star["r_star"])
        lo, hi = (("> %d" % star["max_rank"]) if math.isinf(v) else "%d" % v for v in star["interval"])
        cell = (f"> {star['max_rank']} (full rank)" if censored else f"{int(star['r_star'])}") + \
            f" [{lo}, {hi}] (seed range)"
        if star["beats"]:
            cell += f" (reference not a ceiling: r = {', '.join(map(str, star['beats']))} beats full training)"
        paper, paper_fig, profile = DT_ROWS[env]
        rows.append({"paper benchmark": paper, "the paper": paper_fig, "ours": f"{profile} ({int(full.seeds)} seeds)",
                     "metric": "mean return", "tolerance": f"{star['eps']:g} ({100 * star['eps']:g}% of full training, relative)",
                     "full": f"{full['mean return']:.1f}",
                     f"LottaLoRA, r = {R}": f"{at(r_used)['mean return']:.1f}" + ("" if r_used == R else f" (r = {r_used})"),
                     "recovery": f"{at(r_used).recovery:.3f}", "trainable": at(r_used).trainable,
                     "r*": cell, "ranks run": ", ".join(str(r) for r in sorted(lotta.r)),
                     "full rank": star["full_rank"],
                     "LottaLoRA at r*": f"{at(r_at)['mean return']:.1f}" + (f" (r = {r_at})" if censored else ""),
                     "r*_0.90": "not computed (its own experiment)"})
    return rows


def main() -> None:
    args = parser(__doc__, out="docs/results/headline").parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame([row(RESULTS / b) for b in BENCHMARKS if (RESULTS / b / "runs.sqlite").exists()]
                         + (dt_rows() if (DT / "provenance.json").exists() else []))
    table.to_csv(out / "headline.csv", index=False)
    cols = ["paper benchmark", "the paper", "ours", "tolerance", "full", f"LottaLoRA, r = {R}", "recovery",
            "trainable", "LottaLoRA at r*", "r*", "r*_0.90"]
    md = markdown(table[cols])
    (out / "headline.md").write_text(md if md.endswith("\n") else md + "\n")
    write_provenance(out, config={"benchmarks": list(BENCHMARKS) + [f"decision_transformer/{e}" for e in DT_ROWS],
                                  "r": R}, seeds=[],
                     metrics={"rows": table.to_dict("records")})
    print(md)


if __name__ == "__main__":
    main()
