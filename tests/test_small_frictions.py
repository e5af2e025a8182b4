"""Small frictions a newcomer meets (issue 20.10): tutorial scripts run directly save their figures,
render.py writes only where it is asked to, adapter files respect the umask, every subcommand has a
help description, `train --target / --trainable`, and load() returns the model in eval mode."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest

from conftest import make_blobs
from reservoir_depth import cli, io
from reservoir_depth.models import build
from reservoir_depth.scaffold import ScaffoldConfig, scaffold

TUTORIALS_DIR = Path(__file__).resolve().parent.parent / "docs" / "tutorials"


def _render():
    spec = importlib.util.spec_from_file_location("tutorial_render_out", TUTORIALS_DIR / "render.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


render = _render()


@pytest.mark.parametrize("name", render.TUTORIALS)
def test_a_tutorial_run_as_a_script_saves_its_open_figures_in_the_current_folder(name, tmp_path, monkeypatch):
    """Run directly, a script's figures stay open to its last cell (render.py closes them after each cell,
    so there the cell writes nothing); the last cell saves them, under names no rendered page uses."""
    last = [c for c in render.parse((TUTORIALS_DIR / f"{name}.py").read_text(), name) if c.kind == "code"][-1]
    monkeypatch.chdir(tmp_path)
    plt.close("all")
    plt.subplots()
    plt.subplots()
    exec(compile(last.source, name, "exec"), {"plt": plt})
    plt.close("all")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}_figure_1.png", f"{name}_figure_2.png"]
    exec(compile(last.source, name, "exec"), {"plt": plt})  # nothing open (as under render.py): nothing written
    assert len(list(tmp_path.iterdir())) == 2


def _fake_execute(path, out_dir, size="small"):
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return render.parse(Path(path).read_text(), Path(path).name), 0.0


def test_render_writes_where_it_is_asked_and_the_tracked_pages_only_with_in_place(tmp_path, monkeypatch, capsys):
    name = render.TUTORIALS[0]
    page = TUTORIALS_DIR / f"{name}.md"
    before = page.read_bytes()
    seen = []
    real = render.render
    monkeypatch.setattr(render, "render", lambda n, size="small", out_dir=render.HERE:
                        seen.append(out_dir) or (tmp_path / "x.md", 0.0))
    with pytest.raises(SystemExit) as e:
        render.main([name])
    err = capsys.readouterr().err
    assert seen == [] and e.value.code == 2 and "--out DIR" in err and "--in-place" in err
    assert render.main([name, "--in-place"]) == 0 and seen == [render.HERE]
    with pytest.raises(SystemExit):
        render.main([name, "--in-place", "--out", str(tmp_path)])
    monkeypatch.setattr(render, "render", real)
    monkeypatch.setattr(render, "execute", _fake_execute)
    assert render.main([name, "--out", str(tmp_path / "pages")]) == 0
    assert (tmp_path / "pages" / f"{name}.md").is_file()
    assert page.read_bytes() == before


def _saved(tmp_path) -> Path:
    d = make_blobs()
    m = build("mlp", seed=0, d_in=d.d_in, n_out=d.n_classes, hidden=(8,))
    m = scaffold(m, ScaffoldConfig(target_modules=m.scaffold_targets, trainable=m.scaffold_trainable, r=2))
    io.save(m, tmp_path / "a")
    return tmp_path / "a"


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_adapter_files_take_their_mode_from_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        folder = _saved(tmp_path)
    finally:
        os.umask(old)
    for name in (io.TENSORS, io.CONFIG):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o666 & ~umask, name


def test_load_returns_the_model_in_eval_mode(tmp_path):
    model = io.load(_saved(tmp_path))
    assert not model.training and not any(m.training for m in model.modules())


@pytest.mark.parametrize("command", ["run", "sweep", "report", "train", "spectra", "distributions"])
def test_every_subcommand_has_a_help_description(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    usage, _, rest = capsys.readouterr().out.partition("\n\n")
    assert rest.split("\n")[0].strip() and not rest.startswith(("positional arguments", "options")), rest[:200]


def test_train_target_and_trainable_reach_the_scaffold_config(tmp_path):
    out = tmp_path / "a"
    assert cli.main(["train", "--hidden", "16,8", "--epochs", "1", "--no-progress", "--target", "layers.0",
                     "--trainable", "head", "layers.1", "--save", str(out)]) == 0
    scaffold = json.loads((out / io.CONFIG).read_text())["scaffold"]
    assert scaffold["target_modules"] == ["layers.0"] and scaffold["trainable"] == ["head", "layers.1"]


def test_train_target_matching_nothing_is_bad_input(tmp_path, capsys):
    assert cli.main(["train", "--hidden", "16", "--epochs", "1", "--no-progress", "--target", "layerz"]) == cli.BAD_INPUT
    assert "layerz" in capsys.readouterr().err
