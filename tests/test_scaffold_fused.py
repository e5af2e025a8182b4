"""The fused autograd paths (_LottaLinear, _LottaConv, _scale_addmm) against eq. (1) through plain
autograd: outputs and every gradient, gradcheck, what is saved for backward, autocast and a W_seed held
in bf16, and torch.compile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from reservoir_depth.scaffold import (ScaffoldConfig, ScaffoldLayer, ScaffoldLinear, ScaffoldTransposedLinear, scaffold,
                                      set_seed_dtype)
from reservoir_depth.scaffold.fused import _LottaConv, _LottaLinear, _scale_addmm

from scaffold_cases import BF16, X, gen, perturb_b_and_beta, scaffolded_conv_mlp


# ----------------------------------------------------------------------------- the fused linear path


@pytest.mark.parametrize("compiling", [False, True])
@pytest.mark.parametrize("inplace", [False, True])
def test_scale_addmm_is_beta_t_plus_s_m1_m2_on_both_paths(monkeypatch, compiling, inplace):
    """The CPU's one-pass form (beta read as a number) and the form used while compiling agree with
    beta t + s m1 m2; in place returns t itself, otherwise t is left as it was."""
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: compiling)
    g = gen(21)
    t, m1, m2 = (torch.randn(*sh, generator=g, dtype=torch.float64) for sh in ((5, 4), (5, 3), (3, 4)))
    beta, before = torch.tensor(0.7, dtype=torch.float64), t.clone()
    out = _scale_addmm(t, beta, m1, m2, 1.5, inplace=inplace)
    torch.testing.assert_close(out, 0.7 * before + 1.5 * m1 @ m2, rtol=1e-12, atol=1e-12)
    assert (out is t) == inplace
    if not inplace:
        torch.testing.assert_close(t, before, rtol=0, atol=0)


@given(st.integers(1, 7), st.integers(1, 6), st.integers(1, 20), st.integers(1, 3),
       st.sampled_from(["keep", "frozen", "none", "trainable"]), st.booleans(), st.booleans(), st.booleans(),
       st.booleans(), st.floats(-2.0, 2.0), st.integers(0, 2**16))
@settings(max_examples=60, deadline=None)
def test_fused_linear_agrees_with_plain_autograd_in_float64(d_in, d_out, n, r, bias, need_x, strided, conv1d, three_d,
                                                            beta, seed):
    """Output and every gradient of the fused linear equal eq. (1) through plain autograd: batches on both
    sides of n = d_in, with and without an input gradient, strided inputs, (n, d_in) and (n, 2, d_in) inputs,
    each bias mode, nn.Linear and transformers' Conv1D layout, any beta (0 included)."""
    cls, r = ScaffoldTransposedLinear if conv1d else ScaffoldLinear, min(r, d_in, d_out)
    layer = cls(d_in, d_out, "fc", ScaffoldConfig(r=r, bias=bias, root_seed=seed % 7).settings_for("fc")).double()
    g = gen(seed)
    with torch.no_grad():
        layer.lora_B.normal_(generator=g)
        layer.beta.fill_(beta)
        if layer.bias is not None:
            layer.bias.normal_(generator=g)
    shape = (n, 2, d_in) if three_d else (n, d_in)
    x = torch.randn(shape[::-1] if strided else shape, generator=g, dtype=torch.float64)
    x = (x.permute(*reversed(range(x.dim()))) if strided else x).requires_grad_(need_x)
    params = [p for p in (layer.beta, layer.lora_A, layer.lora_B, layer.bias) if p is not None and p.requires_grad]
    inputs = params + ([x] if need_x else [])
    y, ref = layer(x), ScaffoldLayer.forward(layer, x)
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)
    up = torch.randn(y.shape, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(y, inputs, up), torch.autograd.grad(ref, inputs, up)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_fused_linear_passes_gradcheck_and_runs_under_autocast():
    layer = ScaffoldLinear(6, 4, "fc", ScaffoldConfig(r=2, bias="trainable").settings_for("fc")).double()
    with torch.no_grad():
        layer.lora_B.normal_(generator=gen(1))
        layer.bias.normal_(generator=gen(4))
    fn = lambda x, b, A, B, c: _LottaLinear.apply(x, layer.W_seed, b, A, B, c, layer.s)
    for n in (3, 12):  # batch below and above d_in: beta and B A applied to the output, or folded into W_eff
        x = torch.randn(n, 6, dtype=torch.float64, requires_grad=True, generator=gen(2))
        assert torch.autograd.gradcheck(fn, (x, layer.beta, layer.lora_A, layer.lora_B, layer.bias))
        torch.testing.assert_close(fn(x, layer.beta, layer.lora_A, layer.lora_B, layer.bias),
                                   ScaffoldLayer.forward(layer, x), rtol=1e-12, atol=1e-12)
    lf = ScaffoldLinear(6, 4, "fc", ScaffoldConfig(r=2).settings_for("fc"))
    xf = torch.randn(5, 6, requires_grad=True, generator=gen(3))
    with torch.autocast("cpu", torch.bfloat16):
        y = lf(xf)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert xf.grad.dtype == lf.lora_A.grad.dtype == lf.beta.grad.dtype == torch.float32
    ref = ScaffoldLayer.forward(lf, xf.detach())
    torch.testing.assert_close(y.float(), ref, rtol=0.05, atol=0.05)
    assert lf.W_seed.grad is None


@pytest.mark.parametrize("three_d", [False, True])
def test_fused_linear_without_an_input_gradient_matches_plain_autograd(three_d):
    """A first layer (x needs no gradient) keeps W x for beta's gradient instead of forming g W."""
    layer = ScaffoldLinear(7, 5, "fc", ScaffoldConfig(r=2, bias="trainable").settings_for("fc")).double()
    with torch.no_grad():
        layer.lora_B.normal_(generator=gen(8))
        layer.beta.fill_(0.4)
    x = torch.randn((3, 4, 7) if three_d else (6, 7), generator=gen(9), dtype=torch.float64)
    params = [layer.beta, layer.lora_A, layer.lora_B, layer.bias]
    y, ref = layer(x), ScaffoldLayer.forward(layer, x)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    up = torch.randn(y.shape, generator=gen(10), dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(y, params, up), torch.autograd.grad(ref, params, up)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    fn = lambda beta, A, B, c: _LottaLinear.apply(x.reshape(-1, 7), layer.W_seed, beta, A, B, c, layer.s)
    assert torch.autograd.gradcheck(fn, (layer.beta, layer.lora_A, layer.lora_B, layer.bias))


# ----------------------------------------------------------------------------- the fused conv path


CONV_CASES = [  # (nd, c_in, c_out, kernel, stride, padding, dilation, r, bias)
    (2, 3, 4, 3, 1, 1, 1, 2, True),
    (2, 3, 5, 3, 2, 0, 1, 1, False),
    (2, 2, 3, (3, 2), (2, 1), (1, 0), (1, 2), 2, True),
    (2, 4, 4, 1, 1, 0, 1, 3, True),
    (2, 3, 4, 3, 1, "same", 2, 2, False),
    (2, 3, 4, 2, 1, "valid", 1, 2, True),
    (1, 3, 4, 3, 1, 1, 1, 2, True),
    (1, 2, 6, 5, 3, 2, 2, 1, False),
    (1, 3, 4, 4, 1, "same", 1, 2, True),  # even kernel: asymmetric 'same' padding, the plain path
]


def conv_layer(nd, c_in, c_out, kernel, stride, padding, dilation, r, bias, seed=0, dtype=torch.float64):
    cls = nn.Conv1d if nd == 1 else nn.Conv2d
    conv = cls(c_in, c_out, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias)
    layer = scaffold(nn.Sequential(conv), ScaffoldConfig(target_modules=["0"], r=r, root_seed=seed,
                                                         bias="trainable" if bias else "none"))[0].to(dtype)
    g = gen(seed + 1)
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g, dtype=dtype))
        layer.beta.fill_(0.6 + seed % 5 / 4)
    return layer


