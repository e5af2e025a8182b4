"""reservoir-depth: frozen random scaffolds + LoRA adapters + beta (LottaLoRA).

    reservoir-depth run [STUDY.toml] [--out DIR] [--workers N]   sweep + report (default: the digits study)
    reservoir-depth sweep [STUDY.toml] [--out DIR] [--workers N] [--retry-failed]   run what is not done yet
    reservoir-depth run STUDY.toml --backend ray [--address HOST:PORT]   one Ray task per run (pip install -e '.[ray]')
    reservoir-depth report [STUDY.toml] [--out DIR]    report.md, table.csv, runs.csv, rank.png, spectra.*, study.json
    reservoir-depth train --data digits --arch mlp --rank 4 --save DIR   one LottaLoRA run, saved as an adapter file
    ... train / run / sweep --log-dir DIR   TensorBoard events (pip install tensorboard): tensorboard --logdir DIR
    reservoir-depth spectra --data digits [--adapter DIR] [--model FILE.py:FACTORY]   PCA / task / layer / adapter spectra
    reservoir-depth predict [STUDY.toml] [--measure M] [--scale C]   r* predicted at init, per layer and tolerance
    reservoir-depth distributions                   the registered random-matrix families

Exit status: 0 on success, 1 when runs failed or a report has no finished run, 2 on bad input, 130 on Ctrl-C
(finished runs are kept: rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import inspect
import json
import re
import sys
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd
from torch import nn

from . import __version__, data, distributed, io, ray_sweep
from .checks import check_folder, positive_int, thread_count
from .data import DATASETS
from .distributions import DISTRIBUTIONS, DistributionSpec
from .models import ARCHITECTURES, SIZES, build, scaffold_defaults
from .report import NoResults, markdown, summary, write_report
from .results import ResultsStore
from .scaffold import ScaffoldConfig, count_parameters, scaffold
from .spectra import ActivationSpectra, WeightSpectra
from .predict import CALIBRATION, MEASURE_OF, GradientSpectrum, per_tolerance, predict_study
from .study import Study
from .sweep import backfill, check_study, dataset_rows, run_study
from .train import TensorBoardLog, TrainConfig, train

FAILED = 1  # exit status: runs failed, or nothing to report
BAD_INPUT = 2
INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT


class RunsFailed(Exception):
    """Some runs of the study failed (the message says which kinds and how to retry)."""


def _study(path: str | None) -> Study:
    return Study.default() if path is None else Study.load(path)


def _out(study: Study, out: str | None) -> Path:
    path = Path(out) if out else Path("results") / study.study
    check_folder(path, "--out")
    return path


def cmd_sweep(study: Study, out: Path, progress: bool = True, workers: int = 1, retry_failed: bool = False,
              backend: str = "local", address: str | None = None, cpus: float | None = None,
              gpus: float | None = None, log_dir: str | None = None, threads: int = 1):
    """Run what is not done yet, record what old runs lack (sweep.backfill); RunsFailed if any run failed.
    ``backend="ray"`` sends each run to a Ray cluster (ray_sweep.run_study_ray). ``log_dir``: each run's
    TensorBoard events under log_dir/<study>/<method>-r<r>-seed<seed>-<id> (sweep.log_dir_of; local backend). ``threads``: torch threads per run
    (local backend)."""
    check_study(study)  # a [scaffold] that would fail every run is refused before the store is created
    if log_dir is not None:
        if backend == "ray":
            raise ValueError("--log-dir is for the local backend; Ray runs its tasks on other machines")
        TensorBoardLog.check()  # a missing tensorboard is reported before any run starts
        check_folder(log_dir, "--log-dir")
    if backend == "ray":
        ray_sweep._ray()  # a missing ray is reported before the store is created
        if workers != 1:
            raise ValueError(f"--workers {workers} is for the local backend; Ray schedules the runs "
                             f"(set --cpus-per-run / --gpus-per-run instead)")
        store = ResultsStore(out / "runs.sqlite", create=True)
        counts = ray_sweep.run_study_ray(study, store, address=address, cpus=cpus, gpus=gpus,
                                         retry_failed=retry_failed, progress=progress)
    else:
        if address is not None:
            raise ValueError("--address needs --backend ray")
        store = ResultsStore(out / "runs.sqlite", create=True)
        counts = run_study(study, store, workers=workers, progress=progress, retry_failed=retry_failed,
                           log_dir=log_dir, threads=threads)
    print(f"{study.study}: {counts.summary()}")
    added, problems = backfill(study, store)
    if added:
        print(f"{study.study}: recorded file sizes / spectra at init / the null model for {added} run(s) stored before they were recorded")
    if problems:
        print(f"{study.study}: could not record them for {len(problems)} older run(s) (their reports say 'not recorded'): "
              f"{problems[0]}")
    if counts.failed or counts.failed_before:
        hint = " (earlier failures are retried with --retry-failed)" if counts.failed_before else ""
        raise RunsFailed(f"{counts.failed + counts.failed_before} run(s) of {study.study!r} failed{hint}; "
                         f"errors and tracebacks are in {store.path}")
    return counts


def cmd_report(study: Study, out: Path) -> None:
    print(summary(write_report(study, out), out))
    print(f"wrote {out}/: {', '.join(sorted(p.name for p in out.iterdir() if p.suffix not in ('.sqlite', '.sqlite-wal', '.sqlite-shm')))}")


def _hidden(text: str) -> str | list[int]:
    """--hidden: a size name, or comma-separated widths."""
    if text in SIZES:
        return text
    try:
        widths = [int(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a size ({', '.join(SIZES)}) nor comma-separated widths")
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"widths must be >= 1, got {text!r}")
    return widths


def _keyword(flag: str, identifier: bool = True):
    """KEY=VALUE for --arch-kw / --data-kw (KEY an identifier) or a per-layer setting such as --max-rank
    (KEY a module-name pattern, split at the last '='): VALUE read as JSON where it parses (8, [64, 32], true),
    else a str."""
    def parse(text: str) -> tuple[str, object]:
        key, eq, value = text.partition("=") if identifier else text.rpartition("=")
        if not eq or not (key.isidentifier() if identifier else key):
            raise argparse.ArgumentTypeError(f"{flag} takes {'KEY' if identifier else 'PATTERN'}=VALUE, got {text!r}")
        try:
            return key, json.loads(value)
        except json.JSONDecodeError:
            return key, value
    return parse


def field_help(cls: type) -> dict[str, str]:
    """Each field's help text from a settings dataclass's docstring: the paragraphs "    name: text" or
    "    a, b: text" (continued by deeper-indented lines), whitespace joined."""
    out: dict[str, str] = {}
    names: list[str] = []
    for line in inspect.getdoc(cls).splitlines():
        head, colon, text = line.partition(": ")
        keys = [k.strip() for k in head.split(",")]
        if colon and not line.startswith(" ") and all(k.isidentifier() for k in keys):
            names = keys
            for k in names:
                out[k] = text.strip()
        elif line.startswith(" ") and names:
            for k in names:
                out[k] += " " + line.strip()
        else:
            names = []
    return out


def _json_or_str(text: str) -> object:
    """A flag's VALUE as JSON where it parses (8, [64, 32], true, null), else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


