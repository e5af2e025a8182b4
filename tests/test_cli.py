"""The command line: honest exit codes, help texts, train options."""

import importlib
import importlib.util

import pytest

from reservoir_depth import data
from reservoir_depth import sweep as sweep_mod
from reservoir_depth import cli
from reservoir_depth.cli import main, parser
from reservoir_depth.models import ARCHITECTURES

TINY = ('study = "tiny"\ndataset = "digits"\nseeds = [0]\nranks = [1]\nfull = false\n'
        '[arch]\nname = "mlp"\nhidden = [8]\n[train]\nepochs = 1\n')


def test_every_train_option_has_help_and_default():
    train = next(a for a in parser()._subparsers._group_actions[0].choices.items() if a[0] == "train")[1]
    opts = [a for a in train._actions if a.option_strings and a.dest != "help"]
    assert {"--arch", "--batch-size", "--data", "--hidden", "--rank"} <= {a.option_strings[0] for a in opts}
    assert all(a.help for a in opts)
    text = train.format_help()
    assert "(default: 8)" in text and "{" + ",".join(sorted(ARCHITECTURES)) + "}" in text and "(default: 128)" in text


@pytest.mark.parametrize("cls, skip", [("TrainConfig", ()), ("ScaffoldConfig", ("root_seed",))])
def test_every_settings_field_has_a_train_flag_with_the_fields_default_and_help(cls, skip):
    """The command line follows the settings: one flag per field, generated, so a new field reaches
    `reservoir-depth train` by itself, with the dataclass's own default (--rank had 4 to r's 8)."""
    import dataclasses

    from reservoir_depth.scaffold import ScaffoldConfig
    from reservoir_depth.train import TrainConfig

    klass = {"TrainConfig": TrainConfig, "ScaffoldConfig": ScaffoldConfig}[cls]
    train = parser()._subparsers._group_actions[0].choices["train"]
    by_dest = {a.dest: a for a in train._actions if a.option_strings}
    args = parser().parse_args(["train"])
    for f in dataclasses.fields(klass):
        if f.name in skip:
            continue
        assert f.name in by_dest and by_dest[f.name].help, f.name
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        parsed = getattr(args, f.name)
        assert parsed == ([] if isinstance(default, dict) else default), f.name


def test_generated_flags_reach_the_configs(monkeypatch):
    from reservoir_depth import cli

    seen = {}

    def spy(model, d, config):
        seen["train"], seen["scaffold"] = config, model.scaffold_config
        raise SystemExit(0)

    monkeypatch.setattr(cli, "train", spy)
    with pytest.raises(SystemExit):
        main(["train", "--hidden", "8", "--epochs", "2", "--weight-decay", "0.5", "--no-amp", "--beta-every", "3",
              "--rank", "2", "--alpha", "4", "--bias", "trainable", "--init-B", "kaiming", "--max-rank", "layers.0=1",
              "--dist", '{"name": "uniform", "gain": 2.0}', "--seed", "7"])
    tc, sc = seen["train"], seen["scaffold"]
    assert (tc.epochs, tc.weight_decay, tc.amp, tc.beta_every, tc.seed) == (2, 0.5, False, 3, 7)
    assert (sc.r, sc.alpha, sc.bias, sc.init_B, dict(sc.max_rank), sc.root_seed) == (2, 4.0, "trainable", "kaiming",
                                                                                      {"layers.0": 1}, 7)
    assert (sc.spec.name, sc.spec.gain) == ("uniform", 2.0)
    from reservoir_depth.models import build, scaffold_defaults
    assert sc.target_modules == scaffold_defaults(build("mlp", d_in=64, n_out=10, hidden=[8]))["target_modules"]


def test_train_on_a_regression_set_and_other_architectures(capsys):
    """n_out comes from the data set (regression sets have n_classes = 0), and --arch is honoured."""
    assert main(["train", "--data", "planted", "--hidden", "8", "--rank", "1", "--epochs", "1"]) == 0
    assert "regression, n_out=32" in capsys.readouterr().out
    assert main(["train", "--data", "digits", "--arch", "linear", "--rank", "1", "--epochs", "1",
                 "--batch-size", "512"]) == 0
    assert "beta/layer" in capsys.readouterr().out
    assert main(["train", "--arch", "linear", "--hidden", "small", "--epochs", "1"]) == 2
    assert "--hidden applies to --arch mlp only" in capsys.readouterr().err


