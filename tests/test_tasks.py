"""The trainer's tasks (tasks.TASKS): next-token language modelling, sequence classification with
padding, and forecasting (teacher-forced and free-running NRMSE after a washout), checked with tiny
hand-written models against metrics computed by hand."""

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from reservoir_depth import data
from reservoir_depth.data import Dataset
from reservoir_depth.models import ARCHITECTURES
from reservoir_depth.results import ResultsStore
from reservoir_depth.study import Study
from reservoir_depth.run import Run
from reservoir_depth.sweep import dataset_rows, execute, run_study
from conftest import make_blobs
from reservoir_depth.tasks import METRICS, TASKS, Metric, metric_of, stored_metrics
from reservoir_depth.train import TrainConfig, evaluate, free_run, train

CFG = TrainConfig(epochs=3, batch_size=16, lr=2e-2, progress=False)


# ----------------------------------------------------------------------------- tiny models

class CharLM(nn.Module):
    """Two layers: a token embedding and a linear read-out of next-token logits (a bigram model)."""

    scaffold_targets = ("head",)
    scaffold_trainable = ("emb",)

    def __init__(self, d_in: int, n_out: int, hidden: int = 16) -> None:
        super().__init__()
        self.emb, self.head = nn.Embedding(d_in, hidden), nn.Linear(hidden, n_out)

    def forward(self, x):
        return self.head(self.emb(x))


class BagOfTokens(nn.Module):
    """Mean of the embeddings of the non-padding tokens, then a linear classifier."""

    def __init__(self, vocab: int, n_classes: int, pad_id: int, hidden: int = 16) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.emb, self.head = nn.Embedding(vocab, hidden), nn.Linear(hidden, n_classes)

    def forward(self, x):
        keep = (x != self.pad_id).unsqueeze(-1).float()
        return self.head((self.emb(x) * keep).sum(1) / keep.sum(1).clamp(min=1))


class TinyRNN(nn.Module):
    """h_t = tanh(W_in x_t + W h_{t-1}), y_t = W_out h_t; forward unrolls step over time."""

    scaffold_targets = ("inp", "rec")
    scaffold_trainable = ("out",)

    def __init__(self, d_in: int, n_out: int, units: int = 24) -> None:
        super().__init__()
        self.units = units
        self.inp, self.rec, self.out = nn.Linear(d_in, units), nn.Linear(units, units, bias=False), nn.Linear(units, n_out)

    def step(self, x_t, state):
        state = torch.zeros(len(x_t), self.units) if state is None else state
        state = torch.tanh(self.inp(x_t) + self.rec(state))
        return self.out(state), state

    def forward(self, x):
        state, outs = None, []
        for t in range(x.shape[1]):
            y_t, state = self.step(x[:, t], state)
            outs.append(y_t)
        return torch.stack(outs, 1)


class Pointwise(nn.Module):
    """A forecaster without step: a linear map of each x_t."""

    def __init__(self, d: int = 1) -> None:
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x):
        return self.lin(x)


class Logistic(nn.Module):
    """x_{t+1} = r x_t (1 - x_t), with r slightly off (so teacher-forced it is almost perfect)."""

    def __init__(self, r: float) -> None:
        super().__init__()
        self.r = nn.Parameter(torch.tensor(r, dtype=torch.float64))

    def forward(self, x):
        return self.r * x * (1 - x)

    def step(self, x_t, state):
        return self.forward(x_t), state


class Lookup(nn.Module):
    """Returns a fixed prediction per window: X[:, 0, 0] holds the window's index into ``pred``."""

    def __init__(self, pred: torch.Tensor) -> None:
        super().__init__()
        self.pred = nn.Parameter(pred.clone(), requires_grad=False)

    def forward(self, x):
        return self.pred[x[:, 0, 0].long()]


# ----------------------------------------------------------------------------- tiny data

