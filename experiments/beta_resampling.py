"""Prop. 5 (theory/05_beta_resampling.md): beta under a resampled scaffold.

(a) SGD, one scaffold layer, squared error, target y = (a W_0 + W') x with W_0 the
    canonical scaffold and W' independent: the static scaffold keeps beta near a; with
    W_seed redrawn every step (never W_0) the mean beta over seeds follows the prediction
    beta_0 (1 - lr kappa)^t.
(b) The destabilised-scaffold study: digits, small MLP, r = 8, AdamW, 100 epochs, 5 seeds;
    schedules static / epoch / step (k = 8) / batch (k = 4): beta per layer per epoch
    and test accuracy. (The prediction for AdamW is qualitative: beta -> 0.)

    python experiments/beta_resampling.py [--out docs/results/beta_resampling]
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from reservoir_depth import __version__, data
from reservoir_depth.models import build
from reservoir_depth.report import markdown, pyplot, save_figure
from reservoir_depth.scaffold import ScaffoldConfig, ScaffoldLinear, advance, scaffold
from reservoir_depth.theory.adapters import beta_sgd_trajectory, kappa_resampled
from reservoir_depth.train import TrainConfig, train

sys.path.insert(0, str(Path(__file__).parent))
from _common import parser, write_provenance  # noqa: E402

SGD = {"d": 16, "d_out": 16, "n": 256, "r": 2, "lr": 5e-4, "gain": 1.0, "steps": 150, "seeds": 100, "a": 0.7}
STUDY = {"dataset": "digits", "hidden": "small", "r": 8, "epochs": 100, "lr": 1e-3, "batch_size": 64,
         "seeds": [0, 1, 2, 3, 4], "schedules": [("static", 1), ("epoch", 1), ("step", 8), ("batch", 4)]}


def sgd_beta(schedule: str, seed: int, p=SGD) -> tuple[np.ndarray, float]:
    k = p["steps"] + 2 if schedule == "step" else 1
    cfg = ScaffoldConfig(target_modules=["fc"], r=p["r"], root_seed=seed, bias="none", schedule=schedule, k=k,
                         spec={"name": "normal", "scaling": "fan_in", "gain": p["gain"]})
    layer = ScaffoldLinear(p["d"], p["d_out"], "fc", cfg.settings_for("fc")).double()
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(p["n"], p["d"], generator=g, dtype=torch.float64)
    W_other = torch.randn(p["d_out"], p["d"], generator=g, dtype=torch.float64) / p["d"] ** 0.5
    y = X @ (p["a"] * layer.W_seed + W_other).T  # W_seed is W_0 here: advance() has not moved yet
    opt = torch.optim.SGD([layer.beta, layer.lora_A, layer.lora_B], lr=p["lr"])
    betas = [1.0]
    for t in range(p["steps"]):
        advance(layer, step=t + 1)
        loss = (layer(X) - y).pow(2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        betas.append(layer.beta.item())
    return np.array(betas), kappa_resampled(X.numpy(), p["d_out"], p["gain"] ** 2 / p["d"])


def part_a(out: Path) -> tuple[pd.DataFrame, dict]:
    rows, summary = [], {}
    for schedule in ("static", "step"):
        runs = [sgd_beta(schedule, s) for s in range(SGD["seeds"])]
        B = np.stack([b for b, _ in runs])
        kappa = float(np.mean([k for _, k in runs]))
        pred = beta_sgd_trajectory(1.0, kappa, SGD["lr"], SGD["steps"])
        se = B.std(0, ddof=1) / np.sqrt(len(B))
        for t in range(SGD["steps"] + 1):
            rows.append({"schedule": schedule, "step": t, "beta mean": B[:, t].mean(), "beta se": se[t],
                         "predicted (resampled)": pred[t]})
        z = np.abs(B.mean(0) - pred)[1:] / np.maximum(se[1:], 1e-12)
        summary[schedule] = {"kappa": kappa, "final beta": float(B[:, -1].mean()), "predicted final": float(pred[-1]),
                             "max |z|": float(z.max())}
    return pd.DataFrame(rows), summary


def part_b() -> pd.DataFrame:
    d = data.load(STUDY["dataset"])
    rows = []
    for schedule, k in STUDY["schedules"]:
        for seed in STUDY["seeds"]:
            m = build("mlp", seed=seed, d_in=d.d_in, n_out=d.n_out, hidden=STUDY["hidden"])
            m = scaffold(m, ScaffoldConfig(target_modules=m.scaffold_targets, trainable=m.scaffold_trainable,
                                           r=STUDY["r"], root_seed=seed, schedule=schedule, k=k))
            h = train(m, d, TrainConfig(epochs=STUDY["epochs"], lr=STUDY["lr"], batch_size=STUDY["batch_size"],
                                        seed=seed, progress=False))
            for e in h.epochs:
                rows.append({"schedule": f"{schedule} (k={k})", "seed": seed, **e})
    return pd.DataFrame(rows)


def plot(a: pd.DataFrame, b: pd.DataFrame, path: Path) -> None:
    plt = pyplot()

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (s, g) in enumerate(a.groupby("schedule")):
        ax.plot(g["step"], g["beta mean"], color=f"C{i}", label=f"{s}: measured mean over seeds")
        ax.fill_between(g["step"], g["beta mean"] - 2 * g["beta se"], g["beta mean"] + 2 * g["beta se"],
                        color=f"C{i}", alpha=0.2)
    g = a[a["schedule"] == "step"]
    ax.plot(g["step"], g["predicted (resampled)"], "k--", label="Prop. 5: beta0 (1 - lr kappa)^t")
    ax.set(xlabel="SGD step", ylabel="beta", title="(a) one layer, SGD, y = (0.7 W_0 + W') x")
    ax.legend(fontsize=8)
    beta_cols = [c for c in b.columns if c.startswith("beta/")]
    m = b.groupby(["schedule", "epoch"])[beta_cols].mean().mean(axis=1).reset_index(name="beta")
    for s, g in m.groupby("schedule", sort=False):
        bx.plot(g["epoch"], g["beta"], marker=".", label=s)
    bx.axhline(0, color="grey", lw=0.6)
    bx.set(xlabel="epoch", ylabel="mean beta over layers", title="(b) digits MLP, r = 8, AdamW")
    bx.legend(fontsize=8)
    save_figure(fig, path)


def main() -> None:
    out = parser(__doc__, out="docs/results/beta_resampling").parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    a, summary = part_a(out)
    b = part_b()
    a.to_csv(out / "sgd.csv", index=False)
    b.to_csv(out / "schedules.csv", index=False)
    plot(a, b, out / "beta_resampling.png")
    beta_cols = [c for c in b.columns if c.startswith("beta/")]
    last = b[b["epoch"] == b["epoch"].max()]
    g = last.groupby("schedule", sort=False)
    table = g[["test_acc", *beta_cols]].mean().reset_index()
    for c in ["test_acc", *beta_cols]:  # the per-seed range beside each mean: what n seeds support
        table[c] = [f"{m:.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in zip(table[c], g[c].min(), g[c].max())]
    sa = pd.DataFrame([{"schedule": k, **v} for k, v in summary.items()])
    n_seeds = len(STUDY["seeds"])
    text = "\n".join([
        "# beta under a resampled scaffold (Prop. 5)", "",
        f"reservoir-depth {__version__}, Python {platform.python_version()}. Regenerate: "
        "`python experiments/beta_resampling.py --out docs/results/beta_resampling`.", "",
        f"(a) SGD, one scaffold layer {SGD['d']} -> {SGD['d_out']}, r = {SGD['r']}, lr = {SGD['lr']}, "
        f"{SGD['seeds']} seeds, {SGD['steps']} steps; max |z| = largest |measured - predicted| / standard error "
        "over all steps (the prediction is for the resampled schedule; static is the control).", "",
        markdown(sa, {c: "{:.4g}" for c in sa.columns}),
        f"(b) {STUDY['dataset']}, MLP {STUDY['hidden']}, r = {STUDY['r']}, AdamW lr {STUDY['lr']}, "
        f"{STUDY['epochs']} epochs, {n_seeds} seeds {STUDY['seeds']}: final test accuracy and beta per layer, "
        f"mean over seeds [smallest, largest seed] (a seed range, not a confidence interval).", "",
        markdown(table),
        "![beta trajectories](beta_resampling.png)", ""])
    (out / "beta_resampling.md").write_text(text)
    metrics = {"sgd": summary, "final": {s: {c: float(v) for c, v in r.items()}
                                         for s, r in g[["test_acc", *beta_cols]].mean().iterrows()}}
    write_provenance(out, config={"sgd": SGD, "study": STUDY}, seeds=STUDY["seeds"], metrics=metrics)
    print(text)


if __name__ == "__main__":
    main()
