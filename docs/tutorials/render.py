"""Run the tutorials cell by cell and render each to markdown with its output and figures.

    python docs/tutorials/render.py --out /tmp/pages           # every tutorial, size small, into /tmp/pages
    python docs/tutorials/render.py is_my_task_low_rank --size full --in-place   # the tracked page and PNGs

A tutorial is a script in the percent format that Jupyter (jupytext), VS Code and
Spyder open as a notebook: ``# %%`` starts a code cell, ``# %% [markdown]`` a prose
cell whose lines are ``# text``. Each code cell runs in one shared namespace; what it
prints is captured, and every matplotlib figure it leaves open is saved as
``<name>_<k>.png`` beside the page and closed. The page and its PNGs go where ``--out DIR``
says, or, with ``--in-place``, over the tracked ones next to the script (one of the two is
required, so a trial run never rewrites the docs). Run directly (``python <name>.py``), a
tutorial's last cell saves the figures it drew as ``<name>_figure_<k>.png`` in the current folder. ``<name>.md`` gets the prose, the
code, the printed output and the figure links, a header naming the size it ran at,
and the sha256 of the script it was rendered from (tests/test_tutorials.py checks it,
so a rendered page cannot drift from its script).

The size (environment variable ``RESERVOIR_DEPTH_TUTORIAL_SIZE``, ``small`` by default)
is read by each tutorial: ``small`` runs in well under a minute on two CPU cores (what
CI runs), ``full`` runs the settings worth reading.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIZE_ENV = "RESERVOIR_DEPTH_TUTORIAL_SIZE"
SIZES = ("small", "full")
TUTORIALS = ("is_my_task_low_rank", "scaffold_a_transformers_model", "destabilised_scaffolds_and_beta")
CELL = re.compile(r"^# %%(?P<rest>.*)$")


@dataclass
class Cell:
    kind: str  # "code" or "markdown"
    source: str
    output: str = ""
    figures: list[str] = field(default_factory=list)

    @property
    def prose(self) -> str:
        """A markdown cell's text: its lines without the leading '# ' (or a bare '#')."""
        return "\n".join(re.sub(r"^# ?", "", line) for line in self.source.splitlines())


