"""nn.MultiheadAttention as two scaffold layers: the same outputs as torch's with the merged weights
(masks, need_weights, batch_first, unbatched), the options it refuses, and the module taken whole."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from reservoir_depth.scaffold import (ALL_LINEAR, ScaffoldConfig, ScaffoldMultiheadAttention, merge, scaffold,
                                      scaffold_layers)

from scaffold_cases import Block, Holder, perturb


# ----------------------------------------------------------------------------- nn.MultiheadAttention


def _mha_pair(batch_first: bool, bias: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    model = Holder(nn.MultiheadAttention(8, 2, bias=bias, batch_first=batch_first), None)
    scaffold(model, ScaffoldConfig(target_modules="layer", r=2))
    perturb(model)
    return model.layer, merge(model).layer


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask and attn_mask is deprecated")
@settings(max_examples=25, deadline=None)
@given(batch_first=st.booleans(), batched=st.booleans(), kind=st.sampled_from(["self", "kv", "cross"]),
       need_weights=st.booleans(), average=st.booleans(), padding=st.booleans(),
       mask=st.sampled_from([None, "bool2", "float2", "bool3", "causal"]))
def test_mha_matches_torch_with_the_merged_weights(batch_first, batched, kind, need_weights, average, padding, mask):
    scaffolded_mha, torch_mha = _mha_pair(batch_first)
    g = torch.Generator().manual_seed(0)
    N, L, S, E, H = 2, 3, 4 if kind != "self" else 3, 8, 2
    shape = lambda n: ((N, n, E) if batch_first else (n, N, E)) if batched else (n, E)  # noqa: E731
    q = torch.randn(*shape(L), generator=g)
    k = q if kind == "self" else torch.randn(*shape(S), generator=g)
    v = k if kind in ("self", "kv") else torch.randn(*shape(S), generator=g)
    kw = {"need_weights": need_weights, "average_attn_weights": average}
    if padding:
        kpm = torch.zeros(N, S, dtype=torch.bool)
        kpm[0, -1] = True
        kw["key_padding_mask"] = kpm if batched else kpm[0]
    if mask in ("bool2", "causal"):
        kw["attn_mask"] = torch.ones(L, S, dtype=torch.bool).triu(1)
        kw["is_causal"] = mask == "causal" and L == S
    elif mask == "float2":
        kw["attn_mask"] = torch.randn(L, S, generator=g)
    elif mask == "bool3":
        m = torch.rand((N if batched else 1) * H, L, S, generator=g) < 0.3
        m[..., 0] = False  # no fully masked row
        kw["attn_mask"] = m
    out, weights = scaffolded_mha(q, k, v, **kw)
    ref_out, ref_weights = torch_mha(q, k, v, **kw)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-4)
    if need_weights:
        torch.testing.assert_close(weights, ref_weights, rtol=1e-4, atol=1e-5)
    else:
        assert weights is None and ref_weights is None


@pytest.mark.parametrize("kw,named", [({"kdim": 4}, "kdim=4"), ({"vdim": 4}, "vdim=4"),
                                      ({"add_bias_kv": True}, "add_bias_kv=True"),
                                      ({"add_zero_attn": True}, "add_zero_attn=True")])
def test_mha_options_it_cannot_honour_are_refused(kw, named):
    with pytest.raises(ValueError, match=rf"layer 'layer': nn.MultiheadAttention with {named} cannot be scaffolded"):
        scaffold(Holder(nn.MultiheadAttention(8, 2, **kw), None), ScaffoldConfig(target_modules="layer", r=2))


def test_mha_out_proj_alone_is_refused_but_the_mha_and_all_patterns_take_it_whole():
    with pytest.raises(ValueError, match=r"'attn.out_proj' belongs to a MultiheadAttention"):
        scaffold(Block(), ScaffoldConfig(target_modules="out_proj"))
    for targets in (["attn"], [".*"], [r"attn.*"], ALL_LINEAR):
        model = scaffold(Block(), ScaffoldConfig(target_modules=targets, r=2))
        assert isinstance(model.attn, ScaffoldMultiheadAttention)
        assert [n for n, _ in scaffold_layers(model)][:2] == ["attn.in_proj", "attn.out_proj"]


def test_scaffolded_transformer_encoder_layer_matches_its_merge_in_train_and_eval():
    """torch's fused inference path reads in_proj_weight / linear1.weight directly: it gets the merged weights."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), nn.Linear(8, 3))
    scaffold(model, ScaffoldConfig(r=2))
    perturb(model)
    x = torch.randn(2, 5, 8)
    y = model(x)
    merged = merge(model).eval()
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), y, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(merged(x), y, rtol=1e-5, atol=1e-5)