def char_data(n=96, n_test=32, T=12, vocab=7, seed=0) -> Dataset:
    """Tokens that mostly step by +1 (mod vocab), y[:, t] the token after X[:, t]."""
    g = torch.Generator().manual_seed(seed)
    s = torch.zeros(n + n_test, T + 1, dtype=torch.int64)
    s[:, 0] = torch.randint(0, vocab, (n + n_test,), generator=g)
    for t in range(T):
        jump = torch.rand(n + n_test, generator=g) < 0.1
        s[:, t + 1] = torch.where(jump, torch.randint(0, vocab, (n + n_test,), generator=g), (s[:, t] + 1) % vocab)
    return Dataset("tiny-char", s[:n, :-1], s[:n, 1:], s[n:, :-1], s[n:, 1:], vocab, task="lm", vocab_size=vocab)


def series_data(n=48, n_test=16, T=40, washout=5, seed=0, name="sines") -> Dataset:
    """Windows of sines of random phase and frequency: X[:, t] = s_t, y[:, t] = s_{t+1}."""
    g = torch.Generator().manual_seed(seed)
    phase = 2 * math.pi * torch.rand(n + n_test, 1, generator=g)
    freq = 0.2 + 0.2 * torch.rand(n + n_test, 1, generator=g)
    s = torch.sin(phase + freq * torch.arange(T + 1)).unsqueeze(-1)
    X, y = s[:, :-1].contiguous(), s[:, 1:].contiguous()
    return Dataset(name, X[:n], y[:n], X[n:], y[n:], 0, task="forecasting", washout=washout)


