"""Run identity: which fields of a config dataclass enter a run's id, and in what form.

A run id is the hash of the run's resolved config (run.Run.config), built from
``identity(TrainConfig)``, ``identity(ScaffoldConfig)`` and ``identity(DistributionSpec)``.
Two declarations, as dataclass field metadata, keep stored ids valid:

- ``field(..., metadata=added(before))``: a setting added after run ids were first stored.
  Every run stored before it had the value ``before`` implicitly, so the identity omits the
  field while it holds that value (whatever the field's current default) and those runs
  keep their ids.
- ``field(..., metadata=NOT_IDENTITY)``: a setting that never changes a result (a progress
  bar, a log folder); it never enters the identity.

Every other field enters as is, or through the encoder named after it.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any, Callable, Mapping

BEFORE = "identity_before"  # metadata key: the value the field had, implicitly, before it was added
IN_IDENTITY = "identity"  # metadata key: False for a field that never enters the identity
NOT_IDENTITY: Mapping[str, Any] = MappingProxyType({IN_IDENTITY: False})


def added(before: Any) -> Mapping[str, Any]:
    """Field metadata of a setting added after run ids were first stored, whose value was ``before`` until then."""
    return MappingProxyType({BEFORE: before})


def identity(config: Any, **encode: Callable[[Any], Any]) -> dict[str, Any]:
    """The identity dict of the dataclass instance ``config``: its fields in declaration order, less
    those declared NOT_IDENTITY and those ``added(before)`` that hold ``before``; ``encode`` maps a
    field name to a function giving the value stored for it (e.g. a nested spec's own identity)."""
    fields = dataclasses.fields(config)
    unknown = sorted(set(encode) - {f.name for f in fields})
    if unknown:
        raise ValueError(f"cannot encode unknown field(s) {unknown} of {type(config).__name__}; allowed: "
                         f"{', '.join(f.name for f in fields)}")
    out = {}
    for f in fields:
        value = getattr(config, f.name)
        if f.metadata.get(IN_IDENTITY, True) is False:
            continue
        if BEFORE in f.metadata and _same(value, f.metadata[BEFORE]):
            continue
        out[f.name] = encode[f.name](value) if f.name in encode else value
    return out


def _same(value: Any, before: Any) -> bool:
    """``value == before``, where None equals only None and a bool only a bool (False is not 0)."""
    if value is None or before is None:
        return value is before
    if isinstance(value, bool) != isinstance(before, bool):
        return False
    return bool(value == before)
