"""What every experiment script shares: its command line and its provenance record.

    from _common import parser, write_provenance      # scripts run as `python experiments/x.py`

    args = parser(__doc__, out="docs/results/x", workers=True).parse_args()
    ...
    write_provenance(args.out, config={...}, seeds=[0, 1], metrics={...})

The provenance record is the one a TOML study's study.json carries
(reservoir_depth.study.provenance): the resolved config, the seeds, the versions of
this package, Python, numpy and scipy (they fix the canonical draw of W_seed), torch
and pandas, and the headline metrics.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from reservoir_depth.checks import positive_int
from reservoir_depth.study import provenance


def parser(doc: str | None, out: str, workers: bool = False) -> argparse.ArgumentParser:
    """The script's argument parser: --out (default ``out``) and, with ``workers``, --workers."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=out, type=Path, help=f"output folder (default: {out})")
    if workers:
        p.add_argument("--workers", type=positive_int, default=1, help="processes sharing the results store (default: 1)")
    return p


def write_provenance(out: str | Path, config: Mapping[str, Any], seeds: Sequence[int],
                     metrics: Mapping[str, Any] | None = None, filename: str = "provenance.json",
                     **extra: Any) -> Path:
    """Write ``out``/``filename`` (sorted keys) in the shared format; returns its path. Scripts that share
    an output folder give each its own ``filename``."""
    path = Path(out) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(provenance(config, seeds, metrics, **extra), sort_keys=True, indent=1,
                               default=_tolist) + "\n")
    return path


def _tolist(v: Any) -> Any:
    """json.dumps' default: anything with a ``tolist`` (numpy scalars and arrays, tensors) as JSON."""
    if hasattr(v, "tolist"):
        return v.tolist()
    raise TypeError(f"not JSON-serialisable: {v!r}")
