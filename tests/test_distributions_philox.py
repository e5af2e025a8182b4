"""Tests of reservoir_depth.distributions.philox: Philox4x32-10 known answers and the counter-based Stream."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from distribution_cases import raw_draws, assert_ks
from reservoir_depth.distributions import PHILOX_CHUNK, Stream, philox4x32


def test_philox_known_answers():
    """Philox4x32-10 known-answer vectors of Random123 (Salmon et al. 2011)."""
    kat = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
           ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
           ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
    for counter, key, expected in kat:
        assert philox4x32(*counter, *key) == expected
        as_tensor = philox4x32(*(torch.tensor([c]) for c in counter), *key)
        assert tuple(int(t) for t in as_tensor) == expected
        as_array = philox4x32(*(np.array([c], np.uint64) for c in counter), *key)
        assert tuple(int(a[0]) for a in as_array) == expected


@settings(max_examples=20, deadline=None)
@given(key=st.integers(0, 2**64 - 1), n=st.integers(1, 300), sub=st.integers(0, 3))
def test_stream_words_agree_across_backends_and_with_python_ints(key, n, sub):
    src = Stream(key, n)
    a, b = src.words(sub, backend="numpy"), src.words(sub, backend="torch")
    assert torch.equal(a, b) and a.dtype == torch.int64 and int(a.min()) >= 0 and int(a.max()) < 2**32
    # the CPU path (numpy) and the device path (torch blocks): identical uniforms, normals to the last bit
    x, y = src.uniform(sub, backend="numpy"), src.uniform(sub, backend="torch")
    assert x.shape == (n,) and x.dtype == torch.float64 and torch.equal(x, y)
    x, y = src.normal(sub, backend="numpy"), src.normal(sub, backend="torch")
    assert x.shape == (n,) and x.dtype == torch.float64
    torch.testing.assert_close(x, y, rtol=4e-16, atol=4e-16)
    i = n // 2  # entry i = word i % 4 of block i // 4, computed by hand with Python ints
    assert int(a[i]) == philox4x32(i // 4, 0, sub, 0, key & 0xFFFFFFFF, key >> 32)[i % 4]


def test_stream_does_not_depend_on_chunking_or_threads(monkeypatch):
    full, normal = Stream(99, 1000).words(2), Stream(99, 1000).normal(2)
    monkeypatch.setitem(PHILOX_CHUNK, "cpu", 7)
    monkeypatch.setitem(PHILOX_CHUNK, "device", 5)
    assert torch.equal(Stream(99, 1000).words(2, backend="numpy"), full)
    assert torch.equal(Stream(99, 1000).words(2, backend="torch"), full)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)  # chunks computed by a pool of 3 threads
        assert torch.equal(Stream(99, 1000).words(2), full) and torch.equal(Stream(99, 1000).normal(2), normal)
    finally:
        torch.set_num_threads(threads)


def test_version_2_normal_tails_and_pairs():
    z = raw_draws("normal", (200_000,))
    assert_ks(z, stats.norm().cdf, "normal, 2e5 draws")
    assert abs(stats.pearsonr(z[0::2], z[1::2]).statistic) < 5 / math.sqrt(z.size / 2)  # Box-Muller pairs
    assert np.isfinite(z).all() and np.abs(z).max() < 7  # uniforms (w + 1/2) 2^-32: |z| <= 6.7
