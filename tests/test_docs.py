"""The docs match the code: rendered theory is current, every named test exists."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_rendered_theory_is_current():
    spec = importlib.util.spec_from_file_location("render_theory", ROOT / "docs" / "render_theory.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (ROOT / "docs" / "theory.md").read_text() == mod.render(), "run: python docs/render_theory.py"


@pytest.mark.parametrize("md", sorted((ROOT / "theory").glob("0*.md")), ids=lambda p: p.name)
def test_every_proposition_names_existing_tests_and_experiments(md):
    text = md.read_text()
    assert "Checked by" in text
    tests = re.findall(r"tests/(test_\w+\.py)::(test_\w+)", text)
    assert tests, f"{md.name} names no test"
    for file, name in tests:
        src = (ROOT / "tests" / file).read_text()
        assert re.search(rf"def {name}\(", src), f"{md.name}: {file}::{name} does not exist"
    for script in re.findall(r"python (experiments/\w+\.py)", text):
        assert (ROOT / script).exists(), f"{md.name}: {script} does not exist"


def test_api_reference_is_current():
    spec = importlib.util.spec_from_file_location("render_api", ROOT / "docs" / "render_api.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (ROOT / "docs" / "api.md").read_text() == mod.render(), "run: python docs/render_api.py"


def test_every_public_function_has_a_docstring():
    import inspect

    spec = importlib.util.spec_from_file_location("render_api", ROOT / "docs" / "render_api.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    missing = [f"{m}.{n}" for m in mod.MODULES for n, obj in mod.public(importlib.import_module(m))
               if not inspect.getdoc(obj)]
    assert not missing, missing


def test_api_reference_quotes_string_defaults():
    """String defaults keep their quotes (``bias: str = 'keep'``, not ``bias: str = keep``)."""
    spec = importlib.util.spec_from_file_location("render_api", ROOT / "docs" / "render_api.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    def f(title: str = "", target_modules=("all-linear",), n: int = 3, g=len):
        """f."""

    def h(bias: "str | None" = "keep") -> "int":  # annotations as postponed evaluation leaves them
        """h."""

    assert mod._sig(f) == "(title: str = '', target_modules=('all-linear',), n: int = 3, g=len)"
    assert mod._sig(h) == "(bias: str | None = 'keep') -> int"


def test_citation_file_names_the_toolkit_version_and_the_paper():
    """CITATION.cff is valid YAML with CFF 1.2.0's required keys, the package's own
    version, and the paper (arXiv 2604.08749) as the preferred citation."""
    yaml = pytest.importorskip("yaml")
    import reservoir_depth

    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert {"cff-version", "message", "title", "authors"} <= set(cff)
    assert cff["version"] == reservoir_depth.__version__
    paper = cff["preferred-citation"]
    assert "2604.08749" in paper["url"] and paper["title"].startswith("A Little Rank Goes a Long Way")
    assert [a["family-names"] for a in paper["authors"]] == ["Hazan", "Zhang", "Hartl", "Levin"]


def _readme_block_after(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    return re.search(re.escape(marker) + r".*?\n```bash\n(.*?)\n```", text, re.S).group(1).strip()


def test_torch_is_a_tested_lower_bound_and_installs_pin_the_cpu_build():
    """pyproject declares a lower bound on torch (an exact pin blocks every other environment); the README's
    install commands take constraints-cpu.txt, which pins the CPU build CI tests (an unpinned resolve pulls
    a multi-GB CUDA build), and .ci/run runs the README's test command as written."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_req = next(d for d in deps if re.match(r"torch\b", d))
    assert re.fullmatch(r"torch>=(\d+\.\d+)", torch_req), torch_req
    constraints = (ROOT / "constraints-cpu.txt").read_text().splitlines()
    pinned = next(line for line in constraints if line.startswith("torch=="))
    assert pinned.removeprefix("torch==").startswith(torch_req.removeprefix("torch>=")), (pinned, torch_req)
    test_cmd = _readme_block_after("Test suite:")
    assert "-c constraints-cpu.txt" in test_cmd and "-c constraints-cpu.txt" in _readme_block_after("Main job")
    assert test_cmd in (ROOT / ".ci" / "run").read_text()


def test_the_readme_names_every_module_of_the_package():
    """README's "What is in it" is the layout map: every module and package of reservoir_depth/ is in it."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## What is in it"):]
    table = table[:table.index("\n## ", 1)] if "\n## " in table[1:] else table
    package = ROOT / "reservoir_depth"
    names = [p.name + ("/" if p.is_dir() else "") for p in sorted(package.iterdir())
             if p.name != "__init__.py" and (p.suffix == ".py" or (p.is_dir() and not p.name.startswith("__")))]
    missing = [n for n in names if f"`{n}`" not in table and f"`reservoir_depth/{n}`" not in table]
    assert not missing, f"README's 'What is in it' does not name {missing}"


def test_every_module_says_its_job_in_a_docstring():
    import ast

    missing = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "reservoir_depth").rglob("*.py"))
               if not ast.get_docstring(ast.parse(p.read_text()))]
    assert not missing, f"modules without a docstring: {missing}"


def test_results_headline_table_is_the_generated_one():
    """docs/results.md carries the table experiments/headline.py writes from the stores, unedited."""
    text = (ROOT / "docs" / "results.md").read_text()
    block = re.search(r"<!-- headline: start.*?-->\n(.*?)<!-- headline: end -->", text, re.S)
    assert block, "docs/results.md has no <!-- headline: start --> ... <!-- headline: end --> block"
    generated = (ROOT / "docs" / "results" / "headline" / "headline.md").read_text()
    assert block.group(1).strip() == generated.strip(), "run: python experiments/headline.py, then paste"


def test_registry_lists_in_the_docs_are_generated_from_the_registries():
    """README's and the guide's lists of layer types, families, architectures and data sets are rendered
    from the registries (docs/render_registries.py), so a registered entry cannot be missing from them."""
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import render_registries
    finally:
        sys.path.remove(str(ROOT / "docs"))
    for doc in render_registries.DOCS:
        text = (ROOT / doc).read_text()
        assert render_registries.render(text) == text, f"{doc}: run python docs/render_registries.py"
    blocks = re.findall(r"<!-- registry: ([\w-]+) \(generated", (ROOT / "README.md").read_text())
    assert sorted(blocks) == sorted(render_registries.BLOCKS), blocks


def test_a_registered_layer_type_reaches_the_rendered_list(monkeypatch):
    from torch import nn

    from reservoir_depth.scaffold import LAYER_TYPES, LayerType, ScaffoldLinear

    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import render_registries
    finally:
        sys.path.remove(str(ROOT / "docs"))

    class Dense(nn.Linear):
        pass

    monkeypatch.setitem(LAYER_TYPES, Dense, LayerType(Dense, ScaffoldLinear))
    text = (ROOT / "README.md").read_text()
    assert "Dense" in render_registries.render(text) and render_registries.render(text) != text


def test_the_cli_docstring_names_every_subcommand():
    import argparse

    from reservoir_depth import cli

    sub = next(a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = [c for c in sub.choices if f"reservoir-depth {c}" not in cli.__doc__]
    assert not missing, f"the cli docstring omits {missing}"
