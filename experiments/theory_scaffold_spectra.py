"""Prop. 3 (theory/03_scaffold_spectra.md): spectra of scaffold matrices and the echo-state condition.

For every family (fan-in rule, gain 1) and shape: the KS distance between the eigenvalues of
W W^T and the Marchenko-Pastur law (ratio n/m, atom at 0 when n > m); for square W the KS
distances of |lambda| to the circular law (CDF r^2) and of arg(lambda) to the uniform law.
Then the exact rules (spectral radius, orthogonal) and the echo-state contraction: tanh
reservoirs with sigma_max(W) < 1 (eq. 3.3 applies) and with the ESN recipe rho(W) < 1 only.

    python experiments/theory_scaffold_spectra.py [--out docs/results/theory]

Writes scaffold_spectra.csv (one row per family, shape, seed), scaffold_spectra.md and
scaffold_spectra.png to --out.
"""

from __future__ import annotations

import math
import platform
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from reservoir_depth import DistributionSpec, __version__, layer_seed, sample
from reservoir_depth.distributions import rng_for, spectral_radius
from reservoir_depth.report import markdown, save_figure
from reservoir_depth.theory.scaffold_spectra import (circular_cdf, echo_state_contraction, ks_distance, mp_cdf,
                                                     mp_pdf, mp_support, squared_singular_values)

sys.path.insert(0, str(Path(__file__).parent))
from _common import parser, write_provenance  # noqa: E402

FAMILIES = [("normal", {}, "finite variance"), ("uniform", {}, "finite variance"), ("laplace", {}, "finite variance"),
            ("binary", {}, "finite variance"), ("student_t", {"df": 5.0}, "finite variance"),
            ("truncated_normal", {}, "finite variance"), ("logistic", {}, "finite variance"),
            ("sparse_normal", {}, "finite variance"), ("quantized_normal", {}, "finite variance"),
            ("student_t", {"df": 3.0}, "infinite 4th moment"), ("cauchy", {}, "heavy tail"),
            ("exponential", {}, "non-zero mean"), ("erdos_renyi", {}, "non-zero mean")]
SQUARE = (64, 256, 1024)
RECT = ((256, 512), (512, 256))  # ratio n/m = 0.5 and 2 (atom 1/2 at 0)
SEEDS = (0, 1)
ESN_N, ESN_T, ESN_SEEDS = 200, 300, tuple(range(5))


def label(name: str, params: dict) -> str:
    return name + ("(" + ",".join(f"{k}={v:g}" for k, v in params.items()) + ")" if params else "")


def draw(name: str, params: dict, shape: tuple[int, int], seed: int) -> np.ndarray:
    return sample(DistributionSpec(name, params, scaling="fan_in"), shape, layer_seed(seed, f"spectra.{shape}"))


def uniform_angle(t: np.ndarray) -> np.ndarray:
    """CDF of arg(lambda) under the circular law: uniform on [-pi, pi]."""
    return (np.asarray(t) + np.pi) / (2 * np.pi)


def measure() -> tuple[pd.DataFrame, dict]:
    rows, keep = [], {}
    for name, params, kind in FAMILIES:
        fam = label(name, params)
        for shape in [(n, n) for n in SQUARE] + list(RECT):
            n, m = shape
            for seed in SEEDS:
                W = draw(name, params, shape, seed)
                ev = squared_singular_values(W)
                a, b = mp_support(n / m)
                row = {"family": fam, "kind": kind, "n": n, "m": m, "ratio": n / m, "seed": seed,
                       "ks_mp": ks_distance(ev, lambda x: mp_cdf(x, n / m)),
                       "sv2_max": ev[-1], "mp_edge": b,
                       "frac_outside": float(np.mean((ev > b * 1.01) | (ev < a * 0.99) & (ev > 0)))}
                if n == m:
                    lam = np.linalg.eigvals(W)
                    row.update({"ks_circ_r": ks_distance(np.abs(lam), circular_cdf),
                                "ks_circ_angle": ks_distance(np.angle(lam), uniform_angle),
                                "rho": float(np.max(np.abs(lam)))})
                    if n == SQUARE[-1] and seed == SEEDS[0]:
                        keep[fam] = (ev, lam)
                rows.append(row)
    return pd.DataFrame(rows), keep


def exact_rules() -> pd.DataFrame:
    """max |rho(W) - rho| of the spectral-radius rule and max |s_i - 1| of the orthogonal rule, N = 256."""
    rows = []
    for name, params, _ in FAMILIES:
        errs = []
        for seed in SEEDS:
            for rho in (0.5, 0.95, 1.5):
                W = sample(DistributionSpec(name, params, scaling="spectral_radius", rho=rho), (256, 256), seed)
                errs.append(abs(spectral_radius(W) - rho) / rho)
        rows.append({"rule": "spectral_radius", "family": label(name, params), "max rel. error": max(errs)})
    errs = [np.max(np.abs(np.linalg.svd(sample("orthogonal", shape, seed), compute_uv=False) - 1))
            for shape in [(256, 256), (256, 512), (512, 256)] for seed in SEEDS]
    rows.append({"rule": "orthogonal", "family": "orthogonal", "max rel. error": max(errs)})
    return pd.DataFrame(rows)


