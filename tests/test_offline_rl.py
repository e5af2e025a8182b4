"""Offline RL (offline_rl.py) and the Decision Transformer (models/decision.py)."""

import hashlib
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reservoir_depth.models import build
from reservoir_depth.scaffold import ScaffoldLinear

from helpers import scaffolded

gym = pytest.importorskip("gymnasium")
rl = pytest.importorskip("reservoir_depth.offline_rl")

TINY = dict(d_in=4, n_out=2, d_model=16, layers=2, heads=2, context=6, max_steps=500, return_scale=100.0)

# sha256 of every trajectory's states, actions and rewards of generate("cartpole", episodes=1, seed=3)
PINNED_CARTPOLE = "a441357979ca955de9f3028c90ab3e6e4aaaaa7d23ada08acbfba49520155513"


@pytest.fixture(scope="module")
def cartpole():
    return rl.generate("cartpole", episodes=2, seed=0)


def digest(data) -> str:
    h = hashlib.sha256()
    for tr in data.trajectories:
        for k in ("states", "actions", "rewards"):
            h.update(tr[k].tobytes())
    return h.hexdigest()


def test_generate_is_seeded_and_bit_stable():
    a, b = rl.generate("cartpole", episodes=1, seed=3), rl.generate("cartpole", episodes=1, seed=3)
    assert digest(a) == digest(b) == PINNED_CARTPOLE
    assert digest(rl.generate("cartpole", episodes=1, seed=4)) != digest(a)


def test_behaviour_policies_are_of_mixed_quality(cartpole):
    means = {p: np.mean(r) for p, r in cartpole.policy_returns.items()}
    assert means["expert"] > means["noisy"] > means["random"]
    assert [len(r) for r in cartpole.policy_returns.values()] == [2, 2, 2]


def test_windows_hold_returns_to_go_and_pad_short_episodes(cartpole):
    K = 6
    w = cartpole.windows(K)
    tr = cartpole.trajectories[0]
    T = len(tr["actions"])
    assert w["R"][0, 0].item() == pytest.approx(tr["rewards"].sum())  # R_0: the whole return
    assert torch.equal(w["label"][0], torch.from_numpy(tr["actions"][:K]))
    assert torch.equal(w["t"][1], torch.arange(1, K + 1))
    n = sum(max(1, len(t["actions"]) - K + 1) for t in cartpole.trajectories)
    assert len(w["R"]) == n and T >= K
    short = min(cartpole.trajectories, key=lambda t: len(t["actions"]))
    if len(short["actions"]) < K:  # a random CartPole episode can be shorter than K: padded, labelled -1
        assert (w["label"] == -1).any()


def always(action: int, model):
    """Make ``model`` choose ``action`` whatever it reads (head: weight 0, bias one-hot)."""
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.fill_(-5.0)
        model.head.bias[action] = 5.0
    return model


@pytest.mark.parametrize("action", [0, 1])
def test_evaluation_return_matches_a_hand_computed_episode(cartpole, action):
    model = always(action, build("decision-transformer", **TINY))
    env = gym.make("CartPole-v1", max_episode_steps=500)
    for seed in (10_000, 10_001):
        env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            _, r, terminated, truncated, _ = env.step(action)
            total, done = total + r, terminated or truncated
        assert rl.evaluate(model, cartpole, episodes=2, seed=10_000)[seed - 10_000] == total


def test_the_model_reads_the_target_return(cartpole):
    """act_with feeds R_t = target - rewards so far: the model sees the target it is given."""
    seen = []

    class Spy(torch.nn.Module):
        context = 4

        def forward(self, R, s, a, t):
            seen.append((R.clone(), t.clone()))
            return torch.zeros(1, R.shape[1], 2)
    rl.rollout("cartpole", rl.act_with(Spy(), cartpole, target=123.0), seed=0)
    assert seen[0][0].tolist() == [[123.0]]
    assert len(seen) > 5  # CartPole pays 1 per step: at t = 5 the last K = 4 steps are 2..5
    assert seen[5][0].tolist() == [[123.0 - k for k in range(2, 6)]]
    assert seen[5][1].tolist() == [[2, 3, 4, 5]]


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 1000), t=st.integers(0, 4))
def test_attention_is_causal(seed, t):
    """The logits at s_t do not depend on a_t or on anything after step t."""
    model = build("decision-transformer", **TINY).eval()
    g = torch.Generator().manual_seed(seed)
    R, s = torch.randn(2, 6, generator=g), torch.randn(2, 6, 4, generator=g)
    a, steps = torch.randint(0, 2, (2, 6), generator=g), torch.arange(6).repeat(2, 1)
    R2, s2, a2 = R.clone(), s.clone(), a.clone()
    R2[:, t + 1:] += 1.0
    s2[:, t + 1:] += 1.0
    a2[:, t:] = 1 - a2[:, t:]
    torch.testing.assert_close(model(R2, s2, a2, steps)[:, :t + 1], model(R, s, a, steps)[:, :t + 1])
    assert not torch.allclose(model(R2, s2, a2, steps)[:, t + 1:], model(R, s, a, steps)[:, t + 1:])


def test_every_block_layer_and_the_step_table_are_scaffolds():
    model = scaffolded(build("decision-transformer", **TINY), r=2)
    linears = {n for n, m in model.named_modules() if isinstance(m, ScaffoldLinear)}
    assert linears == {f"blocks.{i}.{p}" for i in range(2) for p in
                       ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.up", "mlp.down")}
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert {"embed_return", "embed_state", "embed_action", "head"} <= trainable
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.endswith("W_seed"))


def test_fit_lowers_the_action_loss(cartpole):
    short = replace(cartpole, trajectories=[{k: v[:40] for k, v in tr.items()} for tr in cartpole.trajectories])
    model = scaffolded(build("decision-transformer", **TINY), r=4)
    losses = rl.fit(model, short, epochs=6, lr=3e-3, batch_size=32, seed=0)
    assert losses[-1] < 0.8 * losses[0]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match=r"unknown environment 'pong'; allowed: cartpole, acrobot"):
        rl.generate("pong")
    with pytest.raises(ValueError, match=r"episodes must be an int >= 1, got 0"):
        rl.generate("cartpole", episodes=0)
    with pytest.raises(ValueError, match=r"unknown behaviour policy 'greedy'; allowed: expert, noisy, random"):
        rl.behaviour("cartpole", "greedy", np.random.Generator(np.random.PCG64(0)))
    model = build("decision-transformer", **TINY)
    with pytest.raises(ValueError, match=r"actions must lie in \[0, 2\), got 0..2"):
        model(torch.zeros(1, 3), torch.zeros(1, 3, 4), torch.tensor([[0, 1, 2]]), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"K <= 6"):
        model(torch.zeros(1, 7), torch.zeros(1, 7, 4), torch.zeros(1, 7, dtype=torch.long),
              torch.zeros(1, 7, dtype=torch.long))