def conv_input(layer, n=2, size=9, seed=3, dtype=torch.float64):
    spatial = (size,) * layer.nd
    return torch.randn(n, layer.in_channels, *spatial, generator=gen(seed), dtype=dtype, requires_grad=True)


def _params(layer, x):
    return [x, layer.beta, layer.lora_A, layer.lora_B] + ([layer.bias] if layer.bias is not None else [])


def _agree(layer, x, rtol, atol, seed=0):
    y, ref = layer(x), ScaffoldLayer.forward(layer, x)
    torch.testing.assert_close(y, ref, rtol=rtol, atol=atol)
    up = torch.randn(y.shape, generator=gen(seed), dtype=y.dtype)
    params = _params(layer, x)
    for a, b in zip(torch.autograd.grad(y, params, up), torch.autograd.grad(ref, params, up)):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("case", CONV_CASES)
def test_fused_conv_matches_plain_autograd_in_float64_and_passes_gradcheck(case):
    layer = conv_layer(*case)
    x = conv_input(layer)
    _agree(layer, x, 1e-10, 1e-10)
    padding = layer._fused_padding()
    if padding is None:
        return
    W = layer.W_seed
    fn = lambda x, beta, A, B, *bias: _LottaConv.apply(x, W, beta, A, B, *(bias or (None,)), layer.s,
                                                       layer.stride, padding, layer.dilation)
    small = conv_input(layer, n=1, size=6)
    assert torch.autograd.gradcheck(fn, tuple(_params(layer, small)))


