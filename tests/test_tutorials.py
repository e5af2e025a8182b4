"""The tutorials (docs/tutorials/*.py) run at the small size and produce their figures, and
each committed page (docs/tutorials/<name>.md) is rendered from the current script."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

TUTORIALS_DIR = Path(__file__).resolve().parent.parent / "docs" / "tutorials"


def _load_render():
    spec = importlib.util.spec_from_file_location("tutorial_render", TUTORIALS_DIR / "render.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


render = _load_render()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_every_tutorial_script_is_listed():
    scripts = {p.stem for p in TUTORIALS_DIR.glob("*.py")} - {"render"}
    assert scripts == set(render.TUTORIALS)


@pytest.mark.parametrize("name", render.TUTORIALS)
def test_tutorial_runs_at_small_size_and_draws_its_figures(name, tmp_path):
    cells, _ = render.execute(TUTORIALS_DIR / f"{name}.py", tmp_path, "small")
    figures = [f for cell in cells for f in cell.figures]
    assert figures, f"{name} drew no figure"
    for figure in figures:
        assert (tmp_path / figure).read_bytes()[:8] == PNG_MAGIC
    assert any(cell.output.strip() for cell in cells if cell.kind == "code"), f"{name} printed nothing"
    committed = (TUTORIALS_DIR / f"{name}.md").read_text()
    assert re.findall(r"!\[[^]]*\]\(([^)]+\.png)\)", committed) == figures  # the same figures as the page


@pytest.mark.parametrize("name", render.TUTORIALS)
def test_committed_page_is_rendered_from_the_current_script(name):
    script = TUTORIALS_DIR / f"{name}.py"
    page = (TUTORIALS_DIR / f"{name}.md").read_text()
    rerender = f"python docs/tutorials/render.py {name} --in-place"
    assert render.rendered_digest(page) == render.sha256(script), f"{name}.md is stale: run `{rerender}`"
    cells = render.parse(script.read_text(), script.name)
    assert render.code_blocks(page) == [c.source for c in cells if c.kind == "code"], f"run `{rerender}`"
    position = 0
    for cell in (c for c in cells if c.kind == "markdown"):  # the prose, in order
        position = page.index(cell.prose, position) + len(cell.prose)
    for figure in re.findall(r"!\[[^]]*\]\(([^)]+)\)", page):
        assert (TUTORIALS_DIR / figure).read_bytes()[:8] == PNG_MAGIC, f"{name}.md links a missing {figure}"
    assert re.search(r"at size `(small|full)`", page), "the header names the size the page was rendered at"


def test_parse_splits_percent_cells():
    cells = render.parse("# %% [markdown]\n# # Title\n#\n# text\n\n# %%\nx = 1\nprint(x)\n\n# %%\ny = 2\n")
    assert [(c.kind, c.source) for c in cells] == [("markdown", "# # Title\n#\n# text"),
                                                   ("code", "x = 1\nprint(x)"), ("code", "y = 2")]
    assert cells[0].prose == "# Title\n\ntext"


@pytest.mark.parametrize("text, message", [
    ("x = 1\n# %%\ny = 2\n", "before the first"),
    ("# %% [raw]\nx = 1\n", "cell marker"),
    ("# %% [markdown]\nnot a comment\n# %%\nx = 1\n", "must start with '#'"),
    ("# %% [markdown]\n# only prose\n", "no code cell"),
])
def test_parse_refuses_malformed_scripts(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        render.parse(text)


def test_execute_captures_output_and_figures_and_names_a_failing_cell(tmp_path, monkeypatch):
    script = tmp_path / "demo.py"
    script.write_text("# %%\nimport os\nimport matplotlib.pyplot as plt\n"
                      "print(os.environ['RESERVOIR_DEPTH_TUTORIAL_SIZE'])\nplt.plot([0, 1])\n"
                      "# %%\nprint('second')\n")
    monkeypatch.delenv(render.SIZE_ENV, raising=False)
    cells, _ = render.execute(script, tmp_path / "out", "full")
    assert [c.output for c in cells] == ["full\n", "second\n"]
    assert cells[0].figures == ["demo_1.png"] and cells[1].figures == []
    assert (tmp_path / "out" / "demo_1.png").read_bytes()[:8] == PNG_MAGIC
    page = render.to_markdown("demo", cells, "full", 1.0, render.sha256(script))
    assert render.code_blocks(page) == [c.source for c in cells]
    assert "```text\nfull\n```" in page and "![demo_1.png](demo_1.png)" in page
    assert render.SIZE_ENV not in os.environ  # restored
    script.write_text("# %%\nprint('ok')\n# %%\nraise KeyError('boom')\n")
    with pytest.raises(RuntimeError, match=r"cell 1 failed: KeyError\('boom'\)"):
        render.execute(script, tmp_path / "out")


@pytest.mark.parametrize("name", render.TUTORIALS)
def test_tutorial_refuses_an_unknown_size(name, monkeypatch):
    monkeypatch.setenv(render.SIZE_ENV, "huge")
    first = next(c for c in render.parse((TUTORIALS_DIR / f"{name}.py").read_text()) if c.kind == "code")
    with pytest.raises(ValueError, match=r"RESERVOIR_DEPTH_TUTORIAL_SIZE='huge': allowed sizes are \['full', 'small'\]"):
        exec(compile(first.source, name, "exec"), {"__name__": "__main__"})


def test_renderer_refuses_an_unknown_size(tmp_path):
    with pytest.raises(ValueError, match=r"size 'huge': allowed sizes are \('small', 'full'\)"):
        render.execute(TUTORIALS_DIR / "is_my_task_low_rank.py", tmp_path, "huge")