def logistic_series(n=8, T=60, r=3.9, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = torch.empty(n, T + 1, 1, dtype=torch.float64)
    s[:, 0, 0] = 0.2 + 0.6 * torch.rand(n, generator=g, dtype=torch.float64)
    for t in range(T):
        s[:, t + 1] = r * s[:, t] * (1 - s[:, t])
    return s


# ----------------------------------------------------------------------------- language modelling

def test_lm_loss_is_cross_entropy_over_every_position_and_bpc_its_bits():
    d = char_data()
    torch.manual_seed(0)
    m = CharLM(d.vocab_size, d.vocab_size)
    ev = evaluate(m, d.X_test, d.y_test, batch_size=5, task="lm")  # batches of 5 windows: a ragged last batch
    logits = m(d.X_test).double()
    by_hand = np.mean([-(logits[i, t].log_softmax(-1)[d.y_test[i, t]]).item()
                       for i in range(len(d.X_test)) for t in range(d.X_test.shape[1])])
    assert ev["loss"] == pytest.approx(by_hand, rel=1e-6)
    assert ev["bpc"] == pytest.approx(by_hand / math.log(2), rel=1e-6)
    assert "acc" not in ev  # an lm study's metric is its bits per character (Study.metric)


def test_tiny_lm_trains_and_records_bpc_and_throughput():
    d = char_data()
    torch.manual_seed(0)
    h = train(CharLM(d.vocab_size, d.vocab_size), d, CFG)
    first, last = h.epochs[0], h.final
    assert last["test_loss"] < 0.6 * first["test_loss"]  # chance is ln 7 = 1.95 nats; the bigram rule is learnable
    assert last["train_loss"] < h.epochs[1]["train_loss"]
    for e in h.epochs:
        assert e["test_bpc"] == pytest.approx(e["test_loss"] / math.log(2))
    assert math.isnan(first["tokens_per_s"])  # no training before epoch 1
    assert all(e["tokens_per_s"] > 0 and math.isfinite(e["tokens_per_s"]) for e in h.epochs[1:])
    assert h.epochs[1]["tokens_per_s"] == pytest.approx(d.X_train.numel() / h.epochs[1]["seconds"])


def test_lm_output_of_the_wrong_shape_is_refused_naming_the_model():
    class Pooled(CharLM):
        def forward(self, x):
            return super().forward(x).mean(1)  # (B, V): a classifier's output, not per position

    d = char_data()
    with pytest.raises(ValueError, match=r"Pooled returned logits of shape \(16, 7\) for labels of shape \(16, 12\); "
                                         r"logits must be \(16, 12, n_classes\)"):
        train(Pooled(d.vocab_size, d.vocab_size), d, CFG)


def test_lm_output_narrower_than_the_vocabulary_is_refused():
    d = char_data()
    with pytest.raises(ValueError, match=r"CharLM returned 5 logits per position, but a label is 6"):
        train(CharLM(d.vocab_size, 5), d, CFG)


class WithLogits(CharLM):
    """Returns its logits the way a transformers model does: an object with a .logits attribute."""

    def forward(self, x):
        return SimpleNamespace(logits=super().forward(x), past_key_values=None)


def test_a_model_returning_an_object_with_logits_trains_like_one_returning_them():
    d = char_data()
    torch.manual_seed(0)
    plain = train(CharLM(d.vocab_size, d.vocab_size), d, CFG).to_frame().drop(columns=["seconds", "tokens_per_s"])
    torch.manual_seed(0)
    wrapped = train(WithLogits(d.vocab_size, d.vocab_size), d, CFG).to_frame().drop(columns=["seconds",
                                                                                           "tokens_per_s"])
    pd.testing.assert_frame_equal(plain, wrapped)


def test_an_output_without_a_tensor_is_refused_naming_its_type():
    class Pair(CharLM):
        def forward(self, x):
            return super().forward(x), None

    d = char_data()
    with pytest.raises(ValueError, match=r"Pair returned a tuple; the trainer needs a tensor, or an object with a "
                                         r"\.logits tensor"):
        train(Pair(d.vocab_size, d.vocab_size), d, CFG)


# ----------------------------------------------------------------------------- sequence classification

def test_token_classification_with_padding_trains():
    g = torch.Generator().manual_seed(0)
    vocab, pad, T, n = 10, 0, 16, 256
    y = torch.randint(0, 2, (n,), generator=g)
    tokens = torch.randint(1, 5, (n, T), generator=g) + 4 * y[:, None]  # class 0: 1-4, class 1: 5-8
    noise = torch.rand(n, T, generator=g) < 0.25
    tokens = torch.where(noise, torch.randint(1, vocab, (n, T), generator=g), tokens)
    lengths = torch.randint(2, T + 1, (n,), generator=g)
    X = torch.where(torch.arange(T) < lengths[:, None], tokens, torch.full_like(tokens, pad))  # right-padded
    d = Dataset("tokens", X[:192], y[:192], X[192:], y[192:], 2, vocab_size=vocab, pad_id=pad)
    torch.manual_seed(0)
    h = train(BagOfTokens(vocab, 2, pad), d, CFG)
    assert h.final["test_loss"] < h.epochs[0]["test_loss"] and h.final["test_acc"] > 0.9
    assert "test_bpc" not in h.final and "tokens_per_s" not in h.final


# ----------------------------------------------------------------------------- forecasting

def _lookup_eval(pred, y, washout, **kw):
    X = torch.zeros(len(y), y.shape[1], 1)
    X[:, 0, 0] = torch.arange(len(y), dtype=torch.float32)
    return evaluate(Lookup(pred), X, y, batch_size=3, task="forecasting", washout=washout, **kw)


def test_nrmse_of_a_perfect_predictor_is_0_and_of_the_mean_is_1():
    y = torch.randn(7, 20, 2) * torch.tensor([1.0, 3.0]) + 5
    assert _lookup_eval(y, y, washout=4)["nrmse"] == 0
    mean = y[:, 4:].mean().expand_as(y)
    ev = _lookup_eval(mean, y, washout=4)
    assert ev["nrmse"] == pytest.approx(1.0, rel=1e-5)
    assert ev["loss"] == pytest.approx(float(y[:, 4:].double().var(unbiased=False)), rel=1e-5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), washout=st.integers(0, 9), d=st.integers(1, 3))
