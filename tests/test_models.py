import pytest
import torch

from reservoir_depth import io
from reservoir_depth.models import build
from reservoir_depth.scaffold import ScaffoldConfig, ScaffoldConv2d, count_parameters, merge, scaffold, scaffold_layers


def plain(r=2, n=1):
    m = build("plain", d_in=784, n_out=10, n=n)
    return scaffold(m, ScaffoldConfig(target_modules=m.scaffold_targets, trainable=m.scaffold_trainable, r=r))


def test_plain_scaffolds_every_conv_and_trains_norms_and_head():
    m = plain(n=1)
    layers = dict(scaffold_layers(m))
    assert set(layers) == {"stem.conv", *(f"stages.{i}.conv" for i in range(6))}
    assert all(isinstance(l, ScaffoldConv2d) for l in layers.values())
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert "head.weight" in trainable and "stem.norm.weight" in trainable
    assert not any(n.endswith("bias") and ".conv." in n for n in trainable)
    assert count_parameters(m).trainable == sum(p.numel() for p in m.parameters() if p.requires_grad)


def test_plain_depth_and_shapes():
    m = build("plain", d_in=784, n_out=7, n=3)  # Plain-20: 1 stem + 18 stage convs + head
    assert sum(isinstance(x, torch.nn.Conv2d) for x in m.modules()) == 19
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    with pytest.raises(ValueError, match="d_in = 785"):
        build("plain", d_in=785, n_out=10)


def test_plain_merge_and_round_trip(tmp_path):
    m = plain(r=2)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    m.eval()
    x = torch.randn(3, 784, generator=g)
    torch.testing.assert_close(merge(m).eval()(x), m(x), rtol=1e-4, atol=1e-5)
    io.save(m, tmp_path)
    torch.testing.assert_close(io.load(tmp_path).eval()(x), m(x), rtol=0, atol=0)
