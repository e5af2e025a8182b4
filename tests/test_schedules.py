"""Destabilised scaffolds (Prop. 5, theory/05_beta_resampling.md): training really redraws W_seed.

A forward hook records the W_seed each scaffold layer multiplies by in every training step, so these
tests see what the training loop does, not what advance() would do if called: a loop that never
advances the epoch scaffold, or advances the cycle with the wrong step, fails them.
"""

from __future__ import annotations

import math

import torch

from reservoir_depth.distributions import torch_rng
from reservoir_depth.models import build
from reservoir_depth.scaffold import ScaffoldConfig, scaffold, scaffold_layers
from reservoir_depth.train import TrainConfig, train

EPOCHS, BATCH = 3, 64


def _model(d, **kw):
    with torch_rng(0):
        m = build("mlp", d_in=d.d_in, n_out=d.n_classes, hidden=(32, 16))
    return scaffold(m, ScaffoldConfig(target_modules=m.scaffold_targets, trainable=m.scaffold_trainable, r=2,
                                      root_seed=0, **kw))


def _seen_in_training(model, data) -> dict[str, list[tuple[torch.Tensor, object]]]:
    """Per scaffold layer, (W_seed, draw_id) as used by each training-mode forward, in order."""
    seen: dict[str, list] = {name: [] for name, _ in scaffold_layers(model)}
    hooks = [layer.register_forward_pre_hook(
        lambda mod, args, name=name: seen[name].append((mod.W_seed.detach().clone(), mod.draw_id))
        if mod.training else None) for name, layer in scaffold_layers(model)]
    # on the CPU: draws compared bit for bit with CPU probes (a CUDA draw may differ in the last bit)
    train(model, data, TrainConfig(epochs=EPOCHS, batch_size=BATCH, lr=1e-3, progress=False, device="cpu"))
    for h in hooks:
        h.remove()
    return seen


def _canonical(data) -> dict[str, torch.Tensor]:
    return {name: layer.W_seed.clone() for name, layer in scaffold_layers(_model(data))}


def test_static_scaffold_is_never_redrawn(blobs):
    canonical = _canonical(blobs)
    for name, seen in _seen_in_training(_model(blobs), blobs).items():
        assert len(seen) == EPOCHS * math.ceil(len(blobs.X_train) / BATCH)
        assert all(torch.equal(w, canonical[name]) and draw_id == 0 for w, draw_id in seen)


def test_epoch_schedule_redraws_every_epoch(blobs):
    """Epoch e (1-based) trains on draw ["epoch", e - 1] (the canonical W_seed for e = 1): constant within an
    epoch, a different matrix in each epoch, the same one regenerated from the seed by set_draw."""
    steps = math.ceil(len(blobs.X_train) / BATCH)
    canonical = _canonical(blobs)
    model = _model(blobs, schedule="epoch")
    seen = _seen_in_training(model, blobs)
    probe = dict(scaffold_layers(_model(blobs, schedule="epoch")))
    for name, calls in seen.items():
        assert len(calls) == EPOCHS * steps
        per_epoch = [calls[e * steps:(e + 1) * steps] for e in range(EPOCHS)]
        for e, epoch_calls in enumerate(per_epoch):
            w0, id0 = epoch_calls[0]
            assert id0 == (0 if e == 0 else ["epoch", e])
            assert all(torch.equal(w, w0) and i == id0 for w, i in epoch_calls)
            probe[name].set_draw(id0)
            assert torch.equal(w0, probe[name].W_seed)
        firsts = [c[0][0] for c in per_epoch]
        assert torch.equal(firsts[0], canonical[name])
        assert all(not torch.equal(firsts[a], firsts[b]) for a in range(EPOCHS) for b in range(a))


def test_step_schedule_cycles_through_k_draws(blobs):
    """Step t trains on draw ["cycle", t mod k] (0 = canonical): period exactly k, k distinct matrices."""
    k = 3
    canonical = _canonical(blobs)
    seen = _seen_in_training(_model(blobs, schedule="step", k=k), blobs)
    for name, calls in seen.items():
        assert len(calls) > 2 * k
        for t, (w, draw_id) in enumerate(calls):
            assert draw_id == (0 if t % k == 0 else ["cycle", t % k])
            assert torch.equal(w, calls[t % k][0])
        assert torch.equal(calls[0][0], canonical[name])
        assert all(not torch.equal(calls[a][0], calls[b][0]) for a in range(k) for b in range(a))


def test_batch_schedule_uses_k_scaffolds_within_a_batch(blobs):
    """In training mode the k sub-batches see k different scaffolds: the first part matches the canonical
    forward, the others do not; in eval mode the canonical W_seed serves the whole batch."""
    k = 2
    model = _model(blobs, schedule="batch", k=k)
    x = blobs.X_train[:8]
    for name, layer in scaffold_layers(model):  # layer by layer: the MLP's dropout also differs in training
        h = x if name == "layers.0" else torch.randn(8, layer.weight_shape[1], generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            canon, mixed = layer.eval()(h), layer.train()(h)
        torch.testing.assert_close(mixed[:4], canon[:4])
        assert not torch.allclose(mixed[4:], canon[4:])
