"""Tests of reservoir_depth.distributions.draw: determinism, the checked draw, the pinned legacy bytes of
version 1 and the properties of version 2."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import stats

from distribution_cases import FAMILIES, SEED, seeds, small_shapes, sample_or_all_zero
from reservoir_depth.distributions import DISTRIBUTIONS, DRAW_VERSIONS, DistributionSpec, Stream, draw, sample


@pytest.mark.parametrize("version", DRAW_VERSIONS)
@pytest.mark.parametrize("name", FAMILIES)
@settings(max_examples=10, deadline=None)
@given(shape=small_shapes, seed=seeds)
def test_same_seed_same_draw(name, version, shape, seed):
    spec = DistributionSpec(name, version=version)
    np.random.seed(0)  # the global numpy RNG (and torch's) must play no part
    torch.manual_seed(0)
    a = sample_or_all_zero(spec, shape, seed)
    np.random.seed(1)
    torch.manual_seed(1)
    b = sample_or_all_zero(DistributionSpec.from_dict(spec.to_dict()), shape, seed)
    if a is None:
        assert b is None
        return
    assert a.shape == shape and a.dtype == np.float64
    np.testing.assert_array_equal(a, b)

    w = draw(spec, shape, seed)
    assert w.dtype == torch.float32 and w.device.type == "cpu" and tuple(w.shape) == shape
    assert torch.equal(w, torch.from_numpy(a).to(torch.float32))
    assert torch.equal(w, draw(spec, shape, seed))


@pytest.mark.parametrize("name", FAMILIES)
@settings(max_examples=15, deadline=None)
@given(seed_a=seeds, seed_b=seeds, shape=st.sampled_from([(16, 16), (8, 4, 3, 3), (64, 8)]))
def test_different_seeds_different_draws(name, seed_a, seed_b, shape):  # the default version
    # >= 256 entries: even the {0, 1} / {-1, 1} families coincide with probability < 1e-20.
    assume(seed_a != seed_b)
    a, b = sample(name, shape, seed_a), sample(name, shape, seed_b)
    if name == "zeros":
        assert not a.any() and not b.any()
    else:
        assert not np.array_equal(a, b)


def test_draw_dtype_argument():
    w = draw("normal", (5, 7), 3, dtype=torch.float64)
    assert w.dtype == torch.float64
    np.testing.assert_array_equal(w.numpy(), sample("normal", (5, 7), 3))


@pytest.mark.parametrize("version", DRAW_VERSIONS)
@pytest.mark.parametrize("name, params", [
    ("lognormal", {"sigma": 1000.0}),  # exp(1000 z) overflows
    ("beta", {"a": 1e-300, "b": 1e-300}),  # numpy gives NaN draws; the law's std is NaN
    ("sparse_normal", {"p": 1e-300}),  # every entry dropped
    ("erdos_renyi", {"p": 1e-300}),  # an empty graph
])
def test_bad_draws_are_refused_naming_family_and_parameters(name, params, version):
    spec = DistributionSpec(name, params, version=version)
    with pytest.raises(ValueError, match=rf"{name} with \{{.*{list(params)[0]}"):
        draw(spec, (8, 8), 0)
    with pytest.raises(ValueError, match=rf"{name} with \{{.*{list(params)[0]}"):
        sample(spec, (8, 8), 0)


def test_all_zero_check_spares_the_zeros_family_and_zero_gain():
    assert not draw(DistributionSpec("zeros"), (4, 4), 0).any()
    assert not draw(DistributionSpec("zeros", scaling="fan_in", gain=3.0), (4, 4), 0).any()
    assert not draw(DistributionSpec("normal", gain=0.0), (4, 4), 0).any()
    assert not draw(DistributionSpec("normal", scaling="spectral_radius", rho=0.0), (4, 4), 0).any()


PARAM_VALUES = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 20),
                         st.sampled_from([1e-300, 1e300, 1000.0, -0.0, "3", None, True]),
                         st.lists(st.floats(-1e3, 1e3) | st.just(float("nan")), max_size=3))


@pytest.mark.parametrize("name", [f for f in FAMILIES if DISTRIBUTIONS[f].defaults])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_a_draw_is_finite_and_non_zero_or_refused(name, data):
    """Over the registry: any parameters give a ValueError or a finite, not-all-zero W_seed."""
    family = DISTRIBUTIONS[name]
    params = {k: data.draw(PARAM_VALUES, label=k) for k in family.defaults if data.draw(st.booleans())}
    version = data.draw(st.sampled_from(DRAW_VERSIONS), label="version")
    try:
        spec = DistributionSpec(name, params, version=version)
        w = draw(spec, (6, 7), 1)
    except ValueError:
        return
    assert torch.isfinite(w).all() and w.any()


# sha256 (first 16 hex digits) of the float32 bytes of draw(name, (6, 5), 20261127) and its [0, 0] entry,
# computed with the code as it was before draw versions existed (numpy 2.4.6, scipy 1.17.1):
# version 1 must keep reproducing them byte for byte (adapter files and stored studies depend on it).
V1_PINS = {
    "beta": ("b81cc07b293e5706", 0.6235023736953735),
    "binary": ("b118969b61489dd9", 0.4472135901451111),
    "cauchy": ("f1886babfd807266", -1.195910096168518),
    "erdos_renyi": ("965a6af9bc292a7b", 0.0),
    "exponential": ("a5cfe35f7cd30f1d", 0.38077887892723083),
    "gaussian_mixture": ("accfd88ec81a1fdd", -0.12845134735107422),
    "kaiming_normal": ("15b11cf8ddf0ba42", -0.8123940229415894),
    "kaiming_uniform": ("b0c9e0363e82125b", -0.2866705656051636),
    "laplace": ("59409a765800e932", -0.0959421917796135),
    "logistic": ("aa3c70969c2c0869", -0.1321202516555786),
    "lognormal": ("111fa9e82de7043c", 0.38960298895835876),
    "normal": ("c85af3f5454f6927", -0.5744493007659912),
    "orthogonal": ("cfe0093d9706d801", -0.47055137157440186),
    "quantized_normal": ("a4f82eb0e31c6e66", -0.623408317565918),
    "sparse_normal": ("e212abc612d98c7f", -0.0),
    "spectral_normal": ("8b46a71a9342c3b8", -0.3690558969974518),
    "student_t": ("3a57e500a3515487", -0.30564382672309875),
    "truncated_normal": ("793177b9bd2b5008", -0.16185718774795532),
    "uniform": ("67d5fbf121701378", -0.2027066946029663),
    "xavier_normal": ("889abc923b83163d", -0.5477159023284912),
    "xavier_uniform": ("ed1c94d37d2f907c", -0.19327326118946075),
    "zeros": ("6edd9f6f9cc92cde", 0.0),
}


def sha16(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


@pytest.mark.parametrize("name", sorted(V1_PINS))
def test_version_1_reproduces_the_legacy_bytes(name):
    w = draw(DistributionSpec.from_dict({"name": name}), (6, 5), 20261127)  # a dict without version: version 1
    assert (sha16(w.numpy()), float(w[0, 0])) == V1_PINS[name]


def test_version_1_reproduces_legacy_centred_and_spectral_draws():
    spec = DistributionSpec("truncated_normal", {"a": -1.0, "b": 3.0}, center=True, scaling="fan_in", gain=2.0,
                            version=1)
    s = sample(spec, (4, 3, 2), 7)
    assert (sha16(s), float(s.flat[5])) == ("38df1a84ba44ae3a", 0.9952564419059287)
    # the spectral rule divides by a LAPACK eigenvalue: other LAPACK builds move its last bits, so a value, not bytes
    s = sample(DistributionSpec("normal", scaling="spectral_radius", rho=0.9, version=1), (8, 8), 3)
    assert float(s.flat[5]) == pytest.approx(-0.044140633387551795, rel=1e-12)
    raw = sample(DistributionSpec("normal", scaling="none", version=1), (8, 8), 3)
    assert sha16(raw) == "98cc8ca17dacc1ac"  # computed with the code before draw versions
    np.testing.assert_allclose(s / s.flat[5], raw / raw.flat[5], rtol=1e-13)


def test_every_builtin_family_is_pinned():
    assert set(V1_PINS) <= set(FAMILIES)


@pytest.mark.parametrize("name", FAMILIES)
def test_version_2_is_deterministic_and_seeded(name):
    spec = DistributionSpec(name)
    a, b, c = (draw(spec, (40, 30), s) for s in (5, 5, 6))
    assert torch.equal(a, b)
    assert name == "zeros" or not torch.equal(a, c)


# The zero-mean-free pairs of families are independent streams under version 2; under version 1 these
# groups are one matrix up to scale.
SAME_STREAM_V1 = [("normal", "kaiming_normal", "xavier_normal", "spectral_normal"),
                  ("uniform", "kaiming_uniform", "xavier_uniform")]


@pytest.mark.parametrize("version", DRAW_VERSIONS)
def test_families_at_one_seed_are_uncorrelated_in_version_2(version):
    names = [f for f in FAMILIES if f != "zeros"]
    shape, n = (64, 64), 64 * 64
    flat = {f: draw(DistributionSpec(f, version=version), shape, SEED).numpy().ravel() for f in names}
    rho = {(a, b): stats.spearmanr(flat[a], flat[b]).statistic for i, a in enumerate(names) for b in names[i + 1:]}
    worst = max(rho, key=lambda k: abs(rho[k]))
    if version == 2:  # 210 pairs, se 1/sqrt(n) = 0.016: the largest |rho| of independent pairs stays below 0.08
        assert abs(rho[worst]) < 5 / math.sqrt(n), f"{worst}: Spearman {rho[worst]:.3f}"
    else:  # the defect version 2 fixes, kept in version 1 for old files
        for group in SAME_STREAM_V1:
            assert all(rho[tuple(sorted((a, b)))] > 0.999 for a in group for b in group if a < b)


def test_version_2_stream_key_covers_parameters_and_shape():
    seed = 11
    p1, p2 = (DistributionSpec("sparse_normal", {"p": p}) for p in (0.5, 0.6))
    a, b = (draw(s, (64, 64), seed).numpy().ravel() for s in (p1, p2))
    both = (a != 0) & (b != 0)
    assert abs(stats.spearmanr(a[both], b[both]).statistic) < 0.1  # not the same normals masked differently
    assert torch.equal(draw(DistributionSpec("student_t", {"df": 3}), (5, 5), seed),
                       draw(DistributionSpec("student_t", {"df": 3.0}), (5, 5), seed))  # one law, one draw
    # no nested scaffolds across widths in version 2; version 1 nests element-wise families
    small, big = draw("normal", (64, 64), seed), draw("normal", (128, 64), seed)
    assert not torch.equal(big[:64], small)
    v1 = DistributionSpec("normal", version=1)
    assert torch.equal(draw(v1, (128, 64), seed)[:64], draw(v1, (64, 64), seed))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", FAMILIES)
def test_version_2_cpu_and_cuda_agree(name):
    """The words are identical; the float64 transforms agree far inside the fingerprint's rtol."""
    from reservoir_depth.adapter_format import FINGERPRINT_RTOL

    assert torch.equal(Stream(123, 4099, "cuda").words(1).cpu(), Stream(123, 4099).words(1))
    for shape in [(96, 80), (16, 3, 3, 3)]:
        spec = DistributionSpec(name)
        cpu, cuda = draw(spec, shape, 7), draw(spec, shape, 7, device="cuda")
        assert cuda.device.type == "cuda" and cuda.dtype == torch.float32
        scale = float(cpu.abs().max()) or 1.0
        torch.testing.assert_close(cuda.cpu(), cpu, rtol=FINGERPRINT_RTOL, atol=FINGERPRINT_RTOL * scale)
        f64 = draw(spec, shape, 7, dtype=torch.float64, device="cuda").cpu()
        torch.testing.assert_close(f64, draw(spec, shape, 7, dtype=torch.float64), rtol=1e-9, atol=1e-12 * scale)


def test_draw_device_argument_on_cpu():
    w = draw("normal", (4, 4), 1, device="cpu")
    assert w.device.type == "cpu" and torch.equal(w, draw("normal", (4, 4), 1))
    v1 = draw(DistributionSpec("normal", version=1), (4, 4), 1, device=torch.device("cpu"))
    assert v1.device.type == "cpu"


@pytest.mark.parametrize("version", DRAW_VERSIONS)
def test_a_quantised_normal_whose_levels_overflow_is_refused_by_name(version):
    """clip = 9e307 is finite, but the levels on [-clip, clip] are not (their spacing overflows): a
    ValueError naming clip, not an IndexError from inside the draw (found by the property test above)."""
    with pytest.raises(ValueError, match="clip"):
        draw(DistributionSpec("quantized_normal", {"clip": 8.98846567431158e+307}, version=version), (6, 7), 1)
