"""Models, examples and helpers shared by the scaffold test files (tests/test_scaffold_*.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from torch import nn

from reservoir_depth.distributions import draw, layer_seed
from reservoir_depth.scaffold import ScaffoldConfig, scaffold, scaffold_layers

try:
    from transformers.pytorch_utils import Conv1D
except ImportError:  # transformers is a test extra
    Conv1D = None


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def canonical(config: ScaffoldConfig, shape, name: str, *salt) -> torch.Tensor:
    """The float32 draw of layer ``name`` (scaffold 0, or the one of ``salt``), as documented: drawn from
    (spec, root seed, layer name) only."""
    return draw(config.spec, tuple(shape), layer_seed(config.root_seed, name, "W_seed", *salt))


class Net(nn.Module):
    """Two scaffold candidates under ``body``, a frozen norm and a trainable ``head``."""

    def __init__(self, d_in: int = 6, width: int = 8, n_out: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, n_out)

    def forward(self, x):
        return self.head(self.norm(self.body(x)))


def perturb_adapters(model: nn.Module, seed: int = 0, scale: float = 0.3) -> None:
    """Move adapters and beta away from their initial values (B = 0, beta = 1)."""
    g = gen(seed)
    with torch.no_grad():
        for _, layer in scaffold_layers(model):
            layer.lora_A.copy_(scale * torch.randn(layer.lora_A.shape, generator=g))
            layer.lora_B.copy_(scale * torch.randn(layer.lora_B.shape, generator=g))
            layer.beta.fill_(0.5 + torch.rand((), generator=g).item())


def _mha_call(m, x):
    return m(x, x, x, need_weights=False)[0]


@dataclass(frozen=True)
class Example:
    """A small instance of a registered type: make(d) builds it with widths about d, inputs(module, n)
    a batch, call(module, x) its output tensor, fan_in(module) the fan-in its W_seed draws must use
    (one per scaffold layer, in module order)."""

    type_name: str
    make: Callable[[int], nn.Module]
    inputs: Callable[[nn.Module, torch.Generator], torch.Tensor]
    fan_in: Callable[[nn.Module], list[int]]
    call: Callable[[nn.Module, torch.Tensor], torch.Tensor] = lambda m, x: m(x)
    id: str = ""
    batch_dim: int = 0


def _randn(shape):
    return lambda m, g: torch.randn(*shape(m), generator=g)


EXAMPLES = [
    Example("Linear", lambda d: nn.Linear(d, 2 * d), _randn(lambda m: (3, 4, m.in_features)),
            lambda m: [m.in_features]),
    Example("Linear", lambda d: nn.Linear(d, d - 1, bias=False), _randn(lambda m: (5, m.in_features)),
            lambda m: [m.in_features], id="Linear-nobias"),
    Example("Conv1D", lambda d: Conv1D(2 * d, d), _randn(lambda m: (3, 4, m.nx)), lambda m: [m.nx]),
    Example("Conv1d", lambda d: nn.Conv1d(d, d + 2, 3, stride=2, padding=1), _randn(lambda m: (2, m.in_channels, 9)),
            lambda m: [m.in_channels * 3]),
    Example("Conv2d", lambda d: nn.Conv2d(d, d + 2, 3, padding=1), _randn(lambda m: (2, m.in_channels, 5, 5)),
            lambda m: [m.in_channels * 9]),
    Example("Embedding", lambda d: nn.Embedding(2 * d + 1, d),
            lambda m, g: torch.randint(0, m.num_embeddings, (3, 4), generator=g), lambda m: [m.embedding_dim]),
    Example("MultiheadAttention", lambda d: nn.MultiheadAttention(2 * d, 2, batch_first=True),
            _randn(lambda m: (3, 4, m.embed_dim)), lambda m: [m.embed_dim, m.embed_dim], call=_mha_call),
    Example("MultiheadAttention", lambda d: nn.MultiheadAttention(2 * d, 4, bias=False),
            _randn(lambda m: (4, 3, m.embed_dim)), lambda m: [m.embed_dim, m.embed_dim], call=_mha_call,
            id="MultiheadAttention-seq-first-nobias", batch_dim=1),
]


def _rnn_call(m, x):
    return m(x)[0]


def _rnn_fan_in(m):
    """One fan-in per gate matrix, in module order: weight_ih (d_in of its layer) then weight_hh (H)."""
    gates = {"RNN_TANH": 1, "RNN_RELU": 1, "GRU": 3, "LSTM": 4}[m.mode]
    return [getattr(m, n).shape[1] for n in m._flat_weights_names if n.startswith("weight_") for _ in range(gates)]


EXAMPLES += [
    Example("GRU", lambda d: nn.GRU(d, d + 1, batch_first=True), _randn(lambda m: (3, 4, m.input_size)), _rnn_fan_in,
            call=_rnn_call),
    Example("LSTM", lambda d: nn.LSTM(d, d - 1, num_layers=2, bidirectional=True), _randn(lambda m: (4, 3, m.input_size)),
            _rnn_fan_in, call=_rnn_call, id="LSTM-seq-first-bidirectional", batch_dim=1),
    Example("RNN", lambda d: nn.RNN(d, d + 2, nonlinearity="relu", bias=False, batch_first=True),
            _randn(lambda m: (3, 4, m.input_size)), _rnn_fan_in, call=_rnn_call, id="RNN-relu-nobias"),
]


def _param(ex: Example):
    marks = [pytest.mark.skipif(Conv1D is None, reason="transformers is not installed")] if ex.type_name == "Conv1D" else []
    return pytest.param(ex, id=ex.id or ex.type_name, marks=marks)


EXAMPLE_PARAMS = [_param(ex) for ex in EXAMPLES]


class Holder(nn.Module):
    """A model whose only module is the layer under test, named ``layer``."""

    def __init__(self, layer: nn.Module, call) -> None:
        super().__init__()
        self.layer, self._call = layer, call

    def forward(self, x):
        return self._call(self.layer, x)


def holder(ex: Example, d: int = 6, seed: int = 0) -> Holder:
    torch.manual_seed(seed)
    return Holder(ex.make(d), ex.call)


def scaffolded(ex: Example, r: int = 2, seed: int = 0, **config) -> Holder:
    return scaffold(holder(ex, seed=seed), ScaffoldConfig(target_modules="layer", r=r, **config))


def perturb(model: nn.Module, seed: int = 1) -> None:
    """Move every trained tensor away from init (beta != 1, B != 0), as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in scaffold_layers(model):
            layer.beta.fill_(0.7)
            layer.lora_A.add_(0.3 * torch.randn(layer.lora_A.shape, generator=g))
            layer.lora_B.copy_(0.3 * torch.randn(layer.lora_B.shape, generator=g))
            if getattr(layer, "padding_idx", None) is not None:
                layer.lora_A[:, layer.padding_idx] = 0
            if layer.bias is not None and layer.bias.requires_grad:
                layer.bias.add_(0.1)


needs_transformers = pytest.mark.skipif(Conv1D is None, reason="transformers is not installed")


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.attn(x, x, x, need_weights=False)[0])


BF16 = torch.bfloat16


def conv_mlp() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 5 * 5, 16),
                         nn.ReLU(), nn.Linear(16, 4))


def scaffolded_conv_mlp(**kw) -> nn.Module:
    torch.manual_seed(0)
    return scaffold(conv_mlp(), ScaffoldConfig(target_modules=["0", "3"], trainable=["5"], r=2, **kw))


def perturb_b_and_beta(model: nn.Module, seed: int = 0) -> None:
    g = gen(seed)
    with torch.no_grad():
        for _, layer in scaffold_layers(model):
            layer.lora_B.copy_(0.3 * torch.randn(layer.lora_B.shape, generator=g))
            layer.beta.fill_(0.7)


X = torch.randn(5, 3, 5, 5, generator=gen(1))
