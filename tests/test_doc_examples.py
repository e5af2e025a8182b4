"""Every code block of README.md and docs/*.md runs as written and prints what it says.

docs/api.md (generated) and docs/tutorials/ (tests/test_tutorials.py) are left out.

The rules a block follows, checked here:

- a fenced block names its language; README.md and docs/guide.md hold no indented code block;
- ``python`` blocks run with ``exec`` in a fresh scope and a fresh temporary working directory
  (holding links to the repository's ``docs/``, ``experiments/`` and ``benchmarks/``, as a
  checkout does); ``bash`` / ``sh`` blocks run line by line there, a ``reservoir-depth ...`` line
  through ``cli.main`` (in process: no interpreter start per line), any other line in bash;
- a block whose first line is ``# continues the block above`` runs in the directory (and, for
  python, the scope) of the block before it;
- a block right after ``<!-- file: NAME -->`` is written to NAME: a python module is imported (a
  later block runs it), a ``toml`` block (which must be a file) is read by ``Study.load``;
  ``text`` blocks are not run;
- a block that cannot run here (a GPU, a long study, a cluster) is marked
  ``<!-- not run: REASON -->`` on the line before it, and the reason must be given;
- ``print(...)  # TEXT`` promises that TEXT (each ``...`` in it eliding part of a line) is in what
  the block prints, and ``# a -> b   note`` lines promise ``a -> b``.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "api.md")]
STRICT = [ROOT / "README.md", ROOT / "docs" / "guide.md", ROOT / "docs" / "results.md"]  # no indented code blocks (theory.md's are equations)
RUN = ("python", "bash", "sh")
LANGS = (*RUN, "toml", "text")
CONTINUES = "# continues the block above"
LINKED = ("docs", "experiments", "benchmarks")
IMPORTED: list[str] = []  # modules written and imported by file blocks, dropped after each document


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marker: str  # the HTML comment on the line before the fence, or ""

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def not_run(self) -> str | None:
        m = re.fullmatch(r"<!--\s*not run:(.*?)-->", self.marker)
        return None if m is None else m.group(1).strip()

    @property
    def file(self) -> str | None:
        m = re.fullmatch(r"<!--\s*file:\s*(\S+)\s*-->", self.marker)
        return None if m is None else m.group(1)

    @property
    def continues(self) -> bool:
        return self.code.lstrip().startswith(CONTINUES)


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a markdown file, in order."""
    out, lines, i = [], path.read_text().splitlines(), 0
    while i < len(lines):
        m = re.fullmatch(r"```(\S*)\s*", lines[i])
        if m:
            j = next((k for k in range(i + 1, len(lines)) if lines[k].startswith("```")), None)
            assert j is not None, f"{path.name}:{i + 1}: a fence that is never closed"
            before = lines[i - 1].strip() if i else ""
            out.append(Block(path, i + 1, m.group(1), "\n".join(lines[i + 1:j]),
                             before if before.startswith("<!--") else ""))
            i = j
        i += 1
    return out


def indented_blocks(path: Path) -> list[int]:
    """Lines that open an indented (4-space) code block outside fences and lists."""
    found, fenced, prev = [], False, ""
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("    ") and line.strip() and not prev.strip():
            found.append(n)
        prev = line
    return found


def promised_output(code: str) -> list[str]:
    """``print(...)  # TEXT`` and ``# a -> b   note`` lines: what the block says it prints ('...' elides)."""
    out = []
    for line in code.splitlines():
        if line.lstrip().startswith("print(") and "  # " in line:
            out.append(line.split("  # ", 1)[1].strip().removesuffix("...").strip())
        elif line.startswith("# ") and " -> " in line:
            out.append(re.split(r"\s{2,}", line[2:])[0])
    return out


def shows(printed: str, text: str) -> bool:
    """Whether ``printed`` holds ``text``, each '...' in it standing for anything (on one line)."""
    parts = [re.escape(part.strip()) for part in text.split("...")]
    return re.search(r"[^\n]*?".join(parts), printed) is not None


ALL = [b for p in DOCS for b in blocks(p)]


def test_the_docs_have_blocks_and_every_block_says_what_it_is():
    assert len(ALL) >= 25, [b.where for b in ALL]
    unnamed = [f"{b.where} ({b.lang or 'no language'})" for b in ALL if b.lang not in LANGS]
    assert not unnamed, f"fenced blocks need a language among {LANGS}: {unnamed}"
    indented = {str(p.relative_to(ROOT)): n for p in STRICT if (n := indented_blocks(p))}
    assert not indented, f"indented code blocks (fence them, with a language): {indented}"


def test_a_block_that_is_not_run_gives_its_reason():
    empty = [b.where for b in ALL if b.marker.startswith("<!-- not run") and not b.not_run]
    assert not empty, f"'<!-- not run: REASON -->' needs a reason: {empty}"
    toml = [b.where for b in ALL if b.lang == "toml" and b.not_run is None and not b.file]
    assert not toml, f"a toml block is a file: mark it '<!-- file: NAME -->' (or not run, with a reason): {toml}"


