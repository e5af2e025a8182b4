r"""nn.RNN, nn.GRU and nn.LSTM as containers of one scaffold layer per gate matrix (eq. (1) on each).

torch packs the gates of one layer and direction into weight_ih_l{k}[_reverse] (G H, d_in) and
weight_hh_l{k}[_reverse] (G H, H), G = 1 (RNN), 3 (GRU: r, z, n), 4 (LSTM: i, f, g, o). Each gate's
(H, d_in) or (H, H) block is its own ScaffoldLinear, named ``<name>.ih_l0.r`` / ``<name>.hh_l0.r`` (an
RNN's single gate: ``<name>.ih_l0``; the reverse direction ``ih_l0_reverse``), with its own W_seed (fan-in
d_in or H), beta, A, B and seeded bias: the spectral-radius rule reaches weight_hh through ``specs``
(e.g. ``{r".*hh_l\d+.*": spec}``), and a family may cap the recurrent rank through ``max_rank``.
Reading ``weight_ih_l0``, ``bias_hh_l0``, ... gives the merged tensors torch's module would hold.

The forward is torch's own module (torch.func.functional_call on a meta skeleton) holding the merged
W = beta W_seed + s B A of every gate: batch_first, bidirectional, num_layers, dropout, an initial state
and packed sequences behave as torch's. merge() returns the same torch class, loading with strict=True.
Refused: proj_size > 0 (an LSTM's weight_hr), a bias mode that changes the module's bias structure, and
the 'batch' schedule with k > 1 (one sequence runs through one scaffold).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from .base import Scaffolded, refuse_unsupported
from .config import Resolve
from .layers import ScaffoldLinear

GATES: dict[str, tuple[str, ...]] = {"RNN_TANH": ("",), "RNN_RELU": ("",), "GRU": ("r", "z", "n"),
                                     "LSTM": ("i", "f", "g", "o")}


class ScaffoldRecurrent(Scaffolded):
    """An nn.RNN / nn.GRU / nn.LSTM whose every gate matrix is a ScaffoldLinear (see the module doc)."""

    def __init__(self, rnn: nn.RNNBase, name: str, resolve: Resolve) -> None:
        settings = resolve(name)  # bias and schedule are model-wide: every gate's settings share them
        refuse_unsupported(name, rnn, (("proj_size", rnn.proj_size, 0),))
        if (settings.bias == "none" and rnn.bias) or (settings.bias in ("frozen", "trainable") and not rnn.bias):
            raise ValueError(f"layer {name!r}: bias={settings.bias!r} would change the bias structure of "
                             f"{type(rnn).__name__}(bias={rnn.bias}), which its class cannot hold (use 'keep')")
        if settings.schedule == "batch" and settings.k > 1:
            raise ValueError(f"layer {name!r}: the 'batch' schedule (k={settings.k} scaffolds within a batch) is not "
                             f"supported for {type(rnn).__name__}; use 'static', 'epoch' or 'step'")
        super().__init__()
        self.keep_template(rnn)
        self.name, self.mode, self.gates = name, rnn.mode, GATES[rnn.mode]
        self.flat_names = list(rnn._flat_weights_names)
        for attr in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional"):
            setattr(self, attr, getattr(rnn, attr))
        H, w = rnn.hidden_size, rnn.weight_ih_l0
        for wname in self.flat_names:
            if not wname.startswith("weight_"):
                continue
            d_in = getattr(rnn, wname).shape[1]
            template = nn.Linear(d_in, H, bias=rnn.bias, device="meta", dtype=w.dtype)
            unit = wname.removeprefix("weight_")
            names = {g: f"{name}.{unit}" + (f".{g}" if g else "") for g in self.gates}
            layers = {g: ScaffoldLinear(d_in, H, n, resolve(n), template=template, dtype=w.dtype, device=w.device)
                      for g, n in names.items()}
            self.add_module(unit, layers[""] if "" in layers else nn.ModuleDict(layers))

    @classmethod
    def from_module(cls, module: nn.RNNBase, name: str, resolve: Resolve) -> "ScaffoldRecurrent":
        return cls(module, name, resolve)

    def __getattr__(self, name: str) -> Any:
        if name in self.__dict__.get("flat_names", ()):  # torch's weight_ih_l0 etc.: the merged tensors, read-only
            return self.flat_weights()[name]
        return super().__getattr__(name)

    def _gates(self, wname: str) -> list[ScaffoldLinear]:
        unit = getattr(self, wname.removeprefix("weight_"))
        return [unit] if isinstance(unit, ScaffoldLinear) else [unit[g] for g in self.gates]

    def flat_weights(self) -> dict[str, torch.Tensor]:
        """torch's flat parameters (weight_ih_l0, weight_hh_l0, bias_ih_l0, ...) of the merged gates:
        W = beta W_seed + s B A per gate, stacked in torch's gate order (differentiable in beta, A, B)."""
        out = {}
        for wname in self.flat_names:
            if wname.startswith("weight_"):
                gates = self._gates(wname)
                out[wname] = torch.cat([g.merged_weight() for g in gates])
                if gates[0].bias is not None:
                    out["bias_" + wname.removeprefix("weight_")] = torch.cat([g.bias for g in gates])
        return out

    def forward(self, input: Any, hx: Any = None) -> Any:
        """torch's forward (same arguments and outputs) with the merged gate weights."""
        self._template.train(self.training)
        return functional_call(self._template, self.flat_weights(), (input, hx))

    @staticmethod
    def plain_weights(rnn: nn.RNNBase) -> dict[str, torch.Tensor]:
        """Each gate's block of a plain module's weight_ih / weight_hh, by the name of its scaffold layer."""
        gates = GATES[rnn.mode]
        out = {}
        for wname in rnn._flat_weights_names:
            if wname.startswith("weight_"):
                w = getattr(rnn, wname)
                for g, block in zip(gates, w.chunk(len(gates))):
                    out[wname.removeprefix("weight_") + (f".{g}" if g else "")] = block
        return out

    def to_plain(self) -> nn.RNNBase:
        """The replaced torch class holding the merged gate weights and the gates' biases."""
        first = self._gates(self.flat_names[0])[0]
        m = copy.deepcopy(self._template).to_empty(device=first.W_seed.device).to(first.param_dtype)
        with torch.no_grad():
            for k, v in self.flat_weights().items():
                setattr(m, k, nn.Parameter(v.detach().clone()))
        return m

    def extra_repr(self) -> str:
        return f"{self.name!r}, mode={self.mode}, gates={list(g for g in self.gates if g) or 1}"