def echo_states() -> pd.DataFrame:
    """tanh ESN, N = 200, scalar N(0, 1) inputs through W_in ~ N(0, 1): two starts, T = 300 steps."""
    rows = []
    settings = [("sigma_max", 0.95, 1.0), ("rho", 0.5, 1.0), ("rho", 0.95, 1.0), ("rho", 1.2, 1.0), ("rho", 2.0, 1.0),
                ("rho", 0.95, 0.0), ("rho", 1.2, 0.0)]
    for name in ("normal", "uniform", "binary", "sparse_normal", "cauchy"):
        for rule, value, u_scale in settings:
            res = []
            for seed in ESN_SEEDS:
                W = sample(DistributionSpec(name, scaling="spectral_radius", rho=1.0), (ESN_N, ESN_N), seed)
                W = W * (value / (np.linalg.norm(W, 2) if rule == "sigma_max" else 1.0))
                g = rng_for(layer_seed(seed, "esn"))
                res.append(echo_state_contraction(W, g.standard_normal((ESN_N, 1)),
                                                  u_scale * g.standard_normal((ESN_T, 1)),
                                                  g.standard_normal(ESN_N), g.standard_normal(ESN_N), "tanh"))
            applies = all(r.sigma_max < 1 for r in res)
            rows.append({"family": name, "rule": f"{rule} = {value:g}", "input scale": u_scale,
                         "rho": np.mean([r.rho for r in res]), "sigma_max": np.mean([r.sigma_max for r in res]),
                         "bound holds": str(all(r.holds for r in res)) if applies else "n/a (sigma_max >= 1)",
                         "converged (ratio < 1e-6)": f"{sum(r.ratio < 1e-6 for r in res)}/{len(res)}",
                         "median ratio": float(np.median([r.ratio for r in res])),
                         "max transient growth": max(float(np.max(r.distance[1:] / r.distance[0])) for r in res)})
    return pd.DataFrame(rows)


def figure(df: pd.DataFrame, keep: dict, path: Path) -> None:
    fig, axes = plt.subplots(2, 3, figsize=(14, 8.5))
    N = SQUARE[-1]
    for ax, fam in zip(axes[0], ["normal", "sparse_normal", "cauchy"]):
        ev = keep[fam][0]
        a, b = mp_support(1.0)
        if fam == "cauchy":
            ax.hist(np.log10(np.maximum(ev, 1e-12)), bins=60, density=True, color="tab:red", alpha=0.6)
            ax.axvline(np.log10(b), color="k", ls="--", label="MP edge (1+1)^2 = 4")
            ax.set(xlabel="log10 eigenvalue of W W^T", title=f"cauchy, N = {N}: spectrum far outside MP")
        else:
            ax.hist(ev, bins=60, range=(0, b * 1.05), density=True, color="tab:blue", alpha=0.6, label="eig W W^T")
            x = np.linspace(1e-4, b, 400)
            ax.plot(x, mp_pdf(x, 1.0), "k-", label="Marchenko-Pastur, ratio 1")
            ks = df[(df["family"] == fam) & (df["n"] == N) & (df["m"] == N) & (df["seed"] == SEEDS[0])]["ks_mp"].iloc[0]
            ax.set(xlabel="eigenvalue of W W^T", ylim=(0, 1.2), title=f"{fam}, N = {N}: KS = {ks:.4f}")
        ax.legend(fontsize=8)
    for ax, fam in zip(axes[1][:2], ["normal", "cauchy"]):
        lam = keep[fam][1]
        ax.plot(lam.real, lam.imag, ".", ms=2, color="tab:blue" if fam == "normal" else "tab:red")
        t = np.linspace(0, 2 * math.pi, 400)
        ax.plot(np.cos(t), np.sin(t), "k-", lw=1, label="unit circle")
        ax.set_aspect("equal")
        ax.set(xlabel="Re lambda", ylabel="Im lambda", title=f"eigenvalues, {fam}, N = {N}")
        ax.legend(fontsize=8, loc="upper right")
    ax = axes[1][2]
    sq = df[df["n"] == df["m"]].groupby(["family", "kind", "n"], sort=False)["ks_mp"].mean().reset_index()
    colours = {"finite variance": "tab:blue", "infinite 4th moment": "tab:purple", "heavy tail": "tab:red",
               "non-zero mean": "tab:orange"}
    seen = set()
    for (fam, kind), g in sq.groupby(["family", "kind"], sort=False):
        ax.plot(g["n"], g["ks_mp"], "o-", ms=3, color=colours[kind], alpha=0.7,
                label=kind if kind not in seen else None)
        seen.add(kind)
    n = np.array(SQUARE, float)
    ax.plot(n, 1.63 / np.sqrt(n), "k--", label="1.63 / sqrt(n) (iid 1% critical)")
    ax.plot(n, 3 / n, "k:", label="3 / n")
    ax.set(xscale="log", yscale="log", xlabel="N (square W)", ylabel="KS(eig W W^T, MP)", title="KS distance vs size")
    ax.legend(fontsize=7)
    save_figure(fig, path, dpi=110)


