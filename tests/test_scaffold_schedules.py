"""The destabilised scaffolds of Sec. 4: 'epoch' redraws W_seed every epoch, 'step' cycles k draws, 'batch'
sends each part of a training batch through its own scaffold, 'static' never redraws; the draw id each
layer records, and the draws train() actually uses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reservoir_depth.distributions import torch_rng
from reservoir_depth.models import build
from reservoir_depth.scaffold import ScaffoldConfig, ScaffoldLinear, advance, scaffold, scaffold_layers
from reservoir_depth.train import TrainConfig, train

from scaffold_cases import Net, canonical, gen, perturb_adapters


# ----------------------------------------------------------------------------- advance() and the draws


def w_seeds(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.W_seed.clone() for n, m in scaffold_layers(model)}


def scaffolded_net(**kw) -> nn.Module:
    return scaffold(Net(), ScaffoldConfig(target_modules=(r"body\.\d+",), trainable=("head",), r=2, **kw))


def test_epoch_schedule():
    model = scaffolded_net(schedule="epoch")
    canonical = w_seeds(model)
    advance(model, epoch=1)
    e1 = w_seeds(model)
    advance(model, epoch=2)
    e2 = w_seeds(model)
    for n in canonical:
        assert e1[n].shape == canonical[n].shape and e1[n].dtype == canonical[n].dtype
        assert not torch.equal(e1[n], canonical[n]) and not torch.equal(e2[n], e1[n])
    advance(model, epoch=1)
    assert all(torch.equal(w, e1[n]) for n, w in w_seeds(model).items())
    # the forward pass uses the current scaffold
    layer = model.body[0]
    x = torch.randn(3, 6, generator=gen(0))
    torch.testing.assert_close(layer(x), F.linear(x, e1["body.0"]) + layer.bias)
    advance(model, epoch=0)
    assert all(torch.equal(w, canonical[n]) for n, w in w_seeds(model).items())
    advance(model, step=5)  # not the epoch schedule's clock
    assert all(torch.equal(w, canonical[n]) for n, w in w_seeds(model).items())


def test_step_schedule_cycles_with_period_k():
    model = scaffolded_net(schedule="step", k=3)
    canonical = w_seeds(model)
    seen = []
    for step in range(9):
        advance(model, step=step)
        seen.append(w_seeds(model))
    for step, ws in enumerate(seen):
        for n, w in ws.items():
            assert torch.equal(w, seen[step % 3][n])
    for n in canonical:
        assert torch.equal(seen[0][n], canonical[n])
        first = [seen[i][n] for i in range(3)]
        assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])
        assert not torch.equal(first[0], first[2])


def test_static_schedule_ignores_advance():
    model = scaffolded_net()
    canonical = w_seeds(model)
    advance(model, epoch=3, step=7)
    assert all(torch.equal(w, canonical[n]) for n, w in w_seeds(model).items())


@pytest.mark.parametrize("n", [1, 3])
def test_batch_schedule_splits_the_batch(n):
    config = ScaffoldConfig(r=2, schedule="batch", k=2, root_seed=4)
    layer = ScaffoldLinear(5, 4, "fc", config.settings_for("fc"))
    perturb_adapters(layer, seed=1)
    w0 = canonical(config, (4, 5), "fc")
    stack = layer._stack
    assert stack.shape == (2, 4, 5)
    assert torch.equal(stack[0], w0) and not torch.equal(stack[1], w0)

    def through(x, w):
        return layer.beta * F.linear(x, w) + layer.s * layer.adapter(x) + layer.bias

    x = torch.randn(2 * n, 5, generator=gen(n))
    layer.train()
    y = layer(x)
    torch.testing.assert_close(y[:n], through(x[:n], stack[0]))
    torch.testing.assert_close(y[n:], through(x[n:], stack[1]))
    layer.eval()
    torch.testing.assert_close(layer(x), through(x, w0))
    assert torch.equal(layer.W_seed, w0)


def test_batch_schedule_uses_all_k_scaffolds():
    layer = ScaffoldLinear(5, 4, "fc", ScaffoldConfig(r=1, schedule="batch", k=4).settings_for("fc")).train()
    x = torch.randn(6, 5, generator=gen(0))
    parts = x.tensor_split(4)  # sizes 2, 2, 1, 1
    expected = torch.cat([F.linear(p, layer._stack[i]) + layer.bias for i, p in enumerate(parts)])
    torch.testing.assert_close(layer(x), expected)


# ----------------------------------------------------------------------------- draw ids


def test_draw_id_follows_the_schedule_and_set_draw_regenerates_it():
    cfg = ScaffoldConfig(target_modules=r"layers\.\d+", trainable="head", r=2, schedule="epoch")
    model = scaffold(build("mlp", d_in=8, n_out=3, hidden="tiny"), cfg)
    layer = model.layers[0]
    assert layer.draw_id == 0
    advance(model, epoch=3)
    assert layer.draw_id == ["epoch", 3]
    w3 = layer.W_seed.clone()
    other = scaffold(build("mlp", d_in=8, n_out=3, hidden="tiny"), cfg).layers[0]
    other.set_draw(["epoch", 3])
    assert torch.equal(other.W_seed, w3) and other.draw_id == ["epoch", 3]
    advance(model, epoch=0)
    assert layer.draw_id == 0

    step = scaffold(build("mlp", d_in=8, n_out=3, hidden="tiny"),
                    ScaffoldConfig(target_modules=r"layers\.\d+", trainable="head", r=2, schedule="step", k=3))
    advance(step, step=4)
    assert step.layers[0].draw_id == ["cycle", 1]
    w = step.layers[0].W_seed.clone()
    advance(step, step=0)
    step.layers[0].set_draw(["cycle", 1])
    assert torch.equal(step.layers[0].W_seed, w)


@pytest.mark.parametrize("bad", [["epoch", -1], ["cycle", 3], ["moon", 1], "x", 1.5, ["epoch", True]])
def test_set_draw_refuses_ids_the_schedule_cannot_produce(bad):
    layer = ScaffoldLinear(4, 3, "fc", ScaffoldConfig(r=1, schedule="step", k=3).settings_for("fc"))
    with pytest.raises(ValueError, match="draw"):
        layer.set_draw(bad)


# ----------------------------------------------------------------------------- the draws training uses


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


# ----------------------------------------------------------------------------- 'fresh': a new draw every step


def test_fresh_schedule_draws_a_new_scaffold_at_every_step_and_never_repeats(tmp_path):
    from reservoir_depth import io

    model = scaffolded_net(schedule="fresh")
    seen = [w_seeds(model)]
    for step in range(1, 6):
        advance(model, step=step)
        seen.append(w_seeds(model))
        assert all(m.draw_id == ["step", step] for _, m in scaffold_layers(model))
    for n in seen[0]:
        for i in range(len(seen)):
            for j in range(i):
                assert not torch.equal(seen[i][n], seen[j][n]), (n, i, j)
    advance(model, step=3)
    assert all(torch.equal(w, seen[3][n]) for n, w in w_seeds(model).items())  # regenerated from the seed
    advance(model, epoch=2)  # not this schedule's clock
    assert all(torch.equal(w, seen[3][n]) for n, w in w_seeds(model).items())
    perturb_adapters(model)
    x = torch.randn(3, 6, generator=gen(0))
    io.save(model, tmp_path)
    torch.testing.assert_close(io.load(tmp_path, model=Net())(x), model(x), rtol=0, atol=0)


def test_fresh_schedule_takes_no_k():
    with pytest.raises(ValueError, match="k=2"):
        ScaffoldConfig(schedule="fresh", k=2)


def test_fresh_schedule_draw_ids(blobs):
    model = _model(blobs, schedule="fresh")
    seen = _seen_in_training(model, blobs)
    for name, draws in seen.items():
        ids = [d for _, d in draws]
        assert ids == [0] + [["step", s] for s in range(1, len(ids))], name
