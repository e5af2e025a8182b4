"""reservoir-depth: frozen random scaffolds + LoRA adapters + beta (LottaLoRA).

    reservoir-depth run [STUDY.toml] [--out DIR] [--workers N]   sweep + report (default: the embedded digits study)
    reservoir-depth sweep [STUDY.toml] [--out DIR] [--workers N] run what is not done yet (resumable)
    reservoir-depth report [STUDY.toml] [--out DIR]    report.md, table.csv, runs.csv, rank.png, spectra.png, study.json
    reservoir-depth train --data digits --rank 4 --save DIR   one LottaLoRA run, saved as an adapter file
    reservoir-depth spectra --data digits [--adapter DIR]   PCA / task / adapter spectra
    reservoir-depth distributions                   the registered random-matrix families
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from . import __version__

DEFAULT_STUDY: dict[str, Any] = {
    "study": "digits_mlp",
    "dataset": "digits",
    "seeds": [0, 1],
    "full": True,
    "twin": True,
    "spectra": True,
    "ranks": [0, 1, 2, 4, 8, 16, 32],
    "arch": {"name": "mlp", "hidden": "small"},
    "train": {"epochs": 30, "lr": 1e-3, "batch_size": 64},
    "scaffold": {"spec": {"name": "normal", "scaling": "fan_in", "gain": 1.0}, "alpha": 16.0},
}


def _study(path: str | None) -> dict[str, Any]:
    from .sweep import load_study

    return DEFAULT_STUDY if path is None else load_study(path)


def _out(study: dict[str, Any], out: str | None) -> Path:
    return Path(out) if out else Path("results") / study["study"]


def cmd_sweep(study: dict[str, Any], out: Path, progress: bool = True, workers: int = 1) -> dict[str, int]:
    from .results import ResultsStore
    from .sweep import run_study, runs_of

    out.mkdir(parents=True, exist_ok=True)
    runs = runs_of(study)
    counts = run_study(study, ResultsStore(out / "runs.sqlite"), workers=workers, progress=progress)
    print(f"{study['study']}: {counts['done']} run, {counts['skipped']} already done or running elsewhere, "
          f"{counts['failed']} failed ({len(runs)} in the study)")
    return counts


def cmd_report(study: dict[str, Any], out: Path) -> None:
    from .report import write_report

    print(write_report(study, out))
    print(f"wrote {out}/: {', '.join(sorted(p.name for p in out.iterdir() if p.suffix != '.sqlite'))}")


def cmd_train(args: argparse.Namespace) -> None:
    from . import data, io
    from .distributions import DistributionSpec, torch_rng
    from .models import build
    from .scaffold import ScaffoldConfig, count_parameters, scaffold
    from .train import TrainConfig, train

    d = data.load(args.data)
    with torch_rng(args.seed):
        model = build("mlp", d_in=d.d_in, n_out=d.n_classes, hidden=args.hidden)
    model = scaffold(model, ScaffoldConfig(target_modules=model.scaffold_targets, trainable=model.scaffold_trainable,
                                           r=args.rank, alpha=args.alpha, rslora=args.rslora, root_seed=args.seed,
                                           spec=DistributionSpec(args.dist)))
    print(f"{d}\n{count_parameters(model)}")
    hist = train(model, d, TrainConfig(epochs=args.epochs, lr=args.lr, seed=args.seed))
    print(hist.to_frame().to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if args.save:
        print(io.save(model, args.save))


def cmd_spectra(args: argparse.Namespace) -> None:
    """Spectra of a dataset (inputs, between-class scatter, intrinsic dimension) and, given an
    adapter folder, of the saved model's layer inputs and its adapters s B A."""
    import pandas as pd

    from . import data, io
    from .report import dataset_rows
    from .report import markdown
    from .spectra import ActivationSpectra, WeightSpectra

    d = data.load(args.data)
    rows, _ = dataset_rows(d, d.X_train)
    if args.adapter:
        model = io.load(args.adapter)
        X = d.X_train[:args.rows]
        for name, sp in ActivationSpectra(layers=args.layers).fit(model, X).spectra_.items():
            rows.append({"spectrum": "layer inputs", "layer": name, **sp.summary()})
        for name, sp in WeightSpectra("adapter").fit(model).spectra_.items():
            rows.append({"spectrum": "adapter s B A", "layer": name, **sp.summary()})
    table = pd.DataFrame(rows)
    print(f"{d}\n")
    print(markdown(table, {c: "{:.2f}" for c in table.columns}))
    if args.csv:
        table.to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")


def cmd_distributions() -> None:
    from .distributions import DISTRIBUTIONS

    for name, f in sorted(DISTRIBUTIONS.items()):
        params = ", ".join(f"{k}={v}" for k, v in f.defaults.items())
        print(f"{name:18s} scaling={f.default_scaling:16s} {params:40s} {f.doc}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="reservoir-depth", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"reservoir-depth {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("run", "sweep", "report"):
        s = sub.add_parser(name)
        s.add_argument("study", nargs="?", help="a study TOML (see experiments/); default: the embedded digits study")
        s.add_argument("--out", help="output folder (default results/<study>)")
        s.add_argument("--no-progress", action="store_true")
        if name != "report":
            s.add_argument("--workers", type=int, default=1, help="processes sharing the results store")
    t = sub.add_parser("train")
    t.add_argument("--data", default="digits")
    t.add_argument("--hidden", default="small")
    t.add_argument("--rank", type=int, default=4)
    t.add_argument("--alpha", type=float, default=16.0)
    t.add_argument("--rslora", action="store_true")
    t.add_argument("--dist", default="normal")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--save")
    sp = sub.add_parser("spectra")
    sp.add_argument("--data", default="digits")
    sp.add_argument("--adapter", help="an adapter folder written by save / train --save")
    sp.add_argument("--layers", nargs="*", help="layer names or regexes (default: the scaffold layers)")
    sp.add_argument("--rows", type=int, default=10000, help="training inputs used for activation spectra")
    sp.add_argument("--csv")
    sub.add_parser("distributions")
    args = p.parse_args(argv)
    try:
        if args.cmd in ("run", "sweep", "report"):
            study = _study(args.study)
            out = _out(study, args.out)
            if args.cmd in ("run", "sweep"):
                cmd_sweep(study, out, progress=not args.no_progress, workers=args.workers)
            if args.cmd in ("run", "report"):
                cmd_report(study, out)
        elif args.cmd == "train":
            cmd_train(args)
        elif args.cmd == "spectra":
            cmd_spectra(args)
        else:
            cmd_distributions()
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"reservoir-depth: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
