"""Render the lists of what the registries hold into README.md and docs/guide.md, between markers.

    python docs/render_registries.py          # rewrite the blocks in place
    python docs/render_registries.py --check  # exit 1, naming the stale blocks (tests/test_docs.py runs it)

A block is ``<!-- registry: NAME (generated: python docs/render_registries.py) -->`` ... ``<!-- registry: end -->``;
NAME is one of BLOCKS: layer types (scaffold.LAYER_TYPES), random-matrix families
(distributions.DISTRIBUTIONS), architectures (models.ARCHITECTURES) and data sets (data.DATASETS with the task
each declares). A list a person writes by hand drifts from its registry; these cannot.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "docs/guide.md")
START = "<!-- registry: {} (generated: python docs/render_registries.py) -->"
END = "<!-- registry: end -->"


def _first_line(obj) -> str:
    return (inspect.getdoc(obj) or "").split("\n")[0].rstrip(".")


def layer_types() -> str:
    from reservoir_depth.scaffold import LAYER_TYPES

    rows = []
    for key, t in LAYER_TYPES.items():
        where = key if isinstance(key, str) else f"torch.nn.{key.__name__}" if key.__module__.startswith("torch.nn") \
            else f"{key.__module__}.{key.__qualname__}"
        what = ", ".join(w for w, on in (("all-linear", t.linear), ("container", t.container)) if on)
        rows.append(f"- `{where}` -> `{t.layer.__name__}`" + (f" ({what})" if what else ""))
    return f"{len(rows)} layer types (`scaffold.LAYER_TYPES`; `register_layer_type` adds one):\n\n" + "\n".join(rows)


def families() -> str:
    from reservoir_depth.distributions import DISTRIBUTIONS

    names = ", ".join(f"`{n}`" for n in sorted(DISTRIBUTIONS))
    return (f"{len(DISTRIBUTIONS)} random-matrix families (`distributions.DISTRIBUTIONS`; `reservoir-depth "
            f"distributions` prints each with its parameters; `register` adds one): {names}.")


def architectures() -> str:
    from reservoir_depth.models import ARCHITECTURES

    rows = [f"- `{n}`: {_first_line(inspect.getmodule(cls))}" for n, cls in sorted(ARCHITECTURES.items())]
    return f"{len(rows)} architecture families (`models.ARCHITECTURES`; `models.build(name, ...)`):\n\n" + "\n".join(rows)


def datasets() -> str:
    from reservoir_depth.data import DATASETS

    rows = [f"- `{n}` ({getattr(f, 'task', None) or 'task read from the data'}): {_first_line(f)}"
            for n, f in sorted(DATASETS.items())]
    return f"{len(rows)} data sets (`data.DATASETS`, with the task each declares; `register_dataset` adds one):\n\n" \
        + "\n".join(rows)


BLOCKS = {"layer-types": layer_types, "families": families, "architectures": architectures, "datasets": datasets}


def render(text: str) -> str:
    """``text`` with every registry block rewritten from the registries."""
    def block(m: re.Match) -> str:
        name = m.group(1)
        if name not in BLOCKS:
            raise ValueError(f"unknown registry block {name!r}; allowed: {', '.join(BLOCKS)}")
        return f"{START.format(name)}\n{BLOCKS[name]()}\n{END}"
    return re.sub(r"<!-- registry: ([\w-]+) \(generated[^>]*-->\n.*?<!-- registry: end -->", block, text, flags=re.S)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if a block is stale")
    args = p.parse_args(argv)
    stale = []
    for doc in DOCS:
        path = ROOT / doc
        text = path.read_text()
        new = render(text)
        if new != text:
            stale.append(doc)
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print(f"stale registry blocks in {', '.join(stale)}: run python docs/render_registries.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
