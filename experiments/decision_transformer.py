"""Issue 31, the paper's Decision Transformer row: a small GPT-style DT (models/decision.py) trained on
offline trajectories of seeded behaviour policies of mixed quality (expert with 10 % random actions,
noisy with 50 %, random; reservoir_depth/offline_rl.py) on CartPole-v1 and Acrobot-v1, judged by the
mean return of greedy evaluation episodes conditioned on the expert's return (ENVS[env].target).

Methods, each on the same data, epochs and learning rate: full training, the twin (full training from
W_seed) and LottaLoRA at ranks RANKS (32 = full rank: d_model), every block's q, k, v, o, up, down a
frozen scaffold; seeds SEEDS (the scaffold's root seed, the init of what trains and the batch order);
the data set is generated once from DATA_SEED. r* at 5 % of full training's mean return (relative,
higher is better) from reservoir_depth.rank.SaturationRank over the per-seed curves (paired with
full training on the same seed).

    python experiments/decision_transformer.py [--out docs/results/decision_transformer] [--env cartpole]

Writes runs.csv (one row per run: env, method, r, seed, mean return, trainable fraction, the losses),
behaviour.csv (the behaviour policies' returns), summary.csv and summary.md (per env and method: mean
and sd of the return over seeds, recovery on the D4RL scale (R - R_random) / (R_full - R_random), r*),
provenance.json.
Needs gymnasium (pip install gymnasium).
"""

from __future__ import annotations

import importlib.metadata
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from reservoir_depth import offline_rl as rl
from reservoir_depth.models import build, scaffold_defaults
from reservoir_depth.rank import SaturationRank
from reservoir_depth.report import markdown
from reservoir_depth.scaffold import ScaffoldConfig, count_parameters, merge, scaffold

sys.path.insert(0, str(Path(__file__).parent))
from _common import parser, write_provenance  # noqa: E402

ENVS = ("cartpole", "acrobot")
DATA_SEED, EPISODES = 0, 8  # episodes per behaviour policy
SEEDS = (0, 1, 2)
RANKS = (0, 2, 8, 32)
ARCH = dict(d_model=32, layers=2, heads=2, context=20, max_steps=500, return_scale=100.0)
TRAIN = dict(epochs=2, lr=1e-3, batch_size=64)
EVAL_EPISODES, EVAL_SEED = 5, 10_000
SCAFFOLD = dict(alpha=16.0, spec={"name": "normal", "scaling": "fan_in", "gain": 1.0, "version": 1})
EPS = 0.05  # r*: within 5 % of full training's mean return


def model_for(data: rl.OfflineData, method: str, r: int, seed: int):
    model = build("decision-transformer", seed=seed, d_in=data.d_state, n_out=data.n_actions, **ARCH)
    if method in ("lotta", "twin"):
        model = scaffold(model, ScaffoldConfig(**scaffold_defaults(model), r=r, root_seed=seed, **SCAFFOLD))
    return merge(model) if method == "twin" else model


def run(env: str, data: rl.OfflineData, method: str, r: int, seed: int) -> dict:
    model = model_for(data, method, r, seed)
    counts = count_parameters(model)
    t0 = time.perf_counter()
    losses = rl.fit(model, data, seed=seed, **TRAIN)
    returns = rl.evaluate(model, data, episodes=EVAL_EPISODES, seed=EVAL_SEED)
    return {"env": env, "method": method, "r": r if method == "lotta" else np.nan, "seed": seed,
            "mean_return": float(np.mean(returns)), "returns": returns, "train_loss": losses[-1],
            "trainable": counts.trainable, "total": counts.total,
            "trainable_fraction": counts.trainable / counts.total, "seconds": time.perf_counter() - t0}


def summarise(df: pd.DataFrame, env: str, random_return: float) -> tuple[list[dict], dict]:
    """Per method: mean return over seeds, and recovery on the D4RL scale (R - R_random) / (R_full - R_random),
    R_random the random behaviour policy's mean return (returns can be negative: Acrobot's are)."""
    d = df[df.env == env]
    full = d[d.method == "full"].sort_values("seed")
    norm = lambda v: (v - random_return) / (full.mean_return.mean() - random_return)
    rows = []
    for (method, r), g in d.groupby(["method", d.r.fillna(-1)], sort=False):
        rows.append({"env": env, "method": method, "r": "" if r < 0 else int(r), "mean return": g.mean_return.mean(),
                     "sd": g.mean_return.std(), "seeds": len(g), "recovery": norm(g.mean_return.mean()),
                     "trainable": f"{100 * g.trainable_fraction.mean():.2f} %"})
    lotta = d[d.method == "lotta"]
    curves = lotta.pivot(index="seed", columns="r", values="mean_return").sort_index()
    sat = SaturationRank(eps=EPS, relative=True, higher_is_better=True).fit(
        [int(c) for c in curves.columns], curves.to_numpy(), full.mean_return.to_numpy())
    star = {"env": env, "eps": EPS, "r_star": sat.r_star_, "interval": sat.ci_, "interval_kind": sat.ci_kind_,
            "max_rank": sat.max_rank_, "full_rank": ARCH["d_model"], "full": sat.full_,
            "curve": sat.curve_}
    return rows, star


def main() -> None:
    p = parser(__doc__, out="docs/results/decision_transformer")
    p.add_argument("--env", action="append", choices=ENVS, help="environment(s) to run (default: all)")
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    envs = args.env or list(ENVS)
    runs, behaviour = [], []
    for env in envs:
        data = rl.generate(env, episodes=EPISODES, seed=DATA_SEED)
        for policy, rets in data.policy_returns.items():
            behaviour.append({"env": env, "policy": policy, "random action probability": rl.POLICIES[policy],
                              "episodes": len(rets), "mean return": float(np.mean(rets)), "sd": float(np.std(rets))})
        jobs = [("full", 0), ("twin", 0)] + [("lotta", r) for r in RANKS]
        for seed in SEEDS:
            for method, r in jobs:
                runs.append(run(env, data, method, r, seed))
                print(f"{env} {method} r={r} seed={seed}: {runs[-1]['mean_return']:.1f}", flush=True)
    df = pd.DataFrame(runs)
    df.to_csv(out / "runs.csv", index=False)
    pd.DataFrame(behaviour).to_csv(out / "behaviour.csv", index=False)
    rows, stars = [], []
    for env in envs:
        r, s = summarise(df, env, next(b["mean return"] for b in behaviour if b["env"] == env
                                       and b["policy"] == "random"))
        rows += r
        stars.append(s)
    summary = pd.DataFrame(rows)
    summary.to_csv(out / "summary.csv", index=False)
    md = (markdown(pd.DataFrame(behaviour)) + "\n\n" + markdown(summary.round(3)) + "\n\n" +
          markdown(pd.DataFrame([{k: v for k, v in s.items() if k != "curve"} for s in stars])) + "\n")
    (out / "summary.md").write_text(md)
    write_provenance(out, config={"envs": envs, "data_seed": DATA_SEED, "episodes_per_policy": EPISODES,
                                  "policies": rl.POLICIES, "targets": {e: rl.ENVS[e].target for e in envs},
                                  "arch": ARCH, "train": TRAIN, "ranks": RANKS, "scaffold": SCAFFOLD,
                                  "eval_episodes": EVAL_EPISODES, "eval_seed": EVAL_SEED, "eps": EPS},
                     seeds=list(SEEDS), metrics={"r_star": stars, "summary": rows},
                     gymnasium=importlib.metadata.version("gymnasium"))
    print(md)


if __name__ == "__main__":
    main()