def test_nrmse_is_rmse_over_std_after_the_washout(seed, washout, d):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(5, 10, d, generator=g)
    pred = y + 0.3 * torch.randn(5, 10, d, generator=g)
    ev = _lookup_eval(pred, y, washout)
    err, tgt = (pred - y)[:, washout:].double().numpy(), y[:, washout:].double().numpy()
    assert ev["loss"] == pytest.approx(np.mean(err ** 2), rel=1e-5)
    assert ev["nrmse"] == pytest.approx(np.sqrt(np.mean(err ** 2)) / np.std(tgt), rel=1e-5)
    # predictions inside the washout do not count
    changed = pred.clone()
    changed[:, :washout] += 100 * torch.randn(5, washout, d, generator=g)
    assert _lookup_eval(changed, y, washout) == pytest.approx(ev, rel=1e-6)


def test_free_running_feeds_the_models_own_predictions_back():
    class PlusOne(Pointwise):
        def forward(self, x):
            return x + 1

        def step(self, x_t, state):
            return x_t + 1, state

    X = torch.randn(3, 8, 2)
    washout = 3
    pred = free_run(PlusOne(2), X, washout)
    assert torch.equal(pred[:, :washout], X[:, :washout] + 1)  # teacher-forced through the washout
    for t in range(washout, 8):  # then each step reads the previous prediction
        assert torch.allclose(pred[:, t], X[:, washout - 1] + 1 + (t - washout + 1))
    assert torch.equal(free_run(PlusOne(2), X, 0)[:, 0], X[:, 0] + 1)  # washout 0: the first input is still real


def test_a_model_good_teacher_forced_that_drifts_free_running_shows_it():
    s = logistic_series()
    X, y = s[:, :-1], s[:, 1:]
    exact = evaluate(Logistic(3.9), X, y, task="forecasting", washout=5, free=True)
    assert exact["nrmse"] < 1e-6 and exact["nrmse_free"] < 1e-6  # float32 outputs
    off = evaluate(Logistic(3.9 + 1e-4), X, y, task="forecasting", washout=5, free=True)
    assert off["nrmse"] < 1e-3  # one step at a time it is nearly exact
    assert off["nrmse_free"] > 0.3  # fed its own outputs, the chaotic map's error grows to the series' scale


def test_forecasting_trains_and_records_teacher_forced_and_free_running_nrmse():
    d = series_data()
    torch.manual_seed(0)
    h = train(TinyRNN(1, 1), d, TrainConfig(epochs=4, batch_size=8, lr=2e-2, progress=False))
    assert h.final["test_loss"] < 0.5 * h.epochs[0]["test_loss"]
    for e in h.epochs:
        assert e["test_nrmse"] == pytest.approx(math.sqrt(e["test_loss"]) / float(
            d.y_test[:, d.washout:].double().std(unbiased=False)))
        assert math.isfinite(e["test_nrmse_free"])
    assert "test_acc" not in h.final and "test_bpc" not in h.final


def test_free_running_without_step_is_refused_naming_the_model():
    d = series_data()
    with pytest.raises(TypeError, match=r"Pointwise has no step\(x_t, state\).*free_run = False"):
        train(Pointwise(), d, CFG)
    h = train(Pointwise(), d, TrainConfig(**{**CFG.__dict__, "free_run": False}))
    assert "test_nrmse" in h.final and "test_nrmse_free" not in h.final


def _driven() -> Dataset:
    d = series_data()
    return Dataset("driven", torch.randn_like(d.X_train), d.y_train, torch.randn_like(d.X_test), d.y_test, 0,
                   task="forecasting", washout=d.washout)


def test_free_running_a_driven_series_is_refused_when_asked_for_and_left_out_by_default():
    d = _driven()
    with pytest.raises(ValueError, match=r"dataset 'driven': its inputs are not the series' own past"):
        train(TinyRNN(1, 1), d, TrainConfig(**{**CFG.__dict__, "free_run": True}))
    h = train(TinyRNN(1, 1), d, CFG)  # free_run None: free-running only where it is defined
    assert "test_nrmse" in h.final and "test_nrmse_free" not in h.final


