"""Tests of reservoir_depth.spectra: spectral measures, streaming covariance, activation / task / weight spectra."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import ortho_group
from torch import nn

from reservoir_depth.scaffold import ScaffoldConfig, merge, scaffold, scaffold_layers
from reservoir_depth.spectra import (
    ActivationSpectra,
    IntrinsicDimension,
    Spectrum,
    StreamingCovariance,
    TaskSpectrum,
    WeightSpectra,
    entropy_effective_rank,
    explained_variance_ratio,
    k_tau,
    participation_ratio,
    stable_rank,
)

FAST = settings(deadline=None, max_examples=25)
TAUS = (0.5, 0.9, 0.95, 0.99, 1.0)


def anisotropic(seed: int, n: int, d: int) -> np.ndarray:
    """n rows in R^d with column scales spread over two decades, then mixed."""
    rng = np.random.default_rng(seed)
    Q = ortho_group.rvs(d, random_state=seed)
    return rng.standard_normal((n, d)) * np.logspace(0, -2, d) @ Q + rng.normal(size=d)


def measures(s: Spectrum) -> np.ndarray:
    return np.array([s.participation_ratio, s.entropy_effective_rank, s.stable_rank])


def cov0(X: np.ndarray) -> np.ndarray:
    return np.atleast_2d(np.cov(X, rowvar=False, ddof=0))


# ----------------------------------------------------------------------------- measures


spectra_st = st.lists(st.floats(0, 1e3, allow_nan=False), min_size=1, max_size=30).filter(lambda v: max(v) > 0)


@FAST
@given(spectra_st)
def test_explained_variance_ratio_is_a_sorted_distribution(lam):
    p = explained_variance_ratio(lam)
    assert p.shape == (len(lam),)
    assert np.all(p >= 0)
    assert np.all(np.diff(p) <= 0)
    assert p.sum() <= 1 + 1e-12
    assert p.sum() == pytest.approx(1, abs=1e-12)


@FAST
@given(spectra_st)
def test_k_tau_is_monotone_in_tau_and_at_most_d(lam):
    ks = [k_tau(lam, t) for t in (0.01, 0.3, 0.5, 0.9, 0.95, 0.99, 1.0)]
    assert all(1 <= k <= len(lam) for k in ks)
    assert ks == sorted(ks)
    p = np.cumsum(explained_variance_ratio(lam))
    for t, k in zip((0.3, 0.9), ks[1:4:2]):  # k is the first index reaching tau
        assert p[k - 1] >= t - 1e-12 and (k == 1 or p[k - 2] < t)


def test_k_tau_on_known_spectra():
    assert k_tau([5, 3, 2], 0.5) == 1
    assert k_tau([5, 3, 2], 0.8) == 2  # 0.8 exactly reached at k = 2
    assert k_tau([5, 3, 2], 0.81) == 3
    assert k_tau(np.ones(10), 0.9) == 9  # isotropic: 9 / 10 is 0.9 up to round-off
    assert k_tau([1, 0, 0], 1.0) == 1


@pytest.mark.parametrize("tau", [0, -0.1, 1.5, float("nan"), True, "0.9"])
def test_k_tau_rejects_tau_outside_unit_interval(tau):
    with pytest.raises(ValueError, match="tau"):
        k_tau([3, 2, 1], tau)
    with pytest.raises(ValueError, match="tau"):
        Spectrum(np.array([3.0, 2, 1])).k_tau(tau)


@FAST
@given(st.integers(0, 10_000), st.integers(20, 60), st.integers(2, 12))
def test_spectrum_and_measures_are_rotation_invariant(seed, n, d):
    X = anisotropic(seed, n, d)
    Q = ortho_group.rvs(d, random_state=seed + 1)
    a, b = Spectrum.from_covariance(cov0(X)), Spectrum.from_covariance(cov0(X @ Q))
    np.testing.assert_allclose(b.eigenvalues, a.eigenvalues, rtol=0, atol=1e-10 * a.eigenvalues[0])
    np.testing.assert_allclose(measures(b), measures(a), rtol=1e-8)
    assert [b.k_tau(t) for t in TAUS[:-1]] == [a.k_tau(t) for t in TAUS[:-1]]
    np.testing.assert_allclose(Spectrum.from_matrix(X @ Q).eigenvalues, Spectrum.from_matrix(X).eigenvalues,
                               rtol=1e-9, atol=1e-9 * Spectrum.from_matrix(X).eigenvalues[0])


@FAST
@given(st.integers(0, 10_000), st.integers(2, 12), st.floats(1e-3, 1e3))
def test_measures_are_scale_invariant_and_eigenvalues_scale_by_c_squared(seed, d, c):
    X = anisotropic(seed, 40, d)
    a, b = Spectrum.from_covariance(cov0(X)), Spectrum.from_covariance(cov0(c * X))
    np.testing.assert_allclose(b.eigenvalues, c**2 * a.eigenvalues, rtol=0, atol=1e-10 * c**2 * a.eigenvalues[0])
    np.testing.assert_allclose(measures(b), measures(a), rtol=1e-8)
    assert [b.k_tau(t) for t in TAUS[:-1]] == [a.k_tau(t) for t in TAUS[:-1]]


@FAST
@given(spectra_st)
def test_effective_ranks_lie_in_one_to_d(lam):
    d = len(lam)
    for f in (participation_ratio, entropy_effective_rank, stable_rank):
        assert 1 - 1e-12 <= f(lam) <= d + 1e-9
    assert participation_ratio(lam) <= entropy_effective_rank(lam) + 1e-9  # Renyi-2 <= Shannon


@pytest.mark.parametrize("d", [1, 2, 7, 50])
def test_effective_ranks_of_isotropic_and_rank_one_spectra(d):
    iso, one = 3.7 * np.ones(d), np.r_[2.5, np.zeros(d - 1)]
    for f in (participation_ratio, entropy_effective_rank, stable_rank):
        assert f(iso) == pytest.approx(d, rel=1e-12)
        assert f(one) == pytest.approx(1, rel=1e-12)
    assert participation_ratio([3.0, 1.0]) == pytest.approx(16 / 10)
    assert entropy_effective_rank([1.0, 1.0, 2.0]) == pytest.approx(np.exp(1.5 * np.log(2)))
    assert stable_rank([4.0, 1.0, 1.0]) == pytest.approx(1.5)


def test_zero_spectrum_gives_zero_measures_without_warnings():
    s = Spectrum(np.zeros(4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(s.explained_variance_ratio, np.zeros(4))
        assert s.k_tau(0.9) == 0 and s.rank() == 0
        assert s.participation_ratio == s.entropy_effective_rank == s.stable_rank == 0.0
        summary = s.summary()
    assert summary == {"k_0.9": 0, "k_0.95": 0, "k_0.99": 0, "participation_ratio": 0.0, "entropy_rank": 0.0,
                       "stable_rank": 0.0, "rank": 0, "d": 4}


def test_spectrum_sorts_clips_round_off_and_is_read_only():
    s = Spectrum(np.array([1.0, -1e-17, 3.0, 2.0]))
    np.testing.assert_array_equal(s.eigenvalues, [3.0, 2.0, 1.0, 0.0])
    assert s.eigenvalues.dtype == np.float64 and s.d == 4
    with pytest.raises(ValueError):
        s.eigenvalues[0] = 1.0
    with pytest.raises(ValueError, match="non-negative"):
        Spectrum(np.array([1.0, -0.5]))
    with pytest.raises(ValueError, match="1-D"):
        Spectrum(np.eye(2))
    with pytest.raises(ValueError, match="finite"):
        participation_ratio([1.0, np.nan])


def test_from_matrix_and_from_covariance_agree():
    M = np.random.default_rng(0).standard_normal((5, 8))
    a, b = Spectrum.from_matrix(M), Spectrum.from_covariance(M.T @ M)
    assert a.d == 5 and b.d == 8
    np.testing.assert_allclose(b.eigenvalues[:5], a.eigenvalues, rtol=1e-10)
    assert b.rank() == 5
    np.testing.assert_allclose(Spectrum.from_matrix(torch.tensor(M)).eigenvalues, a.eigenvalues)
    with pytest.raises(ValueError, match="symmetric"):
        Spectrum.from_covariance(np.triu(np.ones((3, 3))))
    with pytest.raises(ValueError, match="2-D"):
        Spectrum.from_matrix(np.ones((2, 3, 4)))


def test_summary_keys_and_values():
    s = Spectrum(np.array([8.0, 1.0, 1.0]))
    out = s.summary(taus=(0.8, 0.9))
    assert list(out) == ["k_0.8", "k_0.9", "participation_ratio", "entropy_rank", "stable_rank", "rank", "d"]
    assert out["k_0.8"] == 1 and out["k_0.9"] == 2 and out["d"] == 3
    assert out["stable_rank"] == pytest.approx(10 / 8)
    assert set(Spectrum(np.ones(2)).summary()) >= {"k_0.9", "k_0.95", "k_0.99"}


# ----------------------------------------------------------------------------- streaming covariance


@st.composite
def split_data(draw):
    n, d = draw(st.integers(1, 60)), draw(st.integers(1, 6))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=6)))
    return anisotropic(draw(st.integers(0, 10_000)), n, d) * 10 + 1e3, cuts  # large offset: stability


@FAST
@given(split_data())
def test_streaming_covariance_equals_batch_covariance(data):
    X, cuts = data
    acc = StreamingCovariance()
    for part in np.split(X, cuts):
        assert acc.update(part) is acc
    assert acc.n_ == len(X)
    np.testing.assert_allclose(acc.mean_, X.mean(0), rtol=1e-12)
    np.testing.assert_allclose(acc.covariance_, cov0(X), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(acc.spectrum().eigenvalues, Spectrum.from_covariance(cov0(X)).eigenvalues,
                               atol=1e-9)


@FAST
@given(split_data(), st.booleans())
def test_merge_equals_one_accumulator_over_the_concatenation(data, as_torch):
    X, cuts = data
    k = cuts[0] if cuts else len(X) // 2
    wrap = torch.from_numpy if as_torch else (lambda a: a)
    a, b = StreamingCovariance().update(wrap(X[:k])), StreamingCovariance().update(wrap(X[k:]))
    assert a.merge(b) is a
    whole = StreamingCovariance().update(X)
    assert a.n_ == whole.n_ == len(X) and b.n_ == len(X) - k
    np.testing.assert_allclose(a.mean_, whole.mean_, rtol=1e-12)
    np.testing.assert_allclose(a.covariance_, whole.covariance_, rtol=1e-9, atol=1e-9)


def test_streaming_covariance_chunks_large_batches_and_accepts_float32_tensors():
    X = torch.randn(300, 4, generator=torch.Generator().manual_seed(0)) + 100
    acc = StreamingCovariance(dim=4)
    acc.chunk_elements = 4 * 7  # 7 rows per chunk
    acc.update(X)
    np.testing.assert_allclose(acc.covariance_, cov0(X.double().numpy()), rtol=1e-9)


def test_streaming_covariance_errors():
    acc = StreamingCovariance(dim=3)
    with pytest.raises(AttributeError, match="no data"):
        acc.covariance_
    with pytest.raises(ValueError, match="dim=3"):
        acc.update(np.ones((2, 4)))
    with pytest.raises(ValueError, match="2-D"):
        acc.update(np.ones(3))
    with pytest.raises(ValueError, match="dim"):
        StreamingCovariance(dim=0)
    with pytest.raises(ValueError, match="merge"):
        StreamingCovariance().update(np.ones((2, 2))).merge(StreamingCovariance().update(np.ones((2, 3))))
    empty = StreamingCovariance().merge(StreamingCovariance().update(np.eye(2)))
    np.testing.assert_allclose(empty.covariance_, cov0(np.eye(2)))


# ----------------------------------------------------------------------------- activation spectra


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("side", ["input", "output"])
def test_activation_spectra_equal_explicit_layer_covariances(side):
    model, X = mlp(), torch.randn(50, 8, generator=torch.Generator().manual_seed(1))
    model.train()
    model[1].eval()  # a mixed state must come back as it was
    fit = ActivationSpectra(side=side, batch_size=7).fit(model, X)
    with torch.no_grad():
        h0 = X
        o0 = model[0](X)
        h2 = model[1](o0)
        o2 = model[2](h2)
    explicit = {"0": h0, "2": h2} if side == "input" else {"0": o0, "2": o2}
    assert fit.layer_names_ == ["0", "2"]
    for name, act in explicit.items():
        np.testing.assert_allclose(fit.covariances_[name].covariance_, cov0(act.double().numpy()),
                                   rtol=1e-5, atol=1e-6)
        assert fit.covariances_[name].n_ == 50
        np.testing.assert_allclose(fit.spectra_[name].eigenvalues,
                                   Spectrum.from_covariance(cov0(act.double().numpy())).eigenvalues, atol=1e-5)
    assert no_hooks(model)
    assert model.training and model[0].training and not model[1].training
    frame = fit.frame()
    assert list(frame["layer"]) == ["0", "2"] and list(frame["n"]) == [50, 50]
    assert list(frame["d"]) == ([8, 16] if side == "input" else [16, 4])
    assert {"k_0.9", "participation_ratio", "entropy_rank", "stable_rank"} <= set(frame.columns)


def test_activation_spectra_removes_hooks_and_restores_mode_when_forward_fails():
    model = mlp().train()
    with pytest.raises(RuntimeError):
        ActivationSpectra().fit(model, torch.randn(5, 3))  # wrong width
    assert no_hooks(model) and model.training


def test_activation_spectra_layer_selection_and_errors():
    model, X = mlp(), np.random.default_rng(0).standard_normal((20, 8))  # numpy float64 -> model dtype
    fit = ActivationSpectra(layers=["1"], side="output").fit(model, X)
    assert list(fit.spectra_) == ["1"] and fit.spectra_["1"].d == 16
    assert list(ActivationSpectra(layers=[r"\d"]).fit(model, X).spectra_) == ["0", "1", "2"]
    with pytest.raises(ValueError, match=r"match no module; candidates: \['0', '1', '2'\]"):
        ActivationSpectra(layers=["encoder"]).fit(model, X)
    with pytest.raises(ValueError, match="side"):
        ActivationSpectra(side="both").fit(model, X)
    with pytest.raises(ValueError, match="batch_size"):
        ActivationSpectra(batch_size=0).fit(model, X)
    assert no_hooks(model)


def test_activation_spectra_default_layers_of_a_scaffolded_model():
    model = scaffold(mlp(), ScaffoldConfig(target_modules=["0", "2"], r=2, root_seed=3))
    for _, layer in scaffold_layers(model):
        with torch.no_grad():
            layer.lora_B.normal_()
    X = torch.randn(40, 8, generator=torch.Generator().manual_seed(2))
    fit = ActivationSpectra().fit(model, X)
    assert fit.layer_names_ == [n for n, _ in scaffold_layers(model)] == ["0", "2"]
    with torch.no_grad():
        h2 = model[1](model[0](X))
    np.testing.assert_allclose(fit.covariances_["2"].covariance_, cov0(h2.double().numpy()), rtol=1e-5, atol=1e-6)
    assert fit.spectra_["0"].d == 8 and fit.spectra_["2"].d == 16
    assert no_hooks(model)


CONVS = [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, stride=2, padding=0),
    dict(kernel_size=(2, 3), padding="same", dilation=2),
    dict(kernel_size=3, padding=1, padding_mode="reflect"),
    dict(kernel_size=1),
]


CONVS_1D = [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, stride=2, padding=0),
    dict(kernel_size=2, padding="same", dilation=2),
    dict(kernel_size=3, padding=1, padding_mode="reflect"),
    dict(kernel_size=1),
]
CONV_CASES = [(nd, kw, scaffolded) for nd, convs in ((2, CONVS), (1, CONVS_1D)) for kw in convs
              for scaffolded in (False, True) if not (scaffolded and "padding_mode" in kw)]  # scaffold: zeros only


@pytest.mark.parametrize("nd, conv_kw, scaffolded", CONV_CASES)
def test_conv_input_patches_have_fan_in_dimension_and_match_the_output(nd, conv_kw, scaffolded):
    """Output channels are W_flat @ patch + b, so Cov_out = W Cov_patches W^T checks the patch geometry."""
    torch.manual_seed(0)
    model = nn.Sequential((nn.Conv1d if nd == 1 else nn.Conv2d)(3, 5, **conv_kw))
    if scaffolded:
        model = scaffold(model, ScaffoldConfig(target_modules=["0"], r=2))
    conv = model[0]
    W = (conv.merged_weight() if scaffolded else conv.weight).detach().double().reshape(5, -1).numpy()
    X = torch.randn(6, 3, *(7, 8)[2 - nd:], generator=torch.Generator().manual_seed(4))
    cin = ActivationSpectra(side="input", batch_size=4).fit(model, X).covariances_["0"]
    cout = ActivationSpectra(side="output", batch_size=4).fit(model, X).covariances_["0"]
    assert cin.covariance_.shape == (W.shape[1], W.shape[1])  # fan_in = 3 prod(kernel)
    with torch.no_grad():
        y = model(X)
    assert cout.n_ == y.numel() // 5 == cin.n_
    np.testing.assert_allclose(cout.covariance_, W @ cin.covariance_ @ W.T, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cout.covariance_, cov0(y.movedim(1, -1).reshape(-1, 5).double().numpy()),
                               rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- task spectrum


def blobs(seed: int, n_classes: int, d: int, n_per: int = 30, sep: float = 20.0):
    rng = np.random.default_rng(seed)
    centres = sep * rng.standard_normal((n_classes, d))
    y = np.repeat(np.arange(n_classes), n_per + 7 * np.arange(n_classes))  # unequal class sizes
    return centres[y] + rng.standard_normal((y.size, d)), y


@FAST
@given(st.integers(0, 10_000), st.integers(2, 6), st.integers(1, 6))
def test_between_class_rank_is_c_minus_1_when_separated(seed, n_classes, extra):
    d = n_classes + extra
    X, y = blobs(seed, n_classes, d)
    fit = TaskSpectrum().fit(X, y)
    assert fit.n_classes_ == n_classes and fit.between_class_rank_ == n_classes - 1
    assert fit.between_class_spectrum_.d == d == fit.input_spectrum_.d
    mu = X.mean(0)
    Sb = sum(np.mean(y == c) * np.outer(X[y == c].mean(0) - mu, X[y == c].mean(0) - mu) for c in range(n_classes))
    np.testing.assert_allclose(fit.between_class_spectrum_.eigenvalues, np.linalg.eigvalsh(Sb)[::-1],
                               atol=1e-8 * np.linalg.eigvalsh(Sb).max())


@FAST
@given(st.integers(0, 10_000), st.integers(1, 8), st.integers(1, 8), st.integers(1, 40), st.sampled_from([0, 1e3]))
def test_between_class_rank_is_at_most_c_minus_1(seed, n_classes, d, n, offset):
    rng = np.random.default_rng(seed)
    X, y = rng.standard_normal((n, d)) + offset, rng.integers(0, n_classes, n)
    fit = TaskSpectrum().fit(X, y)
    assert fit.n_classes_ == len(np.unique(y))
    assert fit.between_class_rank_ <= min(fit.n_classes_ - 1, d)


def test_one_class_has_between_class_rank_zero():
    X = np.random.default_rng(0).standard_normal((24, 3)) + 1e3  # centred means are pure round-off
    fit = TaskSpectrum().fit(X, np.full(24, 7))
    assert fit.n_classes_ == 1 and fit.between_class_rank_ == 0
    assert fit.between_class_spectrum_.eigenvalues[0] < 1e-20


@pytest.mark.parametrize("k, d", [(1, 5), (3, 10), (6, 20)])
def test_input_spectrum_of_subspace_data_has_k_nonnegligible_values(k, d):
    rng = np.random.default_rng(k)
    basis = ortho_group.rvs(d, random_state=k)[:k]
    X = (rng.standard_normal((200, k)) * np.linspace(3, 1, k)) @ basis + 5.0
    s = TaskSpectrum().fit(X.reshape(200, 2, d // 2) if d % 2 == 0 else X, np.zeros(200)).input_spectrum_
    assert s.d == d
    assert np.sum(s.eigenvalues > 1e-9 * s.eigenvalues[0]) == k == s.rank()
    assert s.k_tau(0.99) <= k


def test_regression_spectra():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((100, 6))
    Y = X[:, :2] @ np.array([[2.0, 0.0], [0.0, 0.5]]) + 0.01 * rng.standard_normal((100, 2))
    fit = TaskSpectrum("regression").fit(torch.tensor(X), Y)
    C = cov0(np.c_[X, Y])
    np.testing.assert_allclose(fit.target_spectrum_.eigenvalues, np.linalg.eigvalsh(C[6:, 6:])[::-1], rtol=1e-10)
    sv = np.linalg.svd(C[:6, 6:], compute_uv=False)
    np.testing.assert_allclose(fit.cross_singular_values_, sv, rtol=1e-10)
    np.testing.assert_allclose(fit.cross_spectrum_.eigenvalues, sv**2, rtol=1e-10)
    assert TaskSpectrum("regression").fit(X, Y[:, 0]).target_spectrum_.d == 1


def test_task_spectrum_errors():
    with pytest.raises(ValueError, match="task must be one of"):
        TaskSpectrum("ranking").fit(np.ones((4, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="rows"):
        TaskSpectrum().fit(np.ones((4, 2)), np.zeros(3))


# ----------------------------------------------------------------------------- weight spectra


@pytest.mark.parametrize("r", [1, 2, 3])
def test_adapter_spectrum_has_at_most_r_nonzero_values(r):
    model = scaffold(nn.Sequential(nn.Linear(10, 12), nn.Tanh(), nn.Linear(12, 6)),
                     ScaffoldConfig(target_modules=["0"], r=r))
    layer = model[0]
    assert np.count_nonzero(WeightSpectra().fit(model).spectra_["0"].eigenvalues) == 0  # B = 0 at init
    g = torch.Generator().manual_seed(r)
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(12, r, generator=g))
        layer.lora_A.copy_(torch.randn(r, 10, generator=g))
    fit = WeightSpectra().fit(model)
    s = fit.spectra_["0"]
    assert list(fit.spectra_) == ["0"] and s.d == 10
    assert s.rank() == r and np.sum(s.eigenvalues > 1e-12 * s.eigenvalues[0]) <= r
    expected = np.linalg.svd((layer.s * layer.lora_B @ layer.lora_A).detach().double().numpy(), compute_uv=False)
    np.testing.assert_allclose(s.eigenvalues[:r], expected[:r] ** 2, rtol=1e-5)
    assert fit.frame()["rank"].tolist() == [r]


@pytest.mark.parametrize("k", [1, 2, 4])
def test_delta_spectrum_has_exactly_k_values_for_a_planted_rank_k_update(k):
    torch.manual_seed(k)
    init = nn.Sequential(nn.Linear(9, 7), nn.ReLU(), nn.Linear(7, 3), nn.Conv2d(2, 4, 3))
    trained = merge(init)  # a deep copy
    with torch.no_grad():
        trained[0].weight += torch.randn(7, k) @ torch.randn(k, 9)
        trained[3].weight += (torch.randn(4, 1) @ torch.randn(1, 18)).view(4, 2, 3, 3)
    fit = WeightSpectra("delta").fit(init, trained)
    assert list(fit.spectra_) == ["0", "2", "3"]
    assert fit.spectra_["0"].rank() == k
    assert np.sum(fit.spectra_["0"].eigenvalues > 1e-8 * fit.spectra_["0"].eigenvalues[0]) == k
    assert fit.spectra_["2"].total == 0 and fit.spectra_["3"].rank() == 1 and fit.spectra_["3"].d == 4
    frame = fit.frame()
    assert frame.loc[frame.layer == "0", "rank"].item() == k and "total" in frame


def test_delta_spectrum_of_a_scaffold_layer_is_that_of_its_merged_weight():
    """For a ScaffoldLayer, W = beta W_seed + s B A: training B and beta (W_seed frozen) changes W."""
    init = scaffold(nn.Sequential(nn.Linear(9, 7)), ScaffoldConfig(target_modules=["0"], r=2, root_seed=1))
    trained = copy.deepcopy(init)
    with torch.no_grad():
        trained[0].lora_B.normal_(generator=torch.Generator().manual_seed(0))
        trained[0].beta.fill_(1.5)
    fit = WeightSpectra("delta").fit(init, trained)
    expected = (trained[0].merged_weight() - init[0].merged_weight()).detach().double()
    np.testing.assert_allclose(fit.spectra_["0"].eigenvalues, Spectrum.from_matrix(expected).eigenvalues, rtol=1e-6)
    assert fit.spectra_["0"].total > 0


def test_grouped_conv_input_falls_back_to_its_channels():
    model = nn.Sequential(nn.Conv2d(4, 6, 3, groups=2))
    X = torch.randn(5, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    fit = ActivationSpectra(side="input").fit(model, X)
    expected = X.permute(0, 2, 3, 1).reshape(-1, 4).double().numpy()
    assert fit.spectra_["0"].d == 4 and fit.covariances_["0"].n_ == 5 * 36
    np.testing.assert_allclose(fit.covariances_["0"].covariance_, cov0(expected), rtol=1e-6, atol=1e-9)


def test_weight_spectra_errors():
    plain = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="kind must be one of"):
        WeightSpectra("weights").fit(plain)
    with pytest.raises(ValueError, match="no ScaffoldLayer"):
        WeightSpectra().fit(plain)
    with pytest.raises(ValueError, match="needs fit"):
        WeightSpectra("delta").fit(plain)
    with pytest.raises(ValueError, match="shape"):
        WeightSpectra("delta").fit(plain, nn.Sequential(nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="both models"):
        WeightSpectra("delta").fit(plain, nn.Sequential(nn.ReLU()))


# ----------------------------------------------------------------------------- intrinsic dimension


def test_twonn_finds_a_five_dimensional_subspace():
    rng = np.random.default_rng(0)
    basis = ortho_group.rvs(30, random_state=0)[:5]
    X = rng.standard_normal((3000, 5)) @ basis
    fit = IntrinsicDimension("twonn", n_samples=2000, random_state=1).fit(X)
    assert 4 < fit.dimension_ < 6.5 and fit.n_samples_ == 2000
    again = IntrinsicDimension("twonn", n_samples=2000, random_state=1).fit(X)
    assert again.dimension_ == fit.dimension_  # seeded subsample
    mle = IntrinsicDimension("mle", n_samples=500).fit(X.reshape(3000, 5, 6))
    assert 3.5 < mle.dimension_ < 6.5 and mle.n_samples_ == 500


def test_intrinsic_dimension_rejects_unknown_method():
    with pytest.raises(ValueError, match=r"method must be one of \('twonn', 'mle'\), got 'pca'"):
        IntrinsicDimension("pca").fit(np.random.default_rng(0).standard_normal((10, 3)))
    with pytest.raises(ValueError, match="n_samples"):
        IntrinsicDimension(n_samples=1).fit(np.random.default_rng(0).standard_normal((10, 3)))


# ----------------------------------------------------------------------------- package layout


def test_the_package_reexports_every_name_its_users_import():
    """`from reservoir_depth.spectra import X` keeps working for measures and probes alike."""
    import reservoir_depth.spectra as spectra
    from reservoir_depth.spectra import measures, probes

    for name in ("ActivationSpectra", "WeightSpectra", "TaskSpectrum", "IntrinsicDimension"):
        assert getattr(spectra, name) is getattr(probes, name)
    for name in ("Spectrum", "StreamingCovariance", "explained_variance_ratio", "k_tau", "participation_ratio",
                 "entropy_effective_rank", "stable_rank", "MEASURES", "DEFAULT_TAUS"):
        assert getattr(spectra, name) is getattr(measures, name)
    assert set(spectra.__all__) == set(measures.__all__) | set(probes.__all__) | {"DEFAULT_TAUS"}


def test_measures_do_not_depend_on_models():
    """Array measures sit below the scaffold in the layering: measures.py imports no model code."""
    import ast
    import inspect

    from reservoir_depth.spectra import measures

    tree = ast.parse(inspect.getsource(measures))
    imported = {(n.level, n.module) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {(0, "__future__"), (0, "dataclasses"), (0, "typing"), (2, "checks")}, imported


def test_summary_reports_every_registered_measure(monkeypatch):
    from reservoir_depth.spectra import MEASURES

    monkeypatch.setitem(MEASURES, "top", lambda lam: float(np.max(lam)))
    summary = Spectrum([4.0, 1.0, 0.0]).summary(taus=(0.8,))
    assert list(summary) == ["k_0.8", "participation_ratio", "entropy_rank", "stable_rank", "top", "rank", "d"]
    assert summary["top"] == 4.0 and summary["participation_ratio"] == pytest.approx(25 / 17)


# ----------------------------------------------------------------------------- dead units


def _zeros_mlp(init_B: str):
    from reservoir_depth.models import build
    from reservoir_depth.scaffold import ScaffoldConfig, scaffold

    m = build("mlp", d_in=8, n_out=3, hidden=(32, 16))  # the head's init does not matter here
    return scaffold(m, ScaffoldConfig(target_modules=m.scaffold_targets, trainable=m.scaffold_trainable, r=4,
                                      spec={"name": "zeros"}, bias="frozen", init_B=init_B, root_seed=0))


def test_dead_units_of_the_no_scaffold_control_are_the_units_with_a_negative_bias():
    from reservoir_depth.scaffold import scaffold_layers
    from reservoir_depth.spectra import DeadUnits

    X = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    model = _zeros_mlp("zeros")
    est = DeadUnits().fit(model, X)
    for name, layer in scaffold_layers(model):  # output = bias on every row: dead exactly where bias <= 0
        assert est.fraction_[name] == pytest.approx(float((layer.bias <= 0).float().mean()))
        assert 0.2 < est.fraction_[name] < 0.8
    kaiming = DeadUnits().fit(_zeros_mlp("kaiming"), X)
    assert all(kaiming.fraction_[n] < est.fraction_[n] for n in est.fraction_)  # a random B wakes them
    assert model.training  # modes restored


def test_dead_units_refuses_a_bad_batch_size():
    from reservoir_depth.spectra import DeadUnits

    with pytest.raises(ValueError, match="batch_size"):
        DeadUnits(batch_size=0).fit(nn.Sequential(nn.Linear(2, 2)), torch.zeros(3, 2))


def test_dead_units_take_the_max_over_every_batch():
    """A unit is dead only if it is <= 0 on every row of every batch: a unit alive on the first row alone
    (batch 1 of 3) is alive, one alive on the last row alone (batch 3) too, one never alive is dead."""
    from reservoir_depth.spectra import DeadUnits

    layer = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(3))
    X = -torch.ones(5, 3)
    X[0, 0] = 1.0   # unit 0 alive in the first batch only
    X[4, 1] = 1.0   # unit 1 alive in the last batch only
    fit = DeadUnits(layers=["0"], batch_size=2).fit(nn.Sequential(layer), X)
    assert fit.max_["0"].tolist() == [1.0, 1.0, -1.0]
    assert fit.fraction_["0"] == pytest.approx(1 / 3)
