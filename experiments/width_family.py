"""Issue 10, benchmark 6: how r* and recovery move with width, across the Fashion-MNIST MLP width
family (experiments/fashion_mnist_mlp_width_{tiny,small,medium,large}.toml: the same data, training
and seeds, only the hidden sizes differ). Reads the four results stores; trains nothing.

    python experiments/width_family.py [--results docs/results] [--out docs/results/fashion_mnist_mlp_width]

Writes width.md, width.csv, width.png and provenance.json to --out.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from _common import parser, write_provenance

from reservoir_depth.models.mlp import SIZES
from reservoir_depth.report import markdown, pyplot, save_figure
from reservoir_depth.saturation import fmt_rank, saturation
from reservoir_depth.results import Columns, ResultsStore
from reservoir_depth.study import Study

WIDTHS = ("tiny", "small", "medium", "large")
EXPERIMENTS = Path(__file__).parent
EPS = (0.01, 0.02)


def rstar(df: pd.DataFrame, study: Study, eps: float) -> str:
    s = saturation(df, study, "test_acc", eps)
    if s is None:
        return "n/a"
    lo, hi = (fmt_rank(r, s.max_rank_) for r in s.ci_)
    return f"{fmt_rank(s.r_star_, s.max_rank_)} [{lo}, {hi}]"


def main() -> None:
    p = parser(__doc__, out="docs/results/fashion_mnist_mlp_width")
    p.add_argument("--results", type=Path, default=Path("docs/results"), help="folder of the four studies' stores")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    rows, curves = [], {}
    for w in WIDTHS:
        study = Study.load(EXPERIMENTS / f"fashion_mnist_mlp_width_{w}.toml")
        path = a.results / study.study / "runs.sqlite"
        if not path.is_file():
            print(f"{w}: no results store at {path}; run `reservoir-depth run "
                  f"experiments/{study.study}.toml --out {path.parent} --workers 2`")
            continue
        df = Study.of(study).frame(ResultsStore(path))
        acc = lambda m, r=None: df[(df[Columns.METHOD] == m) & ((df[Columns.RANK] == r) if r is not None
                                                                 else True)]["test_acc"]
        full = acc("full").mean()
        ranks = sorted(int(r) for r in df[df[Columns.METHOD] == "lotta"][Columns.RANK].unique())
        curves[w] = {r: acc("lotta", r).mean() / full for r in ranks}
        total = int(df[df[Columns.METHOD] == "full"][Columns.TRAINABLE].iloc[0])
        rows.append({"width": f"{w} ({'-'.join(map(str, SIZES[w]))})", "parameters": f"{total:,}",
                     "runs": f"{len(df)} of {len(study.runs())}", "full %": 100 * full, "twin %": 100 * acc("twin").mean(),
                     **{f"r = {r} %": 100 * acc("lotta", r).mean() for r in (0, 2, 8, 32)},
                     "recovery r = 8": curves[w][8], "recovery r = 32": curves[w][32],
                     **{f"r*({e})": rstar(df, study, e) for e in EPS}})
    table = pd.DataFrame(rows)
    table.to_csv(a.out / "width.csv", index=False)
    plot(curves, a.out / "width.png")
    seeds = Study.load(EXPERIMENTS / "fashion_mnist_mlp_width_tiny.toml").seeds
    text = "\n".join([
        "# Fashion-MNIST MLP width family: recovery and r* by width", "",
        f"Regenerate: `python experiments/width_family.py --out {a.out}` (reads the four stores). First 20,000 "
        f"training images, all 10,000 test images, 10 epochs, AdamW 1e-3, batch 128, alpha = 16, seeds {list(seeds)} "
        "(intervals are seed ranges over 3 seeds, paired with full training on the same seed; eps absolute, "
        "0.01 = 1 accuracy point). Accuracy: mean over seeds.", "",
        markdown(table, {c: "{:.2f}" for c in table.columns if c.endswith("%")}
                 | {"recovery r = 8": "{:.3f}", "recovery r = 32": "{:.3f}"}),
        "![recovery vs rank by width](width.png)", ""])
    (a.out / "width.md").write_text(text)
    write_provenance(a.out, config={"studies": [f"fashion_mnist_mlp_width_{w}" for w in WIDTHS]}, seeds=list(seeds),
                     metrics={"table": table.to_dict("records")})
    print(text)


def plot(curves: dict, path: Path) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for w, c in curves.items():
        r = sorted(c)
        ax.plot([max(x, 0.5) for x in r], [c[x] for x in r], marker="o", label=w)
    ax.set_xscale("log", base=2)
    ax.axhline(1, color="grey", lw=0.6)
    ax.set(xlabel="LoRA rank r (r = 0 drawn at 0.5)", ylabel="recovery (acc / full training)",
           title="Fashion-MNIST MLPs by width")
    ax.legend()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
