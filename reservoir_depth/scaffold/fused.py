"""Eq. (1) as autograd functions with hand-written backwards (tensors in, tensors out; no modules).

_LottaLinear and _LottaConv compute y = beta W_seed x + s B (A x) + b without a weight gradient for
W_seed and keep only x and u = A x for the backward; both run in the dtype autocast chooses, else x's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype autocast runs a matmul / conv of ``x`` in (float64 is never cast), else x's own."""
    dev = x.device.type
    if x.dtype != torch.float64 and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype


def _frozen_for(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A frozen weight as an op on ``x`` takes it: as held under autocast (which casts what it must, and
    nothing when W_seed is held in its dtype), else in x's dtype (a W_seed held in bf16 meets a float32
    input without autocast); as held for integer x (an embedding's ids)."""
    if w.dtype == x.dtype or not x.is_floating_point() or torch.is_autocast_enabled(x.device.type):
        return w
    return w.to(x.dtype)


def _scale_addmm(t: torch.Tensor, beta: torch.Tensor, m1: torch.Tensor, m2: torch.Tensor, s: float,
                 inplace: bool) -> torch.Tensor:
    """beta t + s m1 m2. On the CPU in one pass (the product's own scaling of t; beta read as a number,
    which costs no device sync there); elsewhere, and while compiling, t * beta and then the product."""
    if t.device.type == "cpu" and not torch.compiler.is_compiling():
        b = float(beta)
        return t.addmm_(m1, m2, beta=b, alpha=s) if inplace else torch.addmm(t, m1, m2, beta=b, alpha=s)
    t = t.mul_(beta.to(t.dtype)) if inplace else t * beta.to(t.dtype)
    return t.addmm_(m1, m2, alpha=s)


class _LottaLinear(torch.autograd.Function):
    """Eq. (1) for a Linear layer with a hand-written backward.

    Forward: where the batch n >= d_in, one product with W_eff = beta W + s B A (+ b), formed at
    weight size, so no pass runs over the output besides the product; below, beta and s B (A x) are
    applied to the output. u = A x is kept for dL/dB. No weight gradient for W_seed,
    and nothing saved but x and u: the gradient of beta, <g, W x>, is computed as <g W, x>, where
    g W is needed for dL/dx anyway. Where x needs no gradient (a first layer), g W would serve beta
    only: W x is kept instead (one output's memory for a product's time).
    The rank-r products run as (r, n) results (A x^T, B^T g^T): on CPUs 2-4x faster than (n, r) on
    data in cache, and no slower on data that is not.
    Every product runs in the dtype autocast chooses (bf16 on CUDA), else in x's dtype; x is
    cast once for both products, and a W_seed held in that dtype (set_seed_dtype) is not cast at all.
    """

    @staticmethod
    def forward(ctx, x0, W, beta, A, B, bias, s: float):
        dt = _compute_dtype(x0)
        x, Wd, Ad = x0.to(dt), W.to(dt), A.to(dt)
        b = None if bias is None else bias.to(dt)
        u = (Ad @ x.T).T  # A x as an (r, n) product
        need_x = ctx.needs_input_grad[0]
        if need_x and x.shape[0] >= W.shape[1]:  # W_eff costs d_out d_in, output passes n d_out
            W_eff = torch.addmm(Wd * beta.to(dt), B.to(dt), Ad, alpha=s)
            y = F.linear(x, W_eff, b)
        else:
            h = x @ Wd.T
            y = _scale_addmm(h, beta, u, B.to(dt).T, s, inplace=need_x)  # in place where h is not kept
            if b is not None:
                y += b
        kept = () if need_x else (h,)
        # x saved as given (a float32 input may be shared by several layers)
        ctx.save_for_backward(x0, W, beta, A, B, u, *kept)
        ctx.s, ctx.bias_dtype = s, None if bias is None or not ctx.needs_input_grad[5] else bias.dtype
        return y

    @staticmethod
    def backward(ctx, g):
        x0, W, beta, A0, B0, u, *h = ctx.saved_tensors
        s, dt = ctx.s, g.dtype  # compute in the gradient's dtype, return each grad in its input's
        x, A, B = x0.to(dt), A0.to(dt), B0.to(dt)
        acc = torch.promote_types(dt, torch.float32)
        # ordered so that what reads g runs together, then what reads x (each still in cache)
        gW = None if h else g @ W.to(dt)
        gB = (B.T @ g.T).T  # g B as an (r, n) product
        grad_B = (u.to(dt).T @ g).mul_(s).T.to(B0.dtype).contiguous()  # (g^T u as a wide product: faster on CPUs)
        grad_bias = None if ctx.bias_dtype is None else g.sum(0, dtype=acc).to(ctx.bias_dtype)
        if h:  # x needs no gradient: <g, W x> from the kept W x
            grad_beta = torch.dot(g.reshape(-1).to(acc), h[0].reshape(-1).to(acc))
        else:
            grad_beta = torch.dot(gW.reshape(-1).to(acc), x.reshape(-1).to(acc))
        grad_A = (s * gB.T @ x).to(A0.dtype)
        grad_x = None if h else _scale_addmm(gW, beta, gB, A, s, inplace=True).to(x0.dtype)
        return grad_x, None, grad_beta.to(beta.dtype), grad_A, grad_B, grad_bias, None



_CONV_OPS = {1: F.conv1d, 2: F.conv2d}


class _LottaConv(torch.autograd.Function):
    """Eq. (1) for a Conv1d / Conv2d layer (groups = 1, integer padding) with a hand-written backward.

    Forward: conv(x, beta W_seed) + b (W_seed scaled, not the larger output), then s B u added in place
    by one batched matmul over positions, u = conv(x, A). Saved: x and u only (and the weights). Backward:
    the conv's input gradient g -> W^T g serves dL/dx and the gradient of beta, <g, conv(x, W)> =
    <W^T g, x>, as in _LottaLinear; dL/dA and A's part of dL/dx come from one convolution_backward;
    no weight gradient for W_seed. Compute dtype as _LottaLinear.
    """

    @staticmethod
    def forward(ctx, x0, W, beta, A, B, bias, s: float, stride, padding, dilation):
        dt, conv = _compute_dtype(x0), _CONV_OPS[x0.dim() - 2]
        x = x0.to(dt)
        Wb = W.to(dt) * beta.to(dt)
        y = conv(x, Wb, None if bias is None else bias.to(dt), stride, padding, dilation).contiguous()
        u = conv(x, A.to(dt).view(A.shape[0], *W.shape[1:]), None, stride, padding, dilation).contiguous()
        N, O, r = y.shape[0], y.shape[1], u.shape[1]
        y.view(N, O, -1).baddbmm_(B.to(dt).expand(N, O, r), u.view(N, r, -1), alpha=s)
        ctx.save_for_backward(x0, W, beta, A, B, u)
        ctx.conf = (s, list(stride), list(padding), list(dilation), None if bias is None else bias.dtype)
        return y

    @staticmethod
    def backward(ctx, g):
        x0, W0, beta, A0, B0, u = ctx.saved_tensors
        s, stride, padding, dilation, bias_dtype = ctx.conf
        dt, g = g.dtype, g.contiguous()
        x, W = x0.to(dt), W0.to(dt)
        A = A0.to(dt).view(A0.shape[0], *W.shape[1:])
        N, O, r = g.shape[0], g.shape[1], A.shape[0]
        args = (None, stride, padding, dilation, False, [0] * (x.dim() - 2), 1)
        gx = torch.ops.aten.convolution_backward(g, x, W, *args, [True, False, False])[0]  # W^T g
        acc = torch.promote_types(dt, torch.float32)
        grad_beta = torch.dot(gx.reshape(-1).to(acc), x.reshape(-1).to(acc)).to(beta.dtype)
        g3, Bt = g.view(N, O, -1), B0.to(dt).T
        # batched matmuls over the N images (a broadcast matmul or einsum would copy g transposed)
        gu = torch.bmm(Bt.expand(N, r, O), g3).mul_(s).view(u.shape)  # s B^T g: (N, r, *spatial)
        grad_B = torch.bmm(g3, u.view(N, r, -1).to(dt).transpose(1, 2)).sum(0).mul_(s)
        need_x = ctx.needs_input_grad[0]
        gxA, grad_A, _ = torch.ops.aten.convolution_backward(gu, x, A, *args, [need_x, ctx.needs_input_grad[3], False])
        grad_x = gx.mul_(beta.to(dt)).add_(gxA).to(x0.dtype) if need_x else None
        grad_bias = g.sum(dim=(0, *range(2, g.dim()))).to(bias_dtype) if ctx.needs_input_grad[5] else None
        grad_A = None if grad_A is None else grad_A.reshape(A0.shape).to(A0.dtype)
        return (grad_x, None, grad_beta, grad_A, grad_B.to(B0.dtype), grad_bias,
                None, None, None, None)