@settings(max_examples=20, deadline=None)
@given(st.sampled_from([1, 2]), st.integers(1, 4), st.integers(1, 6), st.integers(1, 3), st.integers(1, 2),
       st.integers(0, 2), st.integers(1, 2), st.booleans(), st.integers(0, 2**16))
def test_fused_conv_agrees_with_plain_autograd_in_float32(nd, c_in, c_out, kernel, stride, padding, dilation,
                                                         bias, seed):
    r = 1 + seed % min(c_out, c_in * kernel ** nd)
    layer = conv_layer(nd, c_in, c_out, kernel, stride, padding, dilation, r, bias, seed, torch.float32)
    size = max(dilation * (kernel - 1) + 1 - 2 * padding, 1) + seed % 5
    x = conv_input(layer, n=1 + seed % 3, size=size, seed=seed, dtype=torch.float32)
    _agree(layer, x, 1e-4, 1e-4, seed)


def _saved_numel(layer, x) -> int:
    """Elements of activation tensors autograd keeps for backward (not the layer's own tensors)."""
    own = {t.untyped_storage().data_ptr() for t in [*layer.parameters(), *layer.buffers()]}
    seen = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in own:
            seen[t.untyped_storage().data_ptr()] = t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    return sum(seen.values())


def test_fused_conv_keeps_only_x_and_a_x_for_backward():
    layer = conv_layer(2, 4, 8, 3, 1, 1, 1, 2, True, dtype=torch.float32)
    x = conv_input(layer, n=2, size=10, dtype=torch.float32)
    u_numel = 2 * layer.r * 10 * 10
    assert _saved_numel(layer, x) == x.numel() + u_numel


def test_unbatched_conv_input_and_the_batch_schedule_take_the_plain_semantics():
    layer = conv_layer(2, 3, 4, 3, 1, 1, 1, 2, True, dtype=torch.float32)
    x = torch.randn(3, 7, 7, generator=gen(4))
    torch.testing.assert_close(layer(x), ScaffoldLayer.forward(layer, x.unsqueeze(0)).squeeze(0))
    torch.manual_seed(0)
    model = scaffold(nn.Sequential(nn.Conv2d(3, 4, 3)), ScaffoldConfig(target_modules=["0"], r=2,
                                                                        schedule="batch", k=2)).train()
    layer, x = model[0], torch.randn(4, 3, 6, 6, generator=gen(5))
    halves = [F.conv2d(p, w) for p, w in zip(x.tensor_split(2), layer._stack)]
    torch.testing.assert_close(layer(x), torch.cat(halves) + layer.bias.view(1, -1, 1, 1))


