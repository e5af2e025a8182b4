"""The bits of W_seed, pinned: every family, both draw versions, several shapes, seeds, parameters and scaling
rules. The digests were computed with the code before reservoir_depth.distributions became a package; any
change to a draw (a family's sampler, the Philox stream, its key, a scaling rule, the centring or the checks)
breaks a pin. Digests are of float32 draws (as a backbone holds them), so a last-bit difference of a float64
math library does not move them.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from reservoir_depth.distributions import DISTRIBUTIONS, DRAW_VERSIONS, DistributionSpec, Stream, draw, stream_key

# non-default parameters per family (the defaults are drawn too)
PARAMS = {"truncated_normal": {"a": -1.0, "b": 3.0}, "uniform": {"low": -0.5, "high": 2.0},
          "kaiming_normal": {"gain": 1.5}, "kaiming_uniform": {"gain": 0.7}, "xavier_normal": {"gain": 2.0},
          "xavier_uniform": {"gain": 0.5}, "student_t": {"df": 2.5},
          "gaussian_mixture": {"means": [-2.0, 0.0, 1.0], "stds": [0.3, 1.0, 0.5], "weights": [1.0, 2.0, 1.0]},
          "sparse_normal": {"p": 0.5}, "erdos_renyi": {"p": 0.3}, "beta": {"a": 0.5, "b": 3.0},
          "lognormal": {"sigma": 1.2}, "quantized_normal": {"bits": 2, "clip": 2.0}}
# (non-default parameters?, shape, seed, spec options)
CASES = [(False, (6, 5), 20261127, {}), (False, (4, 3, 2), 7, {}), (True, (9, 16), 3, {}),
         (False, (8, 8), 11, {"scaling": "fan_in", "gain": 0.5}), (False, (5, 7), 1, {"scaling": "none", "gain": 2.0}),
         (False, (7, 7), 5, {"scaling": "spectral_radius", "rho": 0.9}), (True, (6, 6), 2, {"center": True})]


def digest(name: str, version: int) -> str:
    """sha256 (16 hex digits) of the float32 bytes of each case's draw ("refused" where the spec or draw is)."""
    parts = []
    for nondefault, shape, seed, options in CASES:
        try:
            spec = DistributionSpec(name, PARAMS.get(name, {}) if nondefault else {}, version=version, **options)
            parts.append(hashlib.sha256(draw(spec, shape, seed).numpy().tobytes()).hexdigest()[:16])
        except ValueError:
            parts.append("refused")
    return hashlib.sha256(" ".join(parts).encode()).hexdigest()[:16]


PINS = {
    "beta/v1": "5e1af18d0a7e1b2f",
    "beta/v2": "74b118955a11a4c3",
    "binary/v1": "f3518f7bc5b87749",
    "binary/v2": "059496100d3133a1",
    "cauchy/v1": "baeb24e2cf34adf5",
    "cauchy/v2": "301f26da70a50d76",
    "erdos_renyi/v1": "d8435bf5cdf795f6",
    "erdos_renyi/v2": "06c01b699ceee131",
    "exponential/v1": "7d310c23c228328d",
    "exponential/v2": "426b8f07a96f9343",
    "gaussian_mixture/v1": "c5c87ce1502aae51",
    "gaussian_mixture/v2": "7c9f4419af2c383e",
    "kaiming_normal/v1": "a88bb38ea786aeec",
    "kaiming_normal/v2": "ca9189a01985f23b",
    "kaiming_uniform/v1": "075120daeddeb1d0",
    "kaiming_uniform/v2": "076f01e953b8a05f",
    "laplace/v1": "c2ccffb1d742caf2",
    "laplace/v2": "a09a22734ad77821",
    "logistic/v1": "ad692023b3f1e45c",
    "logistic/v2": "c92f9a44133fb109",
    "lognormal/v1": "53cec0189075db2f",
    "lognormal/v2": "b1b14c16a2dec294",
    "normal/v1": "9fb1dc07b77142b4",
    "normal/v2": "7de51e91db8bb5a2",
    "orthogonal/v1": "cd9c2f40eb57f03d",
    "orthogonal/v2": "216c942498732786",
    "quantized_normal/v1": "847a4f8b4a951979",
    "quantized_normal/v2": "02a1ac007e86e017",
    "sparse_normal/v1": "567f5643e5761dbf",
    "sparse_normal/v2": "821a3a6490d5d07c",
    "spectral_normal/v1": "92b4b995e59a45a4",
    "spectral_normal/v2": "ce4bae97e6de6687",
    "student_t/v1": "f3d7e968272f09d7",
    "student_t/v2": "4b9261e8c7a8b314",
    "truncated_normal/v1": "a0820d884c1e1370",
    "truncated_normal/v2": "d7de44d6602968e1",
    "uniform/v1": "95ac363e2327ba3b",
    "uniform/v2": "38048ea219238a69",
    "xavier_normal/v1": "05b5457fad9a4a0f",
    "xavier_normal/v2": "b73c36a7bb4c1f05",
    "xavier_uniform/v1": "3beb5d0fb5034499",
    "xavier_uniform/v2": "43e540a469d8fd18",
    "zeros/v1": "63f662dd3e6dee7f",
    "zeros/v2": "63f662dd3e6dee7f",
}
KEY_PIN = 18417992896987374634  # stream_key of the gaussian_mixture spec above, seed 5, shape (3, 4)
WORDS_PIN = "b4a08d38afd89971"  # Stream(12345, 1001).words(3)


@pytest.mark.parametrize("version", DRAW_VERSIONS)
@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_draws_keep_their_bits(name, version):
    assert digest(name, version) == PINS[f"{name}/v{version}"]


def test_every_family_and_version_is_pinned():
    assert set(PINS) == {f"{name}/v{v}" for name in DISTRIBUTIONS for v in DRAW_VERSIONS}


def test_version_2_key_and_words_keep_their_bits():
    spec = DistributionSpec("gaussian_mixture", PARAMS["gaussian_mixture"])
    assert stream_key(5, spec, (3, 4)) == KEY_PIN
    words = Stream(12345, 1001).words(3)
    assert words.dtype == torch.int64 and hashlib.sha256(words.numpy().tobytes()).hexdigest()[:16] == WORDS_PIN