def test_blocks_read_languages_markers_and_continuation(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("text\n\n<!-- not run: needs a GPU -->\n```bash\ntrain\n```\n<!-- not run: -->\n```python\n"
                  "x = 1\n```\n<!-- file: s.toml -->\n```toml\n# continues the block above\na = 1\n```\n"
                  "    indented\n\n    code\n")
    (gpu, empty, toml), = [blocks(md)]
    assert (gpu.lang, gpu.line, gpu.not_run, gpu.file, gpu.continues) == ("bash", 4, "needs a GPU", None, False)
    assert empty.not_run == "" and empty.code == "x = 1"
    assert (toml.file, toml.continues, toml.not_run) == ("s.toml", True, None)
    assert indented_blocks(md) == [18]  # not line 16: it continues no paragraph but follows a fence line
    md.write_text("```python\nx = 1\n")
    with pytest.raises(AssertionError, match="never closed"):
        blocks(md)


def test_promised_output_reads_print_comments_and_arrows():
    code = 'print(x)  # 1, 2 ...\n# a -> b   a note\nx = 1  # not output'
    assert promised_output(code) == ["1, 2", "a -> b"]
    assert shows("runs/x: 23,722 bytes vs 234,384\n", "runs/x: 23,... bytes vs 234,384")
    assert not shows("runs/x: 23\n722 bytes", "runs/x: 23... bytes")


def _linked_dir(tmp: Path) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    for name in LINKED:
        (tmp / name).symlink_to(ROOT / name, target_is_directory=True)
    return tmp


def _run_python(block: Block, scope: dict) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(block.code, block.where, "exec"), scope)
    return buf.getvalue()


def _run_shell(block: Block) -> str:
    from reservoir_depth import cli

    printed = []
    for line in block.code.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        args = shlex.split(line, comments=True)
        if args[0] == "reservoir-depth":
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                rc = cli.main(args[1:])
            out = buf.getvalue()
        else:
            env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
            p = subprocess.run(["bash", "-c", line], capture_output=True, text=True, env=env, timeout=120)
            rc, out = p.returncode, p.stdout + p.stderr
        assert rc == 0, f"{block.where}: `{line}` exited with {rc}:\n{out}"
        printed.append(out)
    return "".join(printed)


def _write_file(block: Block) -> str:
    """A ``<!-- file: NAME -->`` block is written to NAME: a study file (toml) is read by Study.load, a
    python module imported (so the blocks after it see what it registers)."""
    from reservoir_depth.study import Study

    path = Path(block.file)
    path.write_text(block.code + "\n")
    if block.lang == "toml":
        Study.load(path)
    elif block.lang == "python":  # imported as a reader's later command would (it registers what it defines)
        sys.path.insert(0, str(path.parent.resolve()))
        try:
            importlib.import_module(path.stem)
        finally:
            sys.path.pop(0)
            IMPORTED.append(path.stem)
    return ""


def _untracked() -> set[str]:
    """Untracked files under docs/results/, whose stores the blocks read through the links."""
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", "docs/results"], cwd=ROOT,
                         capture_output=True, text=True).stdout
    return {line[3:] for line in out.splitlines() if line.startswith("??")}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_block_runs_as_written_and_prints_what_it_says(doc, tmp_path, monkeypatch):
    from reservoir_depth.scaffold import LAYER_TYPES
    from reservoir_depth import data, models

    untracked = _untracked()
    registries = [(r, dict(r)) for r in (LAYER_TYPES, data.DATASETS, models.ARCHITECTURES)]
    scope: dict = {}
    where = tmp_path
    ran = 0
    try:
        for i, block in enumerate(blocks(doc)):
            if block.not_run is not None or block.lang == "text":
                continue
            if not block.continues:  # a fresh directory and scope
                where, scope = _linked_dir(tmp_path / f"block{i}"), {}
            monkeypatch.chdir(where)
            if block.file:
                printed = _write_file(block)
            elif block.lang == "python":
                printed = _run_python(block, scope)
            else:
                printed = _run_shell(block)
            for text in promised_output(block.code):
                assert shows(printed, text), f"{block.where} promises {text!r}; it printed:\n{printed}"
            ran += 1
    finally:  # blocks register layer types, data sets and families of their own: leave the registries as they were
        for registry, before in registries:
            registry.clear()
            registry.update(before)
        while IMPORTED:
            sys.modules.pop(IMPORTED.pop(), None)
    assert _untracked() <= untracked, f"a block of {doc.name} wrote into the repository: {_untracked() - untracked}"
    print(f"{doc.name}: {ran} blocks run")


def test_readme_gpt2_adapter_file_is_a_small_fraction_of_a_checkpoint(tmp_path, monkeypatch):
    """The README's GPT-2 example ships a small file: with wte, wpe and lm_head stored dense it was 97.4 %
    of a full checkpoint; scaffolded (untied), about 6 %."""
    block = next(b for b in blocks(ROOT / "README.md") if b.marker == "<!-- example: gpt2 -->")
    monkeypatch.chdir(tmp_path)
    printed = _run_python(block, {})
    percent = float(re.search(r"bytes vs [\d,]+ for a full checkpoint \(([\d.]+)%\)", printed).group(1))
    assert percent < 10, printed
