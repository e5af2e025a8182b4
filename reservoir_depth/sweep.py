"""Grids of runs: full training, LottaLoRA at each rank, over seeds, into a ResultsStore.

A study is a TOML file (see experiments/). Each run's resolved config is a
plain dict; its hash is the run id, so rerunning a study skips finished runs.

Methods: 'full' trains every weight from the architecture's usual init; 'twin'
trains every weight starting from the scaffold (W = W_seed, the fully trained
twin whose Delta W spectra the study compares with r*); 'lotta' trains A, B,
beta and the declared extras on the frozen scaffold.
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
import json
import multiprocessing
import os
import re
import sys
import time
import threading
import traceback
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__, data, io
from .models import build, scaffold_defaults
from .results import Columns, ResultsStore, SweepCounts
from .scaffold import ALL_LINEAR, ScaffoldConfig, Scaffolded, merge, scaffold
from .spectra import ActivationSpectra, IntrinsicDimension, TaskSpectrum, WeightSpectra
from .study import Study, StudyError
from .rank import adaptive_search
from .adapter_format import library_versions
from .run import Run
from .tasks import metric_of, stored_metrics, task_of
from .group import groups, train_group
from .train import TensorBoardLog, TrainConfig, solved_readout, train


def build_model(run: Run, d: data.Dataset):
    """The run's model: plain for 'full', the merged scaffold for 'twin', scaffolded for 'lotta'."""
    arch = dict(run.arch)
    name = arch.pop("name")
    model = build(name, seed=run.seed, d_in=d.d_in, n_out=d.n_out, **arch)
    if run.method in ("lotta", "twin"):
        cfg = run.scaffold_config()
        built = ScaffoldConfig(**{**scaffold_defaults(model), **run.scaffold, "root_seed": run.seed})
        if built != cfg:  # the study's view of the family (run.declared_scaffold) missed this instance's
            raise ValueError(f"architecture {run.arch!r} declares {scaffold_defaults(model)} when built for "
                             f"{d.name!r} (d_in={d.d_in}, n_out={d.n_out}), but the run's scaffold config was "
                             f"resolved as {cfg.to_dict()}; run.declared_scaffold cannot read this family's "
                             f"declarations from instances of other sizes")
        model = scaffold(model, cfg)
    if run.method == "twin":
        model = merge(model)  # W = beta W_seed + s B A = W_seed at init, every weight trainable
    return model


def check_study(study: Study | Mapping[str, Any]) -> None:
    """Refuse, before any run (`reservoir-depth run` / `sweep` call it first; so can a caller of run_study),
    a [scaffold] table that would fail every run: the study's model is built once
    (on the meta device; its data set loaded for d_in and n_out) and scaffolded with the study's config at
    r = 0 with every cap a run can get (a rank too large for a layer stays one run's failure). A StudyError names
    the file and the key (a target_modules, max_rank or rank_caps pattern that matches nothing, a module no layer
    type handles, a ridge readout the task or the model cannot take, ...)."""
    study = Study.of(study)
    runs = study.runs()
    run = next((r for r in runs if r.method in ("lotta", "twin")), None)
    if run is None:
        run = next(iter(runs), None)
        if run is None:
            return
    else:
        caps = {**run.scaffold_config().max_rank, **study.rank_caps}  # every cap a run can get, none binding at 0
        run = Run(**{**run.__dict__, "scaffold": {**run.scaffold, "r": 0, **({"max_rank": caps} if caps else {})}})
    try:
        d = run.data()
    except (FileNotFoundError, ImportError):  # a data set not installed here: each run records it, with the fix
        return
    try:
        try:
            with torch.device("meta"):
                model = build_model(run, d)
        except (RuntimeError, NotImplementedError):  # a family that cannot be built without storage
            model = build_model(run, d)
    except (ValueError, TypeError) as e:
        table = "rank_caps" if study.rank_caps and "max_rank patterns" in str(e) else "[scaffold]"
        raise StudyError(f"{study.source}: {table} {e} (in {run.arch['name']!r} built for {d.name!r})") from None
    try:
        solved_readout(model, task_of(d.task), TrainConfig(**{**run.train, "seed": run.seed}))
    except ValueError as e:
        raise StudyError(f"{study.source}: [train] {e} (in {run.arch['name']!r} built for {d.name!r})") from None