def test_free_run_setting_is_checked():
    with pytest.raises(ValueError, match="free_run must be True, False or None .*got 1"):
        TrainConfig(free_run=1)


# ----------------------------------------------------------------------------- studies and the store

def test_free_run_enters_a_runs_config_only_when_set():
    """Settings added to TrainConfig after runs were stored must not change those runs' ids."""
    run = Run("s", "digits", {"name": "mlp"}, "full", 0)
    assert "free_run" not in run.config()["train"]
    off = Run("s", "digits", {"name": "mlp"}, "full", 0, train={"free_run": False})
    assert off.config()["train"]["free_run"] is False and off.run_id != run.run_id


@pytest.fixture
def tiny_registry(monkeypatch):
    monkeypatch.setitem(data.DATASETS, "tiny-char", char_data)
    monkeypatch.setitem(data.DATASETS, "sines", series_data)
    monkeypatch.setitem(ARCHITECTURES, "tiny-charlm", CharLM)
    monkeypatch.setitem(ARCHITECTURES, "tiny-rnn", TinyRNN)


@pytest.mark.parametrize("dataset,arch,r,recorded", [
    ("tiny-char", "tiny-charlm", 2, ("test_bpc", "tokens_per_s")),
    ("sines", "tiny-rnn", 1, ("test_nrmse", "test_nrmse_free")),  # r <= d_in = 1 for the input weight
])
def test_sweep_records_the_tasks_metrics_and_spectra(tmp_path, tiny_registry, dataset, arch, r, recorded):
    study = Study.from_dict({"study": f"tiny-{arch}", "dataset": dataset, "arch": {"name": arch}, "seeds": [0],
                             "ranks": [r], "spectra": ["lotta"], "train": {"epochs": 2, "batch_size": 16}})
    store = ResultsStore(tmp_path / "r.sqlite", create=True)
    counts = run_study(study, store, progress=False)
    assert counts.failed == 0, [r["error"] for r in store.rows(study.study)]
    df = study.frame(store)
    assert len(df) == 2 and "test_acc" not in df
    for k in recorded:
        assert df[k].notna().all() and np.isfinite(df[k]).all()
    lotta = df[df["cfg.method"] == "lotta"].iloc[0]
    assert any(c.startswith("act/") for c in df.columns if lotta[c] == lotta[c])
    rows = store.history(lotta["run_id"])["dataset"]["rows"]
    assert rows  # the data set's own spectra, or the reason there are none


def test_dataset_rows_of_token_inputs_say_why_there_is_no_input_spectrum():
    d = char_data()
    rows, inputs = dataset_rows(d, d.X_train)
    assert len(inputs) == 0 and len(rows) == 1
    assert "token ids" in rows[0]["spectrum"] and "no input PCA" in rows[0]["spectrum"]


def test_dataset_rows_of_a_series_take_time_steps_as_rows():
    d = series_data()
    rows, inputs = dataset_rows(d, d.X_train)
    assert len(inputs) == 1  # one input dimension: x_t
    assert rows[1]["spectrum"].startswith("Cov(x, y)")
    assert all(r["d"] == 1 for r in rows[2:])


def test_registry_holds_the_pinned_tasks():
    assert set(TASKS) == {"classification", "regression", "lm", "forecasting", "node-classification"}
    with pytest.raises(ValueError, match=r"task must be one of .*got 'translation'"):
        evaluate(CharLM(3, 3), torch.zeros(2, 4, dtype=torch.int64), torch.zeros(2, 4, dtype=torch.int64),
                 task="translation")


# ----------------------------------------------------------------------------- headline metrics

def test_every_task_declares_a_registered_headline_among_what_it_measures():
    for task in TASKS.values():
        assert task.headline in task.measures and set(task.measures) <= set(METRICS), task.name
    assert {t: TASKS[t].headline for t in TASKS} == {"classification": "test_acc", "regression": "test_loss",
                                                     "lm": "test_bpc", "forecasting": "test_nrmse",
                                                     "node-classification": "test_bacc"}