def main() -> None:
    out = parser(__doc__, out="docs/results/theory").parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    df, keep = measure()
    df.to_csv(out / "scaffold_spectra.csv", index=False)
    figure(df, keep, out / "scaffold_spectra.png")
    mp = df.groupby(["kind", "family", "n", "m"], sort=False)["ks_mp"].mean().unstack(["n", "m"])
    mp.columns = [f"{n}x{m}" for n, m in mp.columns]
    mp = mp.reset_index()
    sq = df[df["n"] == df["m"]]
    circ = sq.groupby(["kind", "family", "n"], sort=False)[["ks_circ_r", "ks_circ_angle", "rho"]].mean().unstack("n")
    circ.columns = [f"{c} N={n}" for c, n in circ.columns]
    circ = circ.reset_index()
    big = df[(df["n"] == SQUARE[-1]) & (df["m"] == SQUARE[-1])]
    cols = ["sv2_max", "mp_edge", "frac_outside", "rho"]
    edge = big.groupby(["kind", "family"], sort=False)[cols].mean().reset_index()
    edge = edge.rename(columns={"sv2_max": "sigma_max^2", "mp_edge": "MP edge (1 + sqrt ratio)^2",
                                "frac_outside": "fraction outside support (+-1%)", "rho": "spectral radius"})
    rules, esn = exact_rules(), echo_states()
    seconds = time.time() - start
    fmt = {c: "{:.3g}" for c in list(mp.columns) + list(circ.columns) + list(rules.columns) + list(esn.columns)
           + list(edge.columns)}
    md = [
        "# Spectra of scaffolds and the echo-state condition (Prop. 3)",
        "",
        "Regenerate: `python experiments/theory_scaffold_spectra.py` "
        f"(reservoir_depth {__version__}, Python {platform.python_version()}, numpy {np.__version__}; {seconds:.0f} s).",
        "",
        f"W (n, m) drawn with the fan-in rule, gain 1 (entries of variance 1/m), seed layer_seed(s, 'spectra.(n, m)'), "
        f"s in {list(SEEDS)}; tables show the mean over seeds. KS = sup |F_n - F| (atoms handled from both sides). "
        "For n i.i.d. samples the 1% critical KS value is 1.63 / sqrt(n): 0.204 (64), 0.102 (256), 0.072 (512), "
        "0.051 (1024).",
        "",
        "## Marchenko-Pastur: KS(eigenvalues of W W^T, MP(ratio n/m)) (eq. 3.1)",
        "",
        markdown(mp, fmt),
        f"## Edges, {SQUARE[-1]} x {SQUARE[-1]} (the bulk law does not see a rank-one mean; the edge does)",
        "",
        markdown(edge, fmt),
        "## Circular law (eq. 3.2): KS of |lambda| vs r^2, of arg lambda vs uniform; spectral radius",
        "",
        markdown(circ, fmt),
        "## Exact rules (N = 256, rho in {0.5, 0.95, 1.5})",
        "",
        markdown(rules, {"max rel. error": "{:.2e}"}),
        f"## Echo-state contraction (eq. 3.3): tanh, N = {ESN_N}, T = {ESN_T}, {len(ESN_SEEDS)} seeds",
        "",
        "W drawn, then scaled to sigma_max(W) = 0.95 (eq. 3.3 applies) or to spectral radius rho (the ESN recipe; "
        "sigma_max is then ~2 rho for a Gaussian W). Two starts x_0, x'_0 ~ N(0, I), same inputs u_t ~ N(0, 1) "
        "through W_in ~ N(0, 1), times 'input scale' (0: the autonomous reservoir). 'ratio' = ||x_T - x'_T|| / "
        "||x_0 - x'_0||; 'transient growth' = max over t >= 1 of ||x_t - x'_t|| / ||x_0 - x'_0||.",
        "",
        markdown(esn, fmt),
        "![spectra](scaffold_spectra.png)",
        "",
    ]
    (out / "scaffold_spectra.md").write_text("\n".join(md))
    write_provenance(out, config={"families": FAMILIES, "square": SQUARE, "rect": RECT, "esn_n": ESN_N, "esn_t": ESN_T,
                                  "esn_seeds": ESN_SEEDS}, seeds=SEEDS, metrics={"seconds": seconds},
                     filename="scaffold_spectra.provenance.json")
    print(markdown(mp, fmt))
    print(markdown(circ, fmt))
    print(markdown(rules, {"max rel. error": "{:.2e}"}))
    print(markdown(esn, fmt))
    print(f"{seconds:.0f} s; wrote {out}/scaffold_spectra.{{md,csv,png}}")


if __name__ == "__main__":
    main()