SETTINGS_FLAGS = {"r": "--rank", "target_modules": "--target", "spec": "--dist"}  # flag names older than the fields


def add_settings_flags(p: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> list[str]:
    """One flag per field of the settings dataclass ``cls`` (TrainConfig, ScaffoldConfig), with the field's
    default and the first sentence of its docstring entry as help, so a new field reaches the command line by itself: a bool gives
    --name / --no-name, a tuple of patterns takes several values, a mapping KEY=VALUE (repeatable), a
    DistributionSpec a family name or JSON; values in ``cls.CHOICES`` are choices. Returns the field names."""
    helps = field_help(cls)
    choices = getattr(cls, "CHOICES", {})
    g = p.add_argument_group(f"{cls.__name__} (one flag per field)")
    names = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag = SETTINGS_FLAGS.get(f.name, "--" + f.name.replace("_", "-"))
        kw: dict = {"dest": f.name, "default": default, "help": re.split(r"(?<=\.)\s+(?=[A-Z])", helps.get(f.name, ""))[0]}
        if isinstance(default, bool):
            kw["action"] = argparse.BooleanOptionalAction
        elif isinstance(default, DistributionSpec):  # a family name or a spec as JSON, read by as_spec
            kw.update(type=_json_or_str, metavar="NAME|JSON")
        elif isinstance(default, (tuple, list)):
            kw.update(nargs="+", metavar="PATTERN")
        elif isinstance(default, Mapping):
            kw.update(type=_keyword(flag, identifier=False), action="append", metavar="PATTERN=VALUE", default=[])
        elif f.name in choices:
            kw.update(choices=[c for c in choices[f.name] if c is not None])
        elif f.name in getattr(cls, "COUNTS", ()):
            kw.update(type=positive_int)
        elif default is None:
            kw.update(type=str if f.name.endswith("_dir") else _json_or_str, metavar="DIR" if f.name.endswith("_dir") else None)
        else:
            kw.update(type=type(default))
        g.add_argument(flag, **kw)
        names.append(f.name)
    return names


def _flag_default(cls: type, name: str) -> object:
    """What the flag of field ``name`` holds when it is not given (add_settings_flags)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return [] if isinstance(default, Mapping) else default


def settings_of(args: argparse.Namespace, cls: type, names: Sequence[str], **fixed) -> object:
    """``cls`` from the parsed flags of its fields ``names`` (a mapping's KEY=VALUE pairs as a dict), and
    ``fixed`` values."""
    mappings = {f.name for f in dataclasses.fields(cls) if f.default_factory is dict}
    return cls(**{**{n: dict(getattr(args, n)) if n in mappings else getattr(args, n) for n in names}, **fixed})


def _factory(text: str):
    """--model MODULE:CALLABLE or FILE.py:CALLABLE -> the callable (which returns an nn.Module)."""
    where, colon, attr = text.rpartition(":")
    if not colon or not where or not attr:
        raise ValueError(f"--model takes MODULE:CALLABLE or FILE.py:CALLABLE, got {text!r}")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise FileNotFoundError(f"--model: no file {path}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    if not hasattr(module, attr):
        raise ValueError(f"--model: {where} has no attribute {attr!r}")
    factory = getattr(module, attr)
    if not callable(factory):
        raise ValueError(f"--model: {where}:{attr} is not callable (a function returning an nn.Module is needed)")
    return factory


def _user_model(text: str):
    model = _factory(text)()
    if not isinstance(model, nn.Module):
        raise ValueError(f"--model: {text}() returned {type(model).__name__}, not a torch nn.Module")
    return model


def cmd_train(args: argparse.Namespace) -> None:
    """One LottaLoRA run; under ``torchrun --nproc-per-node N -m reservoir_depth train ...`` every
    process regenerates the scaffold and trains on its share of each batch (distributed.py)."""
    arch: dict = dict(args.arch_kw)
    if args.hidden is not None:
        if args.arch != "mlp":
            raise ValueError(f"--hidden applies to --arch mlp only, got --arch {args.arch}")
        arch["hidden"] = args.hidden
    elif args.arch == "mlp":
        arch.setdefault("hidden", "small")
    tc = settings_of(args, TrainConfig, args.train_fields)
    if args.save and distributed.is_main():  # rank 0 alone writes
        io.check_writable(args.save)  # before the first epoch: a run is not trained to be lost
    d = data.load(args.data, **dict(args.data_kw))
    try:
        model = build(args.arch, seed=args.seed, d_in=d.d_in, n_out=d.n_out, **arch)
    except TypeError as e:  # an --arch-kw the family does not take
        raise ValueError(f"--arch {args.arch}: {e}") from None
    declared = scaffold_defaults(model)  # the family's targets, trainable extras, specs and caps, unless given
    given = {n for n in args.scaffold_fields if getattr(args, n) != _flag_default(ScaffoldConfig, n)}
    model = scaffold(model, settings_of(args, ScaffoldConfig, args.scaffold_fields, root_seed=args.seed,
                                        **{k: v for k, v in declared.items() if k not in given}))
    main = distributed.is_main()  # under torchrun, rank 0 alone prints and writes
    if main:
        print(f"{d}\n{count_parameters(model)}")
    try:
        hist = train(model, d, tc)
        if main:
            print(hist.to_frame().to_string(index=False, float_format=lambda v: f"{v:.4g}"))  # 2.1e-07, not 0.0000
            if args.save:
                print(io.save(model, args.save))
                _record_data(args.save, args.data, dict(args.data_kw))
    except BaseException:
        distributed.finish(wait=False)
        raise
    distributed.finish()  # every rank waits for rank 0's writes, then the group goes down


DATA_FILE = "data.json"  # in an adapter folder written by `train --save`: the data set it was trained on


def _record_data(folder: str, name: str, kwargs: dict) -> None:
    (Path(folder) / DATA_FILE).write_text(json.dumps({"data": name, "data_kw": kwargs}, sort_keys=True) + "\n")


def _data_of(args: argparse.Namespace) -> tuple[str, dict]:
    """spectra's data set: --data / --data-kw, else what the adapter folder records (`train --save`), else
    digits; a --data that differs from the recorded one is refused, naming both."""
    given = (args.data, dict(args.data_kw)) if args.data is not None else None
    path = Path(args.adapter) / DATA_FILE if args.adapter else None
    if path is None or not path.is_file():
        return given or ("digits", dict(args.data_kw))
    rec = json.loads(path.read_text())
    recorded = (rec["data"], rec["data_kw"])
    if given is not None and given[0] != recorded[0]:
        raise ValueError(f"--adapter {args.adapter} was trained on {recorded[0]!r} (recorded in {path}), not on "
                         f"--data {given[0]!r}; leave --data out to use {recorded[0]!r}")
    return recorded if given is None else given


def cmd_spectra(args: argparse.Namespace) -> None:
    """Spectra of a dataset (inputs, between-class scatter, intrinsic dimension) and, given an
    adapter folder, of the saved model's layer inputs and its adapters s B A."""
    name, kwargs = _data_of(args)
    d = data.load(name, **kwargs)
    rows, _ = dataset_rows(d, d.X_train)
    model = _user_model(args.model) if args.model else None
    if args.adapter:
        model = io.load(args.adapter, model=model)
    if model is not None:
        X = d.X_train[:args.rows]
        for name, sp in ActivationSpectra(layers=args.layers).fit(model, X).spectra_.items():
            rows.append({"spectrum": "layer inputs", "layer": name, **sp.summary()})
    if args.adapter:
        for name, sp in WeightSpectra("adapter").fit(model).spectra_.items():
            rows.append({"spectrum": "adapter s B A", "layer": name, **sp.summary()})
    table = pd.DataFrame(rows)
    print(f"{d}\n")
    print(markdown(table, {c: "{:.2f}" for c in table.columns}))
    if args.csv:
        table.to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")


def cmd_predict(args: argparse.Namespace) -> None:
    """r* predicted at init (predict.predict_study: the first gradient's spectrum per target weight)."""
    study = _study(args.study)
    scale = 1.0 if args.scale is None else args.scale
    rows, r, seconds = predict_study(study, GradientSpectrum(measure=args.measure), scale=scale)
    if args.scale is None and args.measure in CALIBRATION:  # per tolerance, each with its own calibration
        print(markdown(rows.drop(columns=["predicted r*"])))
        print(markdown(per_tolerance(study, r, args.measure), {"scale": "{:.3g}", "predicted r*": "{:.3g}"}))
        print(f"predicted r* of {study.study!r} per tolerance: the max over layers of {args.measure} ({r:.3g}) "
              f"x each tolerance's calibration (docs/results/predict/calibration.csv), in {seconds:.2f} s; "
              "nothing trained")
        return
    print(markdown(rows))
    print(f"predicted r* (headline tolerance of {study.study!r}, max over layers): {r:.3g}, "
          f"{args.measure} x {scale:g}, in {seconds:.2f} s; nothing trained")


def cmd_distributions() -> None:
    for name, f in sorted(DISTRIBUTIONS.items()):
        params = ", ".join(f"{k}={v}" for k, v in f.defaults.items())
        print(f"{name:18s} scaling={f.default_scaling:16s} {params:40s} {f.doc}")


def parser() -> argparse.ArgumentParser:
    D = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(prog="reservoir-depth", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"reservoir-depth {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    helps = {"run": "sweep, then report", "sweep": "run every run not done yet (resumable)",
             "report": "render the report from the results store (never trains)"}
    for name, text in helps.items():
        s = sub.add_parser(name, help=text, description=text, formatter_class=D)
        s.add_argument("study", nargs="?",
                       help="a study TOML (see experiments/); default: the digits study shipped with the package "
                            "(reservoir_depth/studies/digits_mlp.toml)")
        s.add_argument("--out", help="output folder holding runs.sqlite and the report (default: results/<study>)")
        if name != "report":
            s.add_argument("--no-progress", action="store_true", help="no progress bars")
            s.add_argument("--workers", type=positive_int, default=1,
                           help="processes sharing the results store (as many as idle cores fills the machine)")
            s.add_argument("--threads", type=thread_count, default=1,
                           help="torch threads per run (local backend; one thread keeps a sweep fast on busy cores)")
            s.add_argument("--retry-failed", action="store_true",
                           help="also rerun runs that failed in an earlier sweep (default: leave them failed)")
            s.add_argument("--backend", choices=("local", "ray"), default="local",
                           help="local: --workers processes on this machine; ray: one Ray task per run, results "
                                "written here by this process (pip install -e '.[ray]')")
            s.add_argument("--address", help="Ray cluster address (`ray start --head` prints it; 'auto' finds a "
                                             "local one); default: start a local Ray instance for this sweep")
            s.add_argument("--cpus-per-run", type=float, default=None,
                           help="CPUs Ray reserves for each run (default: the study's [resources] cpus, else 1)")
            s.add_argument("--gpus-per-run", type=float, default=None,
                           help="GPUs Ray reserves for each run (default: the study's [resources] gpus, else 0)")
            s.add_argument("--log-dir", metavar="DIR", default=None,
                           help="write each run's TensorBoard events (per-step loss, epoch metrics, beta, spectra) "
                                "under DIR/<study>/<method>-r<r>-seed<seed>-<id>, with its hyperparameters; needs `pip install tensorboard` "
                                "(default: no logging)%(default).0s")
    t = sub.add_parser("train", help="train one LottaLoRA model and optionally save its adapter file",
                       description="Train one LottaLoRA model (frozen scaffold + A, B, beta, trainable head).",
                       formatter_class=D)
    t.add_argument("--data", default="digits", choices=sorted(DATASETS), help="dataset")
    t.add_argument("--arch", default="mlp", choices=sorted(ARCHITECTURES), help="architecture family")
    t.add_argument("--hidden", type=_hidden, default=None,
                   help=f"MLP hidden widths: a size ({', '.join(SIZES)}) or comma-separated widths; "
                        "--arch mlp only (default: small)%(default).0s")
    t.add_argument("--arch-kw", metavar="KEY=VALUE", type=_keyword("--arch-kw"), action="append", default=[],
                   help="a keyword of the architecture family (repeatable; VALUE read as JSON where it parses), "
                        "e.g. --arch-kw size=3m%(default).0s")
    t.add_argument("--data-kw", metavar="KEY=VALUE", type=_keyword("--data-kw"), action="append", default=[],
                   help="a keyword of the dataset loader (repeatable), e.g. --data-kw n_train=512%(default).0s")
    t.add_argument("--save", metavar="DIR",
                   help="save the adapter file to DIR (adapter.safetensors + adapter.json)%(default).0s")
    t.set_defaults(train_fields=add_settings_flags(t, TrainConfig),
                   scaffold_fields=add_settings_flags(t, ScaffoldConfig, skip=("root_seed",)))
    text = "PCA / task / adapter spectra of a dataset and a saved model"
    sp = sub.add_parser("spectra", help=text, formatter_class=D,
                        description=f"{text}: the data set's inputs, between-class scatter (or Cov(x, y)) and "
                                    "intrinsic dimension; with --adapter or --model, each layer's inputs; with "
                                    "--adapter, each adapter s B A.")
    sp.add_argument("--data", default=None, choices=sorted(DATASETS),
                    help="dataset (default: the one the --adapter folder was trained on, else digits)%(default).0s")
    sp.add_argument("--data-kw", metavar="KEY=VALUE", type=_keyword("--data-kw"), action="append", default=[],
                    help="a keyword of the dataset loader (repeatable)%(default).0s")
    sp.add_argument("--adapter", help="an adapter folder written by save / train --save")
    sp.add_argument("--model", metavar="MODULE:CALLABLE",
                    help="your own model: a function (in an importable module, or FILE.py:NAME) returning an "
                         "nn.Module; its layer inputs' spectra are measured. With --adapter, the adapter file is "
                         "loaded into it (for a model the file records no architecture of)")
    sp.add_argument("--layers", nargs="*", help="layer names or regexes (default: the scaffold layers)")
    sp.add_argument("--rows", type=positive_int, default=10000, help="training inputs used for activation spectra")
    sp.add_argument("--csv", help="also write the table to this CSV file")
    pr = sub.add_parser("predict", help="predict r* at init, per layer, before anything trains", formatter_class=D)
    pr.add_argument("study", nargs="?", help="a study TOML (default: the digits study)")
    pr.add_argument("--measure", choices=list(MEASURE_OF), default="participation_ratio")
    pr.add_argument("--scale", type=float, default=None,
                    help="one calibration factor for the headline tolerance (default: the committed calibration "
                         "of the measure at each tolerance, predict.CALIBRATION; 1 for an uncalibrated measure)")
    sub.add_parser("distributions", help="list the registered random-matrix families",
                   description="List the registered random-matrix families of W_seed: name, default scaling rule, "
                               "parameters with their defaults, and what each draws (use one with train --dist).")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.cmd in ("run", "sweep", "report"):
            study = _study(args.study)
            out = _out(study, args.out)
            failed = None
            if args.cmd in ("run", "sweep"):
                try:
                    cmd_sweep(study, out, progress=not args.no_progress, workers=args.workers,
                              retry_failed=args.retry_failed, backend=args.backend, address=args.address,
                              cpus=args.cpus_per_run, gpus=args.gpus_per_run, log_dir=args.log_dir,
                              threads=args.threads)
                except RunsFailed as e:
                    failed = e
                    print(f"reservoir-depth: {e}", file=sys.stderr)
            if args.cmd in ("run", "report"):
                cmd_report(study, out)  # NoResults says what happened when no run finished
            if failed:
                return FAILED
        elif args.cmd == "train":
            cmd_train(args)
        elif args.cmd == "spectra":
            cmd_spectra(args)
        elif args.cmd == "predict":
            cmd_predict(args)
        else:
            cmd_distributions()
    except NoResults as e:
        print(f"reservoir-depth: {e}", file=sys.stderr)
        return FAILED
    except KeyboardInterrupt:  # Ctrl-C: every finished run is already in the store; a lease left behind expires
        print("reservoir-depth: interrupted; finished runs are kept, rerun the same command to resume",
              file=sys.stderr)
        return INTERRUPTED
    except (ValueError, FileNotFoundError, ImportError, FloatingPointError) as e:  # FloatingPointError: a run
        print(f"reservoir-depth: error: {e}", file=sys.stderr)                    # diverged (its lr, mostly)
        return BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
