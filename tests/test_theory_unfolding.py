"""Prop. 1 (theory/01_unfolding.md): an echo state network unfolded along depth is a scaffold.

Exact identities, checked at float64 precision over hypothesis-drawn sizes.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reservoir_depth import DistributionSpec, ScaffoldConfig, sample, scaffold
from reservoir_depth.distributions import rng_for
from reservoir_depth.theory import activations as A
from reservoir_depth.theory import unfolding as U

EXACT = settings(max_examples=30, deadline=None)


def _problem(N: int, d: int, seed: int):
    g = rng_for(seed)
    return g.standard_normal((N, d)), g.standard_normal(d), g.standard_normal(N)


@EXACT
@given(N=st.integers(2, 32), T=st.integers(1, 12), d=st.integers(1, 4), seed=st.integers(0, 2**32),
       phi=st.sampled_from(["tanh", "relu", "identity"]))
def test_esn_equals_tied_scaffold(N, T, d, seed, phi):
    """Prop. 1: T steps of x_{t+1} = phi(W x_t + W_in u) are the depth-T tied scaffold, state by state."""
    W = sample("normal", (N, N), seed)
    W_in, u, x0 = _problem(N, d, seed + 1)
    xs = U.esn_states(W, W_in, u, T, phi=phi, x0=x0)
    net = U.unfolded_scaffold(W, W_in, u, phi, T=T)
    assert xs.shape == (T + 1, N) and len(net.layers) == T
    with torch.no_grad():
        states = net.states(torch.from_numpy(x0)).numpy()
        assert np.allclose(net(torch.from_numpy(x0)).numpy(), xs[-1], rtol=0, atol=1e-10)
    np.testing.assert_allclose(states, xs, rtol=0, atol=1e-10)
    for lin in net.layers:  # tied: every layer holds W and the bias W_in u
        np.testing.assert_array_equal(lin.weight.detach().numpy(), W)
        np.testing.assert_allclose(lin.bias.detach().numpy(), W_in @ u, rtol=0, atol=1e-12)


@EXACT
@given(N=st.integers(2, 32), T=st.integers(1, 12), d=st.integers(1, 4), seed=st.integers(0, 2**32),
       phi=st.sampled_from(["tanh", "relu", "identity"]), held=st.booleans(),
       family=st.sampled_from(["normal", "orthogonal", "uniform", "binary"]))
def test_non_autonomous_esn_equals_untied_scaffold(N, T, d, seed, phi, held, family):
    """Prop. 1: untied W_t from (root seed, "layers.t") give the non-autonomous ESN, held or driven input."""
    Ws = U.untied_weights(DistributionSpec(family), N, T, seed)
    W_in, u, x0 = _problem(N, d, seed + 1)
    if not held:
        u = rng_for(seed + 2).standard_normal((T, d))
    xs = U.esn_states(Ws, W_in, u, phi=phi, x0=x0)
    # the recurrence written out by hand, independently of esn_states
    act = A.as_activation(phi)
    x = x0
    for t in range(T):
        x = act(Ws[t] @ x + W_in @ (u if held else u[t]))
        np.testing.assert_allclose(xs[t + 1], x, rtol=0, atol=1e-12)
    with torch.no_grad():
        states = U.unfolded_scaffold(Ws, W_in, u, phi).states(torch.from_numpy(x0)).numpy()
    np.testing.assert_allclose(states, xs, rtol=0, atol=1e-10)
    if T > 1 and (family != "binary" or N >= 6):  # two binary 2 x 2 draws coincide with probability 1/16
        assert not np.array_equal(Ws[0], Ws[1])  # untied: layers differ


def _legacy_normal_draw(root_seed: int, t: int, N: int) -> np.ndarray:
    """W_t written out without the library: seed = the first 8 bytes (little-endian) of
    sha256("{root_seed}/layers.{t}/W_seed"), then numpy's PCG64 standard normals (the version-1 "normal"
    draw) times the fan-in scale 1 / sqrt(N)."""
    key = hashlib.sha256(f"{root_seed}/layers.{t}/W_seed".encode()).digest()[:8]
    return np.random.Generator(np.random.PCG64(int.from_bytes(key, "little"))).standard_normal((N, N)) / math.sqrt(N)


LEGACY_NORMAL = DistributionSpec("normal", version=1)  # the draw old adapter files were made with


@settings(max_examples=10, deadline=None)
@given(N=st.integers(2, 16), T=st.integers(1, 6), seed=st.integers(0, 2**32))
def test_untied_weights_are_the_layers_seeded_draws(N, T, seed):
    """Prop. 1b's W_t: layer t's draw from (root seed, "layers.t", "W_seed"), rebuilt here from sha256 and
    numpy alone, equals untied_weights and the W_seed that scaffold() gives layer layers.t (float32)."""
    Ws = U.untied_weights(LEGACY_NORMAL, N, T, seed)
    net = U.unfolded_scaffold(np.zeros((N, N)), np.zeros((N, 1)), np.zeros(1), "tanh", T=T, dtype=torch.float32)
    scaffold(net, ScaffoldConfig(target_modules=[r"layers\.\d+"], r=1, spec=LEGACY_NORMAL, root_seed=seed))
    for t in range(T):
        expected = _legacy_normal_draw(seed, t, N)
        np.testing.assert_allclose(Ws[t], expected, rtol=1e-14, atol=0)
        np.testing.assert_allclose(net.layers[t].W_seed.numpy(), expected.astype(np.float32), rtol=1e-6, atol=0)


@settings(max_examples=10, deadline=None)
@given(N=st.integers(2, 16), T=st.integers(1, 6), seed=st.integers(0, 2**32),
       family=st.sampled_from(["normal", "orthogonal", "laplace"]))
def test_lottalora_scaffold_at_step_0_is_the_non_autonomous_esn(N, T, seed, family):
    """Prop. 1 in the toolkit: at step 0 (beta = 1, B = 0) with bias W_in u, the LottaLoRA model that
    scaffold() builds is the non-autonomous ESN of its own W_seed (float32). Which W_t those are is
    checked independently by test_untied_weights_are_the_layers_seeded_draws."""
    spec = DistributionSpec(family)
    W_in, u, x0 = _problem(N, 3, seed)
    net = U.unfolded_scaffold(np.zeros((N, N)), W_in, u, "tanh", T=T, dtype=torch.float32)
    scaffold(net, ScaffoldConfig(target_modules=[r"layers\.\d+"], r=1, spec=spec, root_seed=seed, bias="frozen"))
    with torch.no_grad():
        for layer in net.layers:
            layer.bias.copy_(torch.from_numpy(W_in @ u).float())
        states = net.states(torch.from_numpy(x0).float()).double().numpy()
        Ws = [layer.W_seed.double().numpy() for layer in net.layers]
    np.testing.assert_allclose(states, U.esn_states(Ws, W_in, u, phi="tanh", x0=x0), rtol=0, atol=1e-5)
    assert [layer.beta.item() for layer in net.layers] == [1.0] * T
    assert all(not layer.lora_B.any() for layer in net.layers)


def test_unfolding_rejects_bad_arguments():
    W, W_in, u = np.eye(3), np.ones((3, 2)), np.ones(2)
    with pytest.raises(ValueError, match="T"):
        U.esn_states(W, W_in, u)  # a tied W needs T
    with pytest.raises(ValueError, match="T=2"):
        U.esn_states([W, W, W], W_in, u, T=2)
    with pytest.raises(ValueError, match="square"):
        U.esn_states([W, np.ones((3, 2))], W_in, u)
    with pytest.raises(ValueError, match="u must be"):
        U.esn_states(W, W_in, np.ones((5, 2)), T=3)
    with pytest.raises(ValueError, match="x0"):
        U.esn_states(W, W_in, u, T=2, x0=np.ones(4))
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        U.esn_states(W, W_in, u, T=2, phi="gelu")
    with pytest.raises(ValueError, match="no torch form"):
        U.unfolded_scaffold(W, W_in, u, lambda x: x**3, T=2)
    with pytest.raises(ValueError, match="N"):
        U.untied_weights("normal", 0, 2, 0)