@pytest.mark.parametrize("dataset, metric", [
    ("digits", "test_acc"), ("fashion-mnist", "test_acc"), ("shakespeare-char", "test_bpc"),
    ("shakespeare-milton", "test_acc"), ("lorenz", "test_nrmse"), ("mackey-glass", "test_nrmse"),
    ({"name": "planted", "k": 2}, "test_loss"), ("pattern", "test_bacc"), ("sbm-communities", "test_acc")])
def test_a_study_ranks_by_its_tasks_headline_without_loading_its_data(dataset, metric, monkeypatch):
    """One answer to "which metric": Study.metric, from the task its data set's loader declares."""
    import reservoir_depth.run as run_module

    monkeypatch.setattr(run_module, "load", lambda *a, **k: pytest.fail("the data set was loaded"))
    study = Study.from_dict({"study": "s", "dataset": dataset, "seeds": [0], "arch": {"name": "mlp", "hidden": [4]}})
    assert study.metric.name == metric


def test_a_study_on_an_undeclared_data_set_reads_its_task_from_the_data(monkeypatch):
    monkeypatch.setitem(data.DATASETS, "blobs-undeclared", lambda: make_blobs())
    study = Study.from_dict({"study": "s", "dataset": "blobs-undeclared", "seeds": [0], "arch": {"name": "mlp", "hidden": [4]}})
    assert study.task == "classification" and study.metric.name == "test_acc"


def test_a_metric_added_to_the_registry_is_stored_by_the_next_run(monkeypatch):
    """The stored metrics derive from METRICS: a new metric a task measures reaches the store, never
    computed every epoch and silently dropped."""
    monkeypatch.setitem(METRICS, "test_margin", Metric("test_margin", True, "logit margin", "{:.3g}"))
    cls = type(TASKS["classification"])
    plain = cls.metrics
    monkeypatch.setattr(cls, "metrics", lambda self, sums, y, washout=0: {**plain(self, sums, y, washout), "margin": 0.5})
    monkeypatch.setitem(data.DATASETS, "blobs-margin", lambda: make_blobs())
    assert "test_margin" in stored_metrics()
    run = Run(study="s", dataset="blobs-margin", arch={"name": "mlp", "hidden": [4]}, method="full", seed=0,
              train={"epochs": 1, "batch_size": 64})
    metrics, _ = execute(run)
    assert metrics["test_margin"] == 0.5 and "test_acc" in metrics and "train_loss" in metrics


def test_every_rate_a_task_returns_is_stored():
    assert "tokens_per_s" in stored_metrics() and set(METRICS) <= set(stored_metrics())


@pytest.mark.parametrize("margin, n_test, tie", [(0.0049, 200, True), (0.005, 200, False), (0.0051, 200, False),
                                                 (0.0, 200, True), (0.001, None, False), (math.inf, 200, False)])
def test_a_counted_metric_ties_below_one_test_example_per_seed(margin, n_test, tie):
    assert metric_of("test_acc").is_tie(margin, n_test) is tie
    assert metric_of("test_loss").is_tie(margin, n_test) is False  # a loss is not counted in examples


@pytest.mark.parametrize("metric, higher", [("test_acc", True), ("test_bacc", True), ("test_loss", False), ("test_bpc", False),
                                            ("test_nrmse", False), ("test_nrmse_free", False)])
def test_metric_direction(metric, higher):
    assert metric_of(metric).higher_is_better is higher


def test_an_unknown_metric_is_refused_naming_the_allowed_ones():
    with pytest.raises(ValueError, match="'test_f1'.*allowed: test_acc"):
        metric_of("test_f1")


@pytest.mark.parametrize("metric, higher, kind, eps", [
    ("test_acc", True, "absolute", 0.01), ("test_loss", False, "relative", 0.05),
    ("test_bpc", False, "relative", 0.05), ("test_nrmse", False, "relative", 0.05),
    ("test_nrmse_free", False, "relative", 0.05)])