def log_dir_of(run: Run, log_dir: str | os.PathLike) -> Path:
    """Where a run's TensorBoard events go: ``log_dir/<study>/<method>-r<r>-seed<seed>-<id>`` (no ``-r<r>``
    for 'full'; ``<id>``: the run id's first 8 characters, which tell apart runs differing elsewhere)."""
    rank = f"-r{run.scaffold_config().r}" if run.method in ("lotta", "twin") else ""
    return Path(log_dir) / run.study / f"{run.method}{rank}-seed{run.seed}-{run.run_id[:8]}"


def environment() -> dict[str, Any]:
    """What decides a run's numbers besides its config and seed, recorded with every run so that two stores
    holding the same config and seed either agree or say why: torch's intra-op threads (a reduction's
    order, so its rounding, depends on it), the deterministic-algorithms flag, the BLAS library, and the
    library versions (torch, numpy, scipy, ...)."""
    blas = torch.__config__.show()
    kind = next((k for k in ("mkl", "openblas", "accelerate") if k in blas.lower()), "other")
    env = {"threads": torch.get_num_threads(), "deterministic": torch.are_deterministic_algorithms_enabled(),
           "blas": kind, **library_versions()}
    return {Columns.ENV + k: v for k, v in env.items()}


def execute(run: Run, progress: bool = False,
            log_dir: str | os.PathLike | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train one run; returns (metrics, history), including everything its report needs
    that training does not measure (``records``: file sizes, spectra at init, the data set's spectra).
    With ``log_dir``, the run is written as TensorBoard events under ``log_dir_of(run, log_dir)``
    (train.TensorBoardLog), with its spectra measures (``spectra/<measure>``) when it measures them;
    the run's config and id do not change."""
    if "log_dir" in run.train:  # one folder for every run of a study would mix their events
        raise ValueError(f"study {run.study!r}: log_dir is not a [train] setting of a study; pass --log-dir DIR "
                         f"(or run_study(..., log_dir=DIR)), which logs each run under DIR/<study>/<method>-r<r>-seed<seed>-<id>")
    d, model, init, rec, logs = _prepared(run, log_dir)
    hist = train(model, d, TrainConfig(**{**run.train, "seed": run.seed, "progress": progress, **logs}),
                 hparams={"study": run.study, "method": run.method, "run_id": run.run_id, "dataset": run.dataset,
                          "arch": dict(run.arch)})
    return _finished(run, model, d, init, rec, logs, hist)


def _prepared(run: Run, log_dir: str | os.PathLike | None = None):
    """A run's data, model, the model at init (the twin's spectra need it), records and log folder."""
    d = run.data()
    model = build_model(run, d)
    init = copy.deepcopy(model) if run.spectra and run.method == "twin" else None
    rec = records(run, model, d)
    logs = {} if log_dir is None else {"log_dir": str(log_dir_of(run, log_dir))}
    return d, model, init, rec, logs


def _finished(run: Run, model, d: data.Dataset, init, rec, logs, hist) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics, history) of a trained run: its final epoch, records and spectra (see execute)."""
    rec_metrics, rec_history = rec
    final = hist.final
    metrics = {k: final[k] for k in stored_metrics() if k in final}
    if "test_acc" in final:
        metrics["best_test_acc"] = max(e["test_acc"] for e in hist.epochs)
    metrics.update({"trainable": hist.trainable, "total": hist.total,
                    "trainable_fraction": hist.trainable / hist.total, "device": hist.device,
                    **{k: v for k, v in final.items() if k.startswith("beta/")}, **rec_metrics, **environment()})
    history = {**hist.to_dict(), **rec_history}
    if run.spectra:
        measures, eigenvalues = measure_spectra(run, model, d, init)
        metrics.update(measures)
        history["spectra"] = eigenvalues
        if logs:
            with TensorBoardLog(logs["log_dir"]) as log:  # at init: step 0; trained: the last epoch
                log.scalars("spectra", {k: v for k, v in rec_metrics.items() if k.startswith("init/")}, 0)
                log.scalars("spectra", measures, final["epoch"])
    return metrics, history


def execute_group(runs: Sequence[Run]) -> list[tuple[dict[str, Any], dict[str, Any], float] | BaseException]:
    """Train ``runs`` (one group.group_key) together (group.train_group); for each run (metrics, history,
    seconds: its share of the group's time) or the exception it raised. A run that fails while it is
    prepared fails alone; when the group as a whole cannot train, each run is executed alone. Each
    history records the group under "group" (its run ids and seconds)."""
    t0 = time.perf_counter()
    out: list[Any] = [None] * len(runs)
    ready = []
    for i, run in enumerate(runs):
        try:
            ready.append((i, run, *_prepared(run)))
        except Exception as e:  # this run's own failure (a rank too large, ...): the others go on
            out[i] = e
    configs = [TrainConfig(**{**run.train, "seed": run.seed, "progress": False}) for _, run, *_ in ready]
    try:
        hists = train_group([p[3] for p in ready], ready[0][2], configs) if ready else []
    except ValueError:  # not a group after all (a model the group cannot stack): one at a time
        hists = None
    ids = [run.run_id for _, run, *_ in ready]
    for k, (i, run, d, model, init, rec, logs) in enumerate(ready):
        try:
            if hists is None:
                metrics, history = execute(run)
            elif isinstance(hists[k], BaseException):
                raise hists[k]
            else:
                metrics, history = _finished(run, model, d, init, rec, logs, hists[k])
                history["group"] = {"runs": ids}
            out[i] = (metrics, history)
        except Exception as e:
            out[i] = e
    seconds = (time.perf_counter() - t0) / len(runs)
    return [o if isinstance(o, BaseException) else (*o, seconds) for o in out]


RECORDED = ("n_test", Columns.ADAPTER_BYTES)  # metrics every run written since records() existed carries


def records(run: Run, model, d: data.Dataset) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a report needs besides the training curve, measured on the run's model before training
    (so a report never rebuilds a model): n_test; for LottaLoRA, the adapter file's bytes and a
    dense checkpoint's (io.save); with spectra, the activation spectra at init (metrics
    ``init/{layer}/{measure}``, eigenvalues in history["spectra_init"]) and the data set's own
    spectra (history["dataset"]). Returns (metrics, history entries)."""
    metrics: dict[str, Any] = {"n_test": int(len(d.X_test)), **nulls(d),
                               **{Columns.BAYES + k: v for k, v in (getattr(d, "bayes", None) or {}).items()}}
    history: dict[str, Any] = {}
    if run.method == "lotta":
        with tempfile.TemporaryDirectory() as tmp:
            rep = io.save(model, tmp, arch=dict(run.arch))
        metrics.update({Columns.ADAPTER_BYTES: rep.bytes, Columns.DENSE_BYTES: rep.full_bytes})
    if run.spectra:
        est = ActivationSpectra(layers=spectra_layers(run, d)).fit(model, d.X_train[:SPECTRA_ROWS])
        for row in est.frame().to_dict("records"):
            metrics.update({Columns.spectrum("init", row["layer"], k): v for k, v in row.items()
                            if k not in ("layer", "n")})
        history["spectra_init"] = {name: sp.eigenvalues.tolist() for name, sp in est.spectra_.items()}
        history["dataset"] = copy.deepcopy(_dataset_spectra(d))
    return metrics, history


def nulls(d: data.Dataset) -> dict[str, float]:
    """The null model's test metrics (tasks.Task.null: the best constant predictor), as null/<metric>."""
    return {Columns.NULL + k: v for k, v in task_of(d.task).null(d).items()}


_DATASET_SPECTRA: dict[int, tuple[data.Dataset, dict[str, Any]]] = {}


def _dataset_spectra(d: data.Dataset) -> dict[str, Any]:
    """history["dataset"] of every run on ``d``: dataset_rows of its first SPECTRA_ROWS training inputs,
    computed once per data set object in this process (run.data() caches the object; the measures are
    deterministic, so each run records the same numbers it would compute itself)."""
    hit = _DATASET_SPECTRA.get(id(d))
    if hit is None or hit[0] is not d:
        rows, inputs = dataset_rows(d, d.X_train[:SPECTRA_ROWS])
        if len(_DATASET_SPECTRA) >= 8:
            _DATASET_SPECTRA.clear()
        hit = _DATASET_SPECTRA[id(d)] = (d, {"rows": rows, "inputs": inputs.tolist()})
    return hit[1]


def dataset_rows(d: data.Dataset, X_id) -> tuple[list[dict[str, Any]], Any]:
    """The data set's own spectra: input PCA, between-class scatter (classification) or
    Cov(x, y) (regression, forecasting), and the intrinsic dimensions of ``X_id``. Returns (rows,
    input eigenvalues). Forecasting windows count each time step t >= washout as a row (x_t, y_t).
    Token ids (lm, token classification) are categorical: no spectrum is taken of them; one row
    says so, with no input eigenvalues (the embedding's outputs are in the activation spectra)."""
    if getattr(d, "vocab_size", 0):
        return [{"spectrum": f"inputs: token ids (vocabulary {d.vocab_size}), categorical, so no input PCA, "
                             f"between-class scatter or intrinsic dimension; see the activation spectra",
                 "layer": ""}], np.zeros(0)
    X, y, task_name = d.X_train, d.y_train, d.task
    if d.task == "forecasting":
        X, y, X_id = (t[:, d.washout:].reshape(-1, t.shape[-1]) for t in (X, y, X_id))
        X, y, X_id, task_name = X[:SPECTRA_ROWS], y[:SPECTRA_ROWS], X_id[:SPECTRA_ROWS], "regression"
    task = TaskSpectrum(task_name).fit(X, y)
    rows = [{"spectrum": "inputs (PCA)", "layer": "", **task.input_spectrum_.summary()}]
    if d.task == "classification":
        rows.append({"spectrum": f"between-class scatter (rank {task.between_class_rank_} <= C-1 = "
                                 f"{task.n_classes_ - 1})", "layer": "", **task.between_class_spectrum_.summary()})
    else:
        rows.append({"spectrum": "Cov(x, y) (squared singular values)", "layer": "", **task.cross_spectrum_.summary()})
    if task.n_features_ < 2:  # a scalar series: its points lie on a line, nothing to estimate
        rows.append({"spectrum": "inputs, intrinsic dimension: not estimated for 1-dimensional inputs", "layer": "",
                     "d": d.d_in})
        return rows, task.input_spectrum_.eigenvalues
    for method in ("twonn", "mle"):
        rows.append({"spectrum": f"inputs, intrinsic dimension ({method})", "layer": "",
                     "d": d.d_in, "intrinsic_dim": float(IntrinsicDimension(method).fit(X_id).dimension_)})
    return rows, task.input_spectrum_.eigenvalues


def backfill(study: Study | Mapping[str, Any], store: ResultsStore) -> tuple[int, list[str]]:
    """Add ``records`` to finished runs stored before they were recorded (rebuilding each run's
    model at init; no training). Returns (runs completed, one message per run that could not be,
    e.g. a data set not installed here). Run by ``reservoir-depth sweep``."""
    study = Study.of(study)
    by_id = {r.run_id: r for r in study.runs()}
    n, problems = 0, []
    for row in store.rows(study.study):
        run = by_id.get(row["run_id"])
        if run is None or row["status"] != "done":
            continue
        metrics, history = json.loads(row["metrics"] or "{}"), json.loads(row["history"] or "null") or {}
        recorded = all(k in metrics for k in RECORDED if k != Columns.ADAPTER_BYTES or run.method == "lotta") and \
            (not run.spectra or "dataset" in history)
        if recorded and any(k.startswith(Columns.NULL) for k in metrics):
            continue
        try:
            d = run.data()
        except (FileNotFoundError, ImportError) as e:
            problems.append(f"{type(e).__name__}: {e}")
            continue
        if recorded:  # only the null model is missing: no model to rebuild
            n += store.amend(row["run_id"], nulls(d), {})
            continue
        rec_metrics, rec_history = records(run, build_model(run, d), d)
        n += store.amend(row["run_id"], rec_metrics, rec_history)
    return n, problems


def sweep(runs: Iterable[Run], store: ResultsStore, progress: bool = True, retry_failed: bool = False,
          log_dir: str | os.PathLike | None = None, grouped: bool = True) -> SweepCounts:
    """Run every run not already done in ``store``, each at most once; returns what happened to each.

    A run that raises is recorded as failed with its error, and the sweep goes on. Runs that failed
    in an earlier sweep are retried only with ``retry_failed``. With ``log_dir``, each run trained
    is logged as TensorBoard events under ``log_dir_of(run, log_dir)`` (see execute). ``grouped``: the
    runs that can train together (group.groups; not with ``log_dir``) do, as one unit of work
    (execute_group); each is still stored as its own row."""
    runs = list(runs)
    return SweepCounts.of([r.run_id for r in runs],
                          [_sweep(runs, store, progress, retry_failed, uuid.uuid4().hex, log_dir, grouped)])


def units(runs: Sequence[Run], grouped: bool = True, log_dir: str | os.PathLike | None = None) -> list[list[Run]]:
    """The units of work of a sweep: the groups of runs trained together (group.groups), or one run each."""
    return groups(runs) if grouped and log_dir is None else [[r] for r in runs]


def _sweep(runs: Sequence[Run], store: ResultsStore, progress: bool, retry_failed: bool,
           invocation: str, log_dir: str | os.PathLike | None = None, grouped: bool = True,
           offset: int = 0) -> dict[str, tuple[str, str | None]]:
    """One worker's pass: run_id -> (outcome, error), see SweepCounts. ``invocation`` is the id every
    worker of one sweep shares, so a run one worker failed is not retried by another. ``offset``: start at
    this unit of work (workers start at different ones)."""
    outcomes: dict[str, tuple[str, str | None]] = {}
    todo = units(runs, grouped, log_dir)
    todo = todo[offset:] + todo[:offset]
    bar = tqdm(total=len(runs), desc="sweep", disable=not progress, dynamic_ncols=True)
    for unit in todo:
        claimed = []
        for run in unit:
            cfg = run.config()
            cfg["version"] = __version__
            if store.claim(run.run_id, run.study, cfg, run.seed, invocation=invocation, retry_failed=retry_failed):
                claimed.append(run)
                continue
            row = store.row(run.run_id) or {"status": "running", "error": None}
            outcomes.setdefault(run.run_id, (SweepCounts.SEEN[row["status"]], row["error"]))
            bar.update()
        if not claimed:
            continue
        run = claimed[0]
        bar.set_postfix_str(f"{run.method} r={run.scaffold.get('r', '-')} seed={run.seed}"
                            + (f" (+{len(claimed) - 1} together)" if len(claimed) > 1 else ""))
        held = {r.run_id for r in claimed}
        with store.hold_all(held):
            try:
                if len(claimed) == 1:
                    results = [_execute_one(run, progress, log_dir)]
                else:
                    results = execute_group(claimed)
            except BaseException:  # interrupted (Ctrl-C): the runs are free again at once
                for r in claimed:
                    store.release(r.run_id)
                raise
            for run, res in zip(claimed, results):
                if isinstance(res, BaseException):  # recorded, and the sweep goes on
                    error = f"{type(res).__name__}: {res}\n{''.join(traceback.format_exception(res))}"
                    kept = store.fail(run.run_id, error)
                    outcomes[run.run_id] = ("failed", error) if kept else ("running_elsewhere", None)
                else:
                    metrics, history, seconds = res
                    kept = store.finish(run.run_id, metrics, history, metrics["trainable"], metrics["total"], seconds)
                    outcomes[run.run_id] = ("done", None) if kept else ("running_elsewhere", None)  # else: taken over
                bar.update()
    bar.close()
    return outcomes


def _execute_one(run: Run, progress: bool, log_dir) -> tuple[dict[str, Any], dict[str, Any], float] | Exception:
    """execute(run), timed, or the exception it raised (with its traceback)."""
    t0 = time.perf_counter()
    try:
        # each run's own bar only on a terminal: in a log file the nested bars were thousands of lines
        metrics, history = execute(run, progress=progress and sys.stderr.isatty(), log_dir=log_dir)
    except Exception as e:
        return e
    return metrics, history, time.perf_counter() - t0


SPECTRA_ROWS = 5000  # activation spectra use at most this many training inputs


def spectra_layers(run: Run, d: data.Dataset) -> tuple[str, ...]:
    """The modules whose inputs the activation spectra read: the run's target patterns, or under "all-linear"
    (a selection, not a name) the modules it replaces, by exact name (the units of the scaffolded model,
    built on the meta device), so a twin's merged model is read at the same layers as LottaLoRA's."""
    targets = run.scaffold_config().target_modules
    if tuple(targets) != (ALL_LINEAR,):
        return tuple(targets)
    lotta = Run(**{**run.__dict__, "method": "lotta", "spectra": False})
    try:
        with torch.device("meta"):
            model = build_model(lotta, d)
    except (RuntimeError, NotImplementedError):  # a family that cannot be built without storage
        model = build_model(lotta, d)
    units: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, Scaffolded) and not any(name.startswith(u + ".") for u in units):
            units.append(name)
    return tuple(re.escape(u) for u in units)


def measure_spectra(run: Run, model, d: data.Dataset, init=None) -> tuple[dict[str, float], dict[str, list]]:
    """Spectral measures of a trained run: (summary measures flattened as ``{kind}/{layer}/{measure}``,
    eigenvalues as ``{kind}/{layer}`` -> list).

    act: inputs of every target layer (what A sees) over training inputs; adapter: s B A
    of a LottaLoRA run; dW: W_trained - W_seed of a fully trained twin.
    """
    targets = spectra_layers(run, d)
    out: dict[str, float] = {}
    eig: dict[str, list] = {}

    def add(kind: str, est) -> None:
        for row in est.frame().to_dict("records"):
            out.update({f"{kind}/{row['layer']}/{k}": v for k, v in row.items() if k not in ("layer", "n")})
        eig.update({f"{kind}/{name}": sp.eigenvalues.tolist() for name, sp in est.spectra_.items()})

    add("act", ActivationSpectra(layers=targets).fit(model, d.X_train[:SPECTRA_ROWS]))
    if run.method == "lotta" and run.scaffold_config().r > 0:
        add("adapter", WeightSpectra("adapter").fit(model))
    if run.method == "twin" and init is not None:
        add("dW", WeightSpectra("delta").fit(init, model))
    return out, eig


def _exit_with_parent() -> None:
    """Pool initializer: the worker exits once its parent process is gone (killed), instead of
    waiting forever for work; the run it held is then taken over (its process is dead)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="exit with parent", daemon=True).start()


def _worker(study: Mapping[str, Any], store: ResultsStore, threads: int, offset: int, retry_failed: bool,
            invocation: str, log_dir: str | None = None, grouped: bool = True) -> dict[str, tuple[str, str | None]]:
    runs = Study.of(study).runs()
    with torch_threads(threads):
        return _sweep(runs, store, False, retry_failed, invocation, log_dir, grouped, offset)


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op threads set to ``n`` inside the block, the caller's count restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _pool_context() -> multiprocessing.context.BaseContext:
    """The platform's default start method (fork on Linux: fast, and the workers see datasets and
    architectures registered at run time), or spawn once CUDA is initialised here: a forked
    child cannot use CUDA, so every run on a GPU would fail."""
    return multiprocessing.get_context("spawn" if torch.cuda.is_initialized() else None)


def run_study(study: Mapping[str, Any], store: ResultsStore, workers: int = 1, progress: bool = True,
              retry_failed: bool = False, log_dir: str | os.PathLike | None = None,
              threads: int = 1, grouped: bool = True) -> SweepCounts:
    """Sweep a whole study (see sweep); ``workers`` > 1 runs that many processes sharing ``store``
    (each claims a run before running it, so none is run twice; each exits if this process dies).
    ``threads``: torch's intra-op threads per run (default 1: the small runs of a study gain little
    from a second thread and lose much when the cores are busy; use workers = cores to fill a machine).
    ``log_dir``: TensorBoard events of each run under ``log_dir_of(run, log_dir)`` (see execute).
    ``grouped``: the runs that can train together do (see sweep); with workers, a group is the unit of work
    each worker claims."""
    for name, v in (("workers", workers), ("threads", threads)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    runs = Study.of(study).runs()
    if workers == 1:
        with torch_threads(threads):
            return sweep(runs, store, progress=progress, retry_failed=retry_failed, log_dir=log_dir,
                         grouped=grouped)
    n = len(units(runs, grouped, log_dir))
    offsets = [i * n // workers for i in range(workers)]
    invocation = uuid.uuid4().hex
    with ProcessPoolExecutor(workers, mp_context=_pool_context(), initializer=_exit_with_parent) as pool:
        parts = list(pool.map(_worker, [study] * workers, [store] * workers, [threads] * workers, offsets,
                              [retry_failed] * workers, [invocation] * workers,
                              [None if log_dir is None else str(log_dir)] * workers, [grouped] * workers))
    return SweepCounts.of([r.run_id for r in runs], parts)


def adaptive_sweep(study: Study | Mapping[str, Any], store: ResultsStore, eps: float, r_max: int,
                   metric: str | None = None, progress: bool = False, relative: bool | None = None,
                   r_start: float | None = None, grid: Sequence[int] | None = None):
    """r*(eps) by bracketing + bisection over ranks (rank.adaptive_search), each rank run
    over the study's seeds through the store (so finished runs are reused). ``r_start``: start the
    search at a predicted r* (``predict.predict_study(study)[1]``) instead of doubling from 0;
    ``grid``: search only these ranks (e.g. the study's own). ``metric``: by default
    the headline metric of the study's task (train.Task.headline), with its direction. ``relative``
    (eps as a fraction of full training): by default the kind the study's report uses
    (Study.tolerances: the metric's own unless the study sets eps, which is absolute).

    Returns (SearchResult, number of LottaLoRA runs it needed)."""
    study = Study.of(study)
    metric = metric_of(metric) if metric else study.metric
    relative = study.tolerances(metric)[0][1] if relative is None else relative
    base = study.runs(ranks=[])
    sweep(base, store, progress=progress)
    full_ids = {r.run_id for r in base if r.method == "full"}
    rows = store.frame(study.study)
    full = rows[rows[Columns.RUN_ID].isin(full_ids)][metric.name].mean()

    def evaluate(r: int) -> float:
        runs = study.runs(ranks=[r], baselines=False)
        sweep(runs, store, progress=progress)
        df = store.frame(study.study)
        return float(df[df[Columns.RUN_ID].isin({x.run_id for x in runs})][metric.name].mean())

    res = adaptive_search(evaluate, full, eps, r_max, higher_is_better=metric.higher_is_better, relative=relative,
                          r_start=r_start, grid=grid)
    return res, res.n_evaluated * len(study.seeds)