def test_fused_conv_under_cpu_autocast_returns_float32_gradients():
    layer = conv_layer(2, 3, 4, 3, 1, 1, 1, 2, True, dtype=torch.float32)
    x = conv_input(layer, dtype=torch.float32)
    with torch.autocast("cpu", BF16):
        y = layer(x)
    assert y.dtype == BF16
    y.float().sum().backward()
    assert x.grad.dtype == layer.beta.grad.dtype == layer.lora_A.grad.dtype == layer.bias.grad.dtype == torch.float32
    torch.testing.assert_close(y.float(), ScaffoldLayer.forward(layer, x.detach()), rtol=0.05, atol=0.05)


def test_fused_conv_without_an_input_gradient_still_trains_beta_a_b():
    """The first layer's input needs no gradient: the fused backward skips dL/dx and keeps the rest."""
    layer = conv_layer(2, 1, 6, 3, 1, 1, 1, 2, True)
    x = conv_input(layer).detach()
    params = _params(layer, x)[1:]
    up = torch.randn(layer(x).shape, generator=gen(7), dtype=torch.float64)
    fused = torch.autograd.grad(layer(x), params, up)
    plain = torch.autograd.grad(ScaffoldLayer.forward(layer, x), params, up)
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- both paths


def test_generic_and_fused_paths_return_the_same_dtype_under_autocast():
    x = torch.randn(4, 6)
    outs = {}
    for r, schedule, k in ((0, "static", 1), (2, "static", 1), (2, "batch", 2)):
        layer = ScaffoldLinear(6, 5, "fc", ScaffoldConfig(r=r, schedule=schedule, k=k).settings_for("fc")).train()
        with torch.autocast("cpu", torch.bfloat16):
            outs[(r, schedule)] = layer(x).dtype
    assert set(outs.values()) == {torch.bfloat16}, outs


def _copies_of(shape, fn) -> int:
    """How many dtype copies (aten._to_copy) of a tensor of ``shape`` ``fn()`` makes."""
    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._to_copy.default and tuple(args[0].shape) == tuple(shape):
                Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.n


@pytest.mark.parametrize("which", ["linear", "linear, n >= d_in (W_eff)", "conv"])
def test_under_autocast_a_bf16_seed_is_never_cast(which):
    model = scaffolded_conv_mlp()
    perturb_b_and_beta(model)
    layer = model[3] if which.startswith("linear") else model[0]
    n = 200 if "W_eff" in which else 4
    x = (torch.randn(n, 150, generator=gen(12)) if which.startswith("linear") else X).requires_grad_()

    def step():
        with torch.autocast("cpu", BF16):
            y = layer(x)
        y.float().sum().backward()

    assert _copies_of(layer.W_seed.shape, step) >= 2  # float32 seeds: cast in forward and backward
    set_seed_dtype(model, BF16)
    assert _copies_of(layer.W_seed.shape, step) == 0


@pytest.mark.slow
def test_fused_paths_compile_and_agree_with_eager():
    """torch.compile traces both autograd functions (conv and linear) to the eager outputs and gradients."""
    torch.manual_seed(0)
    model = scaffold(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2),
                                   nn.Flatten(), nn.Linear(8 * 7 * 7, 4)),
                     ScaffoldConfig(target_modules=["0", "2", "4"], r=2))
    perturb_b_and_beta(model)
    x = torch.randn(4, 3, 16, 16, generator=gen(11))
    ref = model(x)
    ref.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    y = torch.compile(model)(x)
    y.square().sum().backward()
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    for n, g in grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[n].grad, g, rtol=1e-4, atol=1e-5)