def test_each_metric_declares_its_direction_tolerance_kind_and_headline_eps(metric, higher, kind, eps):
    m = metric_of(metric)
    assert (m.higher_is_better, m.tolerance, m.headline_eps) == (higher, kind, eps)
    assert m.headline_eps in m.eps


def test_a_metric_with_an_unknown_tolerance_kind_is_refused():
    from reservoir_depth.tasks import Metric
    with pytest.raises(ValueError, match="tolerance must be one of.*'points'"):
        Metric("test_x", False, "units", "{:g}", tolerance="points")


def test_every_run_records_what_decides_its_numbers(monkeypatch):
    """Two stores with the same config and seed agree or say why: each run records torch's thread count,
    the deterministic flag, the BLAS and the library versions."""
    from reservoir_depth.results import Columns

    monkeypatch.setitem(data.DATASETS, "blobs-env", lambda: make_blobs())
    run = Run(study="s", dataset="blobs-env", arch={"name": "mlp", "hidden": [4]}, method="full", seed=0,
              train={"epochs": 1, "batch_size": 64})
    torch.set_num_threads(1)
    metrics, _ = execute(run)
    assert metrics[Columns.ENV + "threads"] == 1 and metrics[Columns.ENV + "torch"] == torch.__version__
    assert metrics[Columns.ENV + "numpy"] == np.__version__ and Columns.ENV + "blas" in metrics


def test_the_null_model_is_the_best_constant_predictor_fitted_on_training():
    """Classification: the majority training class and the add-one smoothed class frequencies; lm: the
    unigram; regression: the training mean; forecasting: the better of the mean and persistence forecasts."""
    Xtr, Xte = torch.zeros(6, 2), torch.zeros(4, 2)
    d = Dataset("c", Xtr, torch.tensor([0, 0, 0, 1, 1, 2]), Xte, torch.tensor([0, 1, 2, 2]), 3)
    p = torch.tensor([4.0, 3.0, 2.0]) / 9
    null = TASKS["classification"].null(d)
    assert null["test_acc"] == pytest.approx(0.25)  # class 0 predicted, one of the four test labels
    assert null["test_loss"] == pytest.approx(float(-(p[[0, 1, 2, 2]].log()).mean()))
    r = Dataset("r", Xtr, torch.arange(12.0).reshape(6, 2), Xte, torch.ones(4, 2), 0, task="regression")
    assert TASKS["regression"].null(r)["test_loss"] == pytest.approx(float(((torch.ones(2) - torch.tensor([5.0, 6.0])) ** 2).sum()))
    series = torch.sin(torch.linspace(0, 20, 61)).reshape(1, 61, 1)
    X, y = series[:, :-1].repeat(2, 1, 1), series[:, 1:].repeat(2, 1, 1)
    f = Dataset("f", X, y, X, y, 0, task="forecasting", washout=5)
    out = TASKS["forecasting"].null(f)
    persistence = float((X[:, 5:] - y[:, 5:]).pow(2).mean())
    assert out["test_loss"] == pytest.approx(persistence) and out["test_nrmse_free"] > out["test_nrmse"]


def test_the_null_model_of_node_classification_leaves_the_padding_out():
    """Padding nodes (label -1) are no class: the constant predictor's balanced accuracy is 1 / the classes
    present, its accuracy the majority class's share of the real test nodes."""
    y_train = torch.tensor([[0, 0, 1, -1], [0, 1, -1, -1]])
    y_test = torch.tensor([[0, 1, 1, -1], [1, -1, -1, -1]])
    d = SimpleNamespace(y_train=y_train, y_test=y_test, n_classes=2)
    null = TASKS["node-classification"].null(d)
    assert null["test_acc"] == pytest.approx(1 / 4) and null["test_bacc"] == pytest.approx(0.5)
    assert math.isfinite(null["test_loss"])
