"""Offline RL at small scale: trajectories from seeded behaviour policies on gymnasium's classic-control
environments, a Decision Transformer (models/decision.py) trained on them, and its evaluation by the
return it earns in the environment when conditioned on a target return (Chen et al. 2021; the D4RL
recipe of mixed-quality behaviour data, at CPU size).

- ``ENVS``: each environment's behaviour policies: "expert" (a scripted controller, a random action
  with probability 0.1), "noisy" (the same, probability 0.5) and "random"; the target return the
  model is conditioned on at evaluation (the expert's level), and the return scale of its input.
- ``generate(env, episodes, seed)``: an :class:`OfflineData` set; episode i of policy p resets the
  environment with seed ``seed * 1_000_003 + 1000 * p + i`` and draws the policy's random actions
  from numpy's PCG64 seeded the same way, so the seed regenerates every trajectory bit for bit.
- ``rollout(env, act, seed)``: one episode's return under ``act(states, actions, rewards) -> action``;
  ``evaluate(model, data, target, episodes, seed)`` the mean return of the greedy model.
- ``fit(model, data, ...)``: AdamW on the action cross-entropy of every window of K steps.

Needs gymnasium (``pip install gymnasium`` or the extra ``rl``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .distributions import torch_rng


def _cartpole(s: np.ndarray) -> int:
    """Push the cart toward the side the pole falls to (angle, angular velocity, position, velocity)."""
    return int(s[2] + 0.5 * s[3] + 0.01 * s[0] + 0.1 * s[1] > 0)


def _acrobot(s: np.ndarray) -> int:
    """Pump energy: torque +1 while the second joint swings forward, -1 otherwise."""
    return 2 if s[5] > 0 else 0


@dataclass(frozen=True)
class Env:
    """A gymnasium environment, its scripted controller, the target return and the return scale."""

    gym_id: str
    controller: Callable[[np.ndarray], int]
    target: float  # the return the model is asked for at evaluation (the expert's level)
    return_scale: float  # returns are divided by it at the model's input
    max_steps: int = 500


ENVS: dict[str, Env] = {
    "cartpole": Env("CartPole-v1", _cartpole, target=500.0, return_scale=100.0),
    "acrobot": Env("Acrobot-v1", _acrobot, target=-70.0, return_scale=100.0),
}
POLICIES: dict[str, float] = {"expert": 0.1, "noisy": 0.5, "random": 1.0}  # probability of a random action


def env_of(name: str) -> Env:
    """The registered environment ``name`` (ENVS); a clear error names the allowed ones."""
    if name not in ENVS:
        raise ValueError(f"unknown environment {name!r}; allowed: {', '.join(ENVS)}")
    return ENVS[name]


def make(name: str):
    """The gymnasium environment of ``ENVS[name]``; an ImportError names the install command."""
    try:
        import gymnasium as gym
    except ImportError as e:
        raise ImportError("offline RL needs gymnasium: pip install gymnasium (or pip install "
                          "'reservoir-depth[rl]')") from e
    spec = env_of(name)
    return gym.make(spec.gym_id, max_episode_steps=spec.max_steps)


def episode_seed(seed: int, policy: int, i: int) -> int:
    """The reset (and action-noise) seed of episode ``i`` of the ``policy``-th behaviour policy."""
    return seed * 1_000_003 + 1000 * policy + i


def rollout(name: str, act: Callable[[list, list, list], int], seed: int) -> tuple[float, dict[str, np.ndarray]]:
    """One episode of ``ENVS[name]`` reset with ``seed``: ``act(states, actions, rewards)`` sees the history
    (states s_0..s_t, actions and rewards before t) and returns a_t. Returns (the sum of rewards, the
    trajectory: states (T, d), actions (T,), rewards (T,))."""
    env = make(name)
    s, _ = env.reset(seed=int(seed))
    states, actions, rewards, done = [s], [], [], False
    while not done:
        a = int(act(states, actions, rewards))
        s, r, terminated, truncated, _ = env.step(a)
        actions.append(a)
        rewards.append(float(r))
        done = terminated or truncated
        if not done:
            states.append(s)
    env.close()
    traj = {"states": np.asarray(states, np.float32), "actions": np.asarray(actions, np.int64),
            "rewards": np.asarray(rewards, np.float32)}
    return float(sum(rewards)), traj


def behaviour(name: str, policy: str, rng: np.random.Generator) -> Callable[[list, list, list], int]:
    """The behaviour policy ``policy`` (POLICIES) of ``ENVS[name]``, drawing its random actions from ``rng``."""
    if policy not in POLICIES:
        raise ValueError(f"unknown behaviour policy {policy!r}; allowed: {', '.join(POLICIES)}")
    spec, p = env_of(name), POLICIES[policy]
    n_actions = int(make(name).action_space.n)

    def act(states, actions, rewards):
        explore = rng.random() < p
        a = int(rng.integers(n_actions))
        return a if explore else spec.controller(states[-1])
    return act


@dataclass
class OfflineData:
    """Trajectories of one environment, with what regenerates them (env, episodes per policy, seed)."""

    env: str
    episodes: int
    seed: int
    trajectories: list[dict[str, np.ndarray]] = field(repr=False)
    policy_returns: dict[str, list[float]]
    n_actions: int
    state_mean: np.ndarray = field(repr=False)
    state_std: np.ndarray = field(repr=False)

    @property
    def d_state(self) -> int:
        return int(self.trajectories[0]["states"].shape[1])

    def normalise(self, states: np.ndarray) -> np.ndarray:
        return (states - self.state_mean) / self.state_std

    def windows(self, K: int) -> dict[str, torch.Tensor]:
        """Every window of K steps (one per start; a trajectory shorter than K gives one, right-padded
        with action label -1): R (n, K) returns-to-go, s (n, K, d), a (n, K), t (n, K), label (n, K)."""
        out: dict[str, list] = {k: [] for k in ("R", "s", "a", "t", "label")}
        for tr in self.trajectories:
            T = len(tr["actions"])
            rtg = np.cumsum(tr["rewards"][::-1])[::-1].astype(np.float32)
            s = self.normalise(tr["states"]).astype(np.float32)
            for j in range(max(1, T - K + 1)):
                n = min(K, T - j)
                pad = lambda x, v=0: np.concatenate([x[j:j + n], np.full((K - n, *x.shape[1:]), v, x.dtype)])
                out["R"].append(pad(rtg))
                out["s"].append(pad(s))
                out["a"].append(pad(tr["actions"]))
                out["label"].append(pad(tr["actions"], -1))
                out["t"].append(pad(np.arange(T, dtype=np.int64)))
        return {k: torch.from_numpy(np.stack(v)) for k, v in out.items()}


def generate(name: str, episodes: int = 20, seed: int = 0) -> OfflineData:
    """``episodes`` episodes of each behaviour policy (POLICIES) on ``ENVS[name]``, from ``seed`` (module doc)."""
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be an int >= 1, got {episodes!r}")
    trajs, returns = [], {}
    for p, policy in enumerate(POLICIES):
        returns[policy] = []
        for i in range(episodes):
            es = episode_seed(seed, p, i)
            ret, traj = rollout(name, behaviour(name, policy, np.random.Generator(np.random.PCG64(es))), es)
            trajs.append(traj)
            returns[policy].append(ret)
    S = np.concatenate([t["states"] for t in trajs])
    return OfflineData(name, episodes, seed, trajs, returns, int(make(name).action_space.n),
                       S.mean(0), S.std(0) + 1e-6)


def act_with(model: nn.Module, data: OfflineData, target: float) -> Callable[[list, list, list], int]:
    """The model's greedy action given the last K steps of the history, R_t = target - rewards so far."""
    K = model.context

    @torch.no_grad()
    def act(states, actions, rewards):
        t = len(states) - 1
        j = max(0, t + 1 - K)
        R = target - np.concatenate([[0.0], np.cumsum(rewards)])[j:t + 1]
        s = data.normalise(np.asarray(states[j:t + 1], np.float32))
        a = np.asarray(actions[j:t] + [0], np.int64)  # a_t is a placeholder the logits at s_t cannot see
        logits = model(torch.tensor(R, dtype=torch.float32)[None], torch.from_numpy(s.astype(np.float32))[None],
                       torch.from_numpy(a)[None], torch.arange(j, t + 1)[None])
        return int(logits[0, -1].argmax())
    return act