def test_train_batch_size_reaches_training(monkeypatch):
    seen = {}
    train_mod = importlib.import_module("reservoir_depth.train")  # the module, not the function re-exported
    real = train_mod.train

    def spy(model, d, cfg):
        seen["batch_size"] = cfg.batch_size
        return real(model, d, cfg)

    monkeypatch.setattr(cli, "train", spy)  # the name the command calls
    assert main(["train", "--hidden", "tiny", "--rank", "1", "--epochs", "1", "--batch-size", "333"]) == 0
    assert seen == {"batch_size": 333}


def test_sweep_of_a_study_whose_runs_all_fail_exits_nonzero_and_says_why(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(data.FASHION_MNIST_ENV, str(tmp_path / "empty"))
    study = tmp_path / "s.toml"
    study.write_text(TINY.replace('"digits"', '"fashion-mnist"'))
    out = tmp_path / "out"
    assert main(["sweep", str(study), "--out", str(out), "--no-progress"]) == 1
    cap = capsys.readouterr()
    assert "1 failed" in cap.out and "apt-get install dataset-fashion-mnist" in cap.out
    assert main(["run", str(study), "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "every run that ran failed" in err and "apt-get install dataset-fashion-mnist" in err
    assert "run the sweep first" not in err and "--retry-failed" in err
    assert main(["report", str(study), "--out", str(out)]) == 1
    assert "every run that ran failed" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("runs.sqlite")) == []


def test_retry_failed_reruns_an_earlier_failure(tmp_path, monkeypatch, capsys):
    study = tmp_path / "s.toml"
    study.write_text(TINY)
    real = sweep_mod.execute

    def flaky(run, progress=False):
        raise RuntimeError("transient")

    monkeypatch.setattr(sweep_mod, "execute", flaky)
    assert main(["sweep", str(study), "--out", str(tmp_path), "--no-progress"]) == 1
    monkeypatch.setattr(sweep_mod, "execute", real)
    assert main(["sweep", str(study), "--out", str(tmp_path), "--no-progress"]) == 1  # not retried by default
    assert "1 failed in an earlier sweep" in capsys.readouterr().out
    assert main(["sweep", str(study), "--out", str(tmp_path), "--no-progress", "--retry-failed"]) == 0
    assert "1 run, 0 already done, 0 failed" in capsys.readouterr().out


def test_report_without_a_store_creates_nothing(tmp_path, capsys):
    study = tmp_path / "s.toml"
    study.write_text(TINY)
    assert main(["report", str(study), "--out", str(tmp_path / "none")]) == 2
    assert "no results store" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_workers_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "--workers", "0"])
    assert "must be an integer >= 1" in capsys.readouterr().err


def test_train_passes_arch_and_data_keywords_and_can_hide_progress(monkeypatch, capsys):
    """--arch-kw / --data-kw reach the builders (values read as JSON where they parse); --no-progress
    reaches TrainConfig."""
    seen = {}
    train_mod = importlib.import_module("reservoir_depth.train")
    real = train_mod.train

    def spy(model, d, cfg):
        seen.update(progress=cfg.progress, hidden=model.hidden, name=d.name, n=len(d.X_train))
        return real(model, d, cfg)

    monkeypatch.setattr(cli, "train", spy)  # the name the command calls
    assert main(["train", "--data", "planted", "--data-kw", "n_train=64", "--data-kw", "k=2",
                 "--arch-kw", "hidden=[6, 5]", "--arch-kw", "activation=tanh",
                 "--rank", "1", "--epochs", "1", "--no-progress"]) == 0
    assert seen == {"progress": False, "hidden": (6, 5), "name": seen["name"], "n": 64}
    with pytest.raises(SystemExit) as e:
        main(["train", "--data-kw", "nokey", "--epochs", "1"])
    assert e.value.code == 2
    assert "--data-kw takes KEY=VALUE, got 'nokey'" in capsys.readouterr().err
    assert main(["train", "--arch-kw", "depth=3", "--epochs", "1"]) == 2
    assert "depth" in capsys.readouterr().err


