"""Sweeps on a Ray cluster: each pending unit of work (one run, or the runs trained together: sweep.units)
is one Ray task; the driver writes the results.

The driver claims each run in the SQLite results store exactly as a local worker does
(``ResultsStore.claim``), keeps the leases of the runs in flight fresh from one heartbeat
thread, and records each returned result (``finish``) or error (``fail``). Workers never
touch the store, so a cluster needs no shared file system: resuming, reports and the local
``--workers`` path see the same rows. A killed driver loses no finished run: the runs it
held are taken over by the next sweep once their leases lapse (at once on the same host,
where the driver's process is seen to be dead).

Ray is an optional extra (``pip install -e '.[ray]'``), imported only here.
"""

from __future__ import annotations

import socket
import time
import traceback
import uuid
from typing import Any, Mapping

from tqdm.auto import tqdm

from ._version import __version__
from .results import ResultsStore, SweepCounts
from .run import Run
from .group import groups as units

INSTALL = "pip install -e '.[ray]'  (or: pip install 'ray>=2.9')"


def _ray():
    try:
        import ray
    except ImportError as e:
        raise ImportError(f"the Ray backend needs ray, which is not installed: {INSTALL}") from e
    return ray


NO_CLUSTER = "start one with `ray start --head` (it prints the address), or leave --address out to start a local one"


def _probe(address: str | None, timeout: float = 3.0) -> None:
    """A HOST:PORT address (or ray://HOST:PORT) with nothing listening is refused at once, as a ValueError,
    instead of after Ray's own connection timeout; None and "auto" are left to ray.init."""
    if address is None or address == "auto":
        return
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    if not colon or not port.isdigit():
        raise ValueError(f"--address {address}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as e:
        raise ValueError(f"--address {address}: nothing answers there ({e.strerror or e}); {NO_CLUSTER}") from None


def _execute(runs: list[Run], threads: int) -> list[tuple[dict[str, Any], dict[str, Any], float] | str]:
    """What a Ray task runs: ``sweep.execute`` of one run (raising its error), or ``sweep.execute_group``
    of the runs trained together; per run (metrics, history, seconds), or the error of a run that failed."""
    import torch

    from .sweep import execute, execute_group

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    if len(runs) == 1:
        metrics, history = execute(runs[0], progress=False)
        return [(metrics, history, time.perf_counter() - t0)]
    return [f"{type(r).__name__}: {r}\n{''.join(traceback.format_exception(r))}" if isinstance(r, BaseException)
            else r for r in execute_group(runs)]


def _error(e: BaseException) -> str:
    """The task's own exception and traceback (Ray wraps it in a RayTaskError)."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}\n{e}"
    return f"{type(e).__name__}: {e}\n{traceback.format_exc()}"


def run_study_ray(study: Mapping[str, Any], store: ResultsStore, address: str | None = None,
                  cpus: float | None = None, gpus: float | None = None, retry_failed: bool = False,
                  progress: bool = True) -> SweepCounts:
    """Sweep a study with one Ray task per pending unit of work (a run, or the runs trained together:
    group.groups), each reserving ``cpus`` / ``gpus`` (default:
    the study's [resources], else 1 CPU and no GPU); see the module doc.

    ``address``: a running cluster (``ray start --head`` prints it; "auto" finds the local one);
    None starts a local Ray instance for this sweep and shuts it down after. Counts as ``sweep``."""
    from .study import Study

    study = Study.of(study)
    cpus = study.resources["cpus"] if cpus is None else cpus
    gpus = study.resources["gpus"] if gpus is None else gpus

    for name, value in (("cpus", cpus), ("gpus", gpus)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"{name} per run must be a number >= 0, got {value!r}")
    if cpus == 0 and gpus == 0:
        raise ValueError("a run needs some resource: cpus > 0 or gpus > 0 per run")
    ray = _ray()
    runs = study.runs()
    started = not ray.is_initialized()
    if started:
        _probe(address)
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        except ConnectionError as e:
            raise ValueError(f"--address {address}: no Ray cluster could be reached ({e}); {NO_CLUSTER}") from None
    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(_execute)
    threads = max(1, int(cpus))
    invocation, outcomes = uuid.uuid4().hex, {}
    pending: dict[Any, list[Run]] = {}
    held: set[str] = set()
    bar = tqdm(total=len(runs), desc="sweep (ray)", disable=not progress, dynamic_ncols=True)
    try:
        with store.hold_all(held):
            for unit in units(runs):
                claimed = []
                for run in unit:
                    cfg = {**run.config(), "version": __version__}
                    if store.claim(run.run_id, run.study, cfg, run.seed, invocation=invocation,
                                   retry_failed=retry_failed):
                        claimed.append(run)
                        held.add(run.run_id)
                        continue
                    row = store.row(run.run_id) or {"status": "running", "error": None}
                    outcomes.setdefault(run.run_id, (SweepCounts.SEEN[row["status"]], row["error"]))
                    bar.update()
                if claimed:
                    pending[task.remote(claimed, threads)] = claimed
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                unit = pending.pop(ref)
                try:
                    results = ray.get(ref)
                except Exception as e:  # the task raised on its worker (or the worker died): recorded
                    results = [_error(e)] * len(unit)
                for run, res in zip(unit, results):
                    if isinstance(res, str):
                        kept = store.fail(run.run_id, res)
                        outcomes[run.run_id] = ("failed", res) if kept else ("running_elsewhere", None)
                    else:
                        metrics, history, seconds = res
                        kept = store.finish(run.run_id, metrics, history, metrics["trainable"], metrics["total"],
                                            seconds)
                        outcomes[run.run_id] = ("done", None) if kept else ("running_elsewhere", None)
                    held.discard(run.run_id)
                    bar.update()
    except BaseException:  # interrupted: the runs still in flight are free again at once
        for ref, unit in pending.items():
            ray.cancel(ref, force=True)
            for run in unit:
                store.release(run.run_id)
        raise
    finally:
        bar.close()
        if started:
            ray.shutdown()
    return SweepCounts.of([r.run_id for r in runs], [outcomes])