def evaluate(model: nn.Module, data: OfflineData, target: float | None = None, episodes: int = 10,
             seed: int = 10_000) -> list[float]:
    """The returns of ``episodes`` greedy evaluation episodes (reset seeds seed, seed + 1, ...) conditioned
    on ``target`` (default: the environment's, ENVS)."""
    target = env_of(data.env).target if target is None else float(target)
    was = model.training
    model.eval()
    out = [rollout(data.env, act_with(model, data, target), seed + i)[0] for i in range(episodes)]
    model.train(was)
    return out


def fit(model: nn.Module, data: OfflineData, epochs: int = 5, lr: float = 1e-3, batch_size: int = 64,
        weight_decay: float = 0.01, seed: int = 0) -> list[float]:
    """AdamW over the parameters that require grad, on the cross-entropy of a_t at s_t over every window
    (padding left out). Returns the mean training loss per epoch; a non-finite loss is refused."""
    w = data.windows(model.context)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameter")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    gen, n, losses = torch.Generator().manual_seed(seed), len(w["R"]), []
    model.train()
    with torch_rng(seed):
        for epoch in range(epochs):
            total, count = 0.0, 0
            for idx in torch.randperm(n, generator=gen).split(batch_size):
                logits = model(w["R"][idx], w["s"][idx], w["a"][idx], w["t"][idx])
                loss = F.cross_entropy(logits.flatten(0, 1), w["label"][idx].flatten(), ignore_index=-1)
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(f"loss is {loss.item()} in epoch {epoch}; try a lower lr (now {lr:g})")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total, count = total + loss.item() * len(idx), count + len(idx)
            losses.append(total / count)
    return losses