def _factory_file(tmp_path):
    f = tmp_path / "mymodel.py"
    f.write_text("import torch\nfrom torch import nn\n\n"
                 "def make():\n    torch.manual_seed(0)\n"
                 "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 10))\n"
                 "not_callable = 3\n")
    return f


def test_spectra_of_a_users_own_model(tmp_path, capsys):
    """`spectra --model FILE.py:FACTORY` reads a user's model (no adapter file needed)."""
    f = _factory_file(tmp_path)
    assert main(["spectra", "--data", "digits", "--model", f"{f}:make", "--rows", "200"]) == 0
    out = capsys.readouterr().out
    assert "| layer inputs" in out and "| 1 " in out and "| 3 " in out  # both Linear layers, by name
    assert main(["spectra", "--model", f"{f}:nothing"]) == 2
    assert "has no attribute 'nothing'" in capsys.readouterr().err
    assert main(["spectra", "--model", f"{f}:not_callable"]) == 2
    err = capsys.readouterr().err
    assert "not_callable" in err and "is not callable" in err
    assert main(["spectra", "--model", "no_colon_here"]) == 2
    assert "MODULE:CALLABLE" in capsys.readouterr().err


def test_train_takes_the_families_declared_specs(monkeypatch):
    """A reservoir declares the spectral-radius rule for its recurrent weight: `train` must pass it on."""
    seen = {}
    scaffold_mod = importlib.import_module("reservoir_depth.scaffold")
    real = scaffold_mod.scaffold

    def spy(model, config):
        seen["specs"] = dict(config.specs)
        raise ValueError("stop here")

    monkeypatch.setattr(cli, "scaffold", spy)
    assert main(["train", "--data", "mackey-glass", "--arch", "reservoir", "--epochs", "1"]) == 2
    (spec,) = seen["specs"].values()
    assert spec.scaling == "spectral_radius"


def test_train_passes_compile_and_seed_dtype_to_the_training_config(monkeypatch, capsys):
    train_mod = importlib.import_module("reservoir_depth.train")  # the module (the package exports the function)
    seen = []
    real = train_mod.train

    def spy(model, d, config):
        seen.append(config)
        return real(model, d, config)

    monkeypatch.setattr(cli, "train", spy)  # the name the command calls
    monkeypatch.setattr(train_mod.torch, "compile", lambda m, *a, **k: m)  # the wiring, not a compiler
    assert main(["train", "--data", "digits", "--hidden", "8", "--rank", "1", "--epochs", "1", "--no-progress",
                 "--compile", "--seed-dtype", "bfloat16"]) == 0
    assert seen[-1].compile is True and seen[-1].seed_dtype == "bfloat16"
    assert main(["train", "--data", "digits", "--hidden", "8", "--rank", "1", "--epochs", "1", "--no-progress"]) == 0
    assert seen[-1].compile is False and seen[-1].seed_dtype is None
    with pytest.raises(SystemExit) as e:
        main(["train", "--seed-dtype", "int8"])
    assert e.value.code == 2 and "--seed-dtype: invalid choice: 'int8'" in capsys.readouterr().err


def test_train_defaults_are_train_configs():
    """One set of defaults: `reservoir-depth train` takes TrainConfig's (it had 10 epochs to TrainConfig's 20),
    and TrainConfig's docstring states them."""
    from reservoir_depth.train import TrainConfig

    args = parser().parse_args(["train"])
    tc = TrainConfig()
    assert (args.epochs, args.lr, args.batch_size, args.seed) == (tc.epochs, tc.lr, tc.batch_size, tc.seed)
    doc = " ".join(TrainConfig.__doc__.split())
    assert f"epochs={tc.epochs}" in doc and f"batch_size={tc.batch_size}" in doc and f"lr={tc.lr:g}" in doc


def test_cli_imports_at_the_top():
    """The house rule: function-local imports only for optional dependencies (cli.py had ~15 that saved no
    start-up time)."""
    import ast

    optional = {"transformers", "peft", "ray", "reservoirpy", "mnist1d", "tensorboard"}
    tree = ast.parse(importlib.util.find_spec("reservoir_depth.cli").loader.get_source("reservoir_depth.cli"))
    local = []
    for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
        for node in ast.walk(fn):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            else:
                continue
            local += [f"{fn.name}: {n}" for n in names if n.split(".")[0] not in optional]
    assert not local, local