def parse(text: str, name: str = "<tutorial>") -> list[Cell]:
    """Split a percent-format script into cells; text before the first marker is refused
    unless blank (every line of a tutorial belongs to a cell)."""
    cells: list[Cell] = []
    kind, lines = None, []
    for number, line in enumerate(text.splitlines(), 1):
        marker = CELL.match(line)
        if marker:
            if kind is not None:
                cells.append(Cell(kind, "\n".join(lines).strip("\n")))
            rest = marker["rest"].strip()
            if rest not in ("", "[markdown]"):
                raise ValueError(f"{name}:{number}: cell marker '# %%{marker['rest']}': allowed are '# %%' "
                                 f"and '# %% [markdown]'")
            kind, lines = ("markdown" if rest else "code"), []
        elif kind is None:
            if line.strip():
                raise ValueError(f"{name}:{number}: text before the first '# %%' cell marker: {line!r}")
        else:
            if kind == "markdown" and line.strip() and not line.startswith("#"):
                raise ValueError(f"{name}:{number}: a markdown cell's lines must start with '#', got {line!r}")
            lines.append(line)
    if kind is not None:
        cells.append(Cell(kind, "\n".join(lines).strip("\n")))
    if not any(c.kind == "code" for c in cells):
        raise ValueError(f"{name}: no code cell ('# %%')")
    return cells


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def execute(path: Path, out_dir: Path, size: str = "small") -> tuple[list[Cell], float]:
    """Run the script at ``path`` cell by cell at ``size``; save its figures as PNGs in ``out_dir``.

    Returns the cells (code cells with their printed output and figure file names) and the
    seconds it took. An exception in a cell is raised again, naming the cell.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if size not in SIZES:
        raise ValueError(f"size {size!r}: allowed sizes are {SIZES}")
    path, out_dir = Path(path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cells = parse(path.read_text(), path.name)
    namespace = {"__name__": "__main__", "__file__": str(path)}
    saved_env = os.environ.get(SIZE_ENV)
    os.environ[SIZE_ENV] = size
    plt.close("all")
    n_figures = 0
    start = time.perf_counter()
    try:
        for index, cell in enumerate(cells):
            if cell.kind != "code":
                continue
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer):
                try:
                    exec(compile(cell.source, f"{path.name} (cell {index})", "exec"), namespace)
                except Exception as error:
                    raise RuntimeError(f"{path.name}: cell {index} failed: {error!r}\n"
                                       f"printed so far:\n{buffer.getvalue()}") from error
            cell.output = buffer.getvalue()
            for number in plt.get_fignums():
                n_figures += 1
                figure_name = f"{path.stem}_{n_figures}.png"
                plt.figure(number).savefig(out_dir / figure_name, dpi=100, bbox_inches="tight")
                cell.figures.append(figure_name)
            plt.close("all")
    finally:
        if saved_env is None:
            os.environ.pop(SIZE_ENV, None)
        else:
            os.environ[SIZE_ENV] = saved_env
    return cells, time.perf_counter() - start


def to_markdown(name: str, cells: list[Cell], size: str, seconds: float, digest: str) -> str:
    """The rendered page: header (size, time, script hash), then each cell in order."""
    other = [s for s in SIZES if s != size]
    header = (f"> Rendered from [`{name}.py`]({name}.py) at size `{size}` ({SIZE_ENV}={size}) in {seconds:.0f} s "
              f"on a shared 2-core CPU; CI runs it at `small`, and `{SIZE_ENV}={other[0]}` runs the "
              f"{'larger' if size == 'small' else 'smaller'} settings. The script runs as it is "
              f"(`python docs/tutorials/{name}.py`) or opens as a notebook (percent format).")
    command = f"python docs/tutorials/render.py {name}" + ("" if size == "small" else f" --size {size}") + " --in-place"
    parts = [f"<!-- rendered by docs/tutorials/render.py from {name}.py (sha256 {digest}); do not edit: "
             f"edit the script and run `{command}` -->"]
    for index, cell in enumerate(cells):
        if cell.kind == "markdown":
            parts.append(cell.prose)
            if index == 0:
                parts.append(header)  # under the title and introduction
            continue
        if index == 0:
            parts.append(header)
        parts.append(f"```python\n{cell.source}\n```")
        if cell.output.strip():
            parts.append(f"```text\n{cell.output.rstrip()}\n```")
        parts.extend(f"![{figure}]({figure})" for figure in cell.figures)
    return "\n\n".join(parts) + "\n"


def code_blocks(markdown: str) -> list[str]:
    """The ```python blocks of a rendered page, in order (what the drift test compares)."""
    return re.findall(r"^```python\n(.*?)\n```$", markdown, flags=re.S | re.M)


def rendered_digest(markdown: str) -> str | None:
    """The script sha256 recorded in a rendered page's header (None if absent)."""
    found = re.search(r"\(sha256 ([0-9a-f]{64})\)", markdown)
    return found[1] if found else None


def render(name: str, size: str = "small", out_dir: Path = HERE) -> tuple[Path, float]:
    """Execute tutorial ``name`` and write ``out_dir/<name>.md`` and its PNGs; return (path, seconds)."""
    if name not in TUTORIALS:
        raise ValueError(f"unknown tutorial {name!r}; tutorials: {TUTORIALS}")
    script = HERE / f"{name}.py"
    for old in Path(out_dir).glob(f"{name}_*.png"):
        old.unlink()
    cells, seconds = execute(script, out_dir, size)
    page = Path(out_dir) / f"{name}.md"
    page.write_text(to_markdown(name, cells, size, seconds, sha256(script)))
    return page, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"tutorials to render (default: all of {', '.join(TUTORIALS)})")
    parser.add_argument("--size", choices=SIZES, default="small", help="settings to run at (default: small)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out", metavar="DIR", type=Path, help="write the pages and their PNGs to DIR")
    where.add_argument("--in-place", action="store_true",
                       help=f"write them over the tracked pages and PNGs in {HERE}")
    args = parser.parse_args(argv)
    if args.out is None and not args.in_place:
        parser.error(f"say where to write: --out DIR, or --in-place to rewrite the tracked pages in {HERE}")
    unknown = [name for name in args.names if name not in TUTORIALS]
    if unknown:
        parser.error(f"unknown tutorial(s) {unknown}; tutorials: {', '.join(TUTORIALS)}")
    for name in args.names or TUTORIALS:
        page, seconds = render(name, args.size, HERE if args.in_place else args.out)
        print(f"{page.relative_to(Path.cwd()) if page.is_relative_to(Path.cwd()) else page}: {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
