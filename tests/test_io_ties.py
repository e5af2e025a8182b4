"""Tied weights: stored once, retied on load, the tie structure checked."""

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from reservoir_depth import io
from reservoir_depth.scaffold import ScaffoldConfig, scaffold

from helpers import nudge_trainable


class TiedNet(nn.Module):
    """A language-model shape: the output projection shares the embedding matrix."""

    def __init__(self, tie: bool = True) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 8)
        self.body = nn.Linear(8, 8)
        self.out = nn.Linear(8, 11, bias=False)
        if tie:
            self.out.weight = self.emb.weight

    def forward(self, idx):
        return self.out(torch.relu(self.body(self.emb(idx))))


def trained_tied(tie=True):
    m = scaffold(TiedNet(tie), ScaffoldConfig(target_modules=["body"], trainable=["emb", "out"], r=2, root_seed=5))
    nudge_trainable(m, 0.1, seed=2)
    return m.eval()


def test_tied_model_saves_each_shared_tensor_once_and_reties_on_load(tmp_path):
    m = trained_tied()
    io.save(m, tmp_path)
    meta = json.loads((tmp_path / io.CONFIG).read_text())
    assert meta["ties"] == {"out.weight": "emb.weight"}
    assert set(load_file(str(tmp_path / io.TENSORS))) == {"emb.weight", "body.beta", "body.lora_A", "body.lora_B"}
    m2 = io.load(tmp_path, model=TiedNet()).eval()
    assert m2.out.weight is m2.emb.weight
    idx = torch.tensor([[1, 4, 9], [0, 10, 3]])
    assert torch.equal(m2(idx), m(idx))


def test_fresh_model_without_the_tie_is_refused(tmp_path):
    io.save(trained_tied(), tmp_path)
    with pytest.raises(ValueError, match=r"adapter.json: key 'ties': the model ties \{\}, the file records "
                                         r"\{'out.weight': 'emb.weight'\}"):
        io.load(tmp_path, model=TiedNet(tie=False))


def test_untied_file_into_a_tied_model_is_refused(tmp_path):
    io.save(trained_tied(tie=False), tmp_path)
    with pytest.raises(ValueError, match=r"key 'ties': the model ties \{'out.weight': 'emb.weight'\}"):
        io.load(tmp_path, model=TiedNet())


def test_partially_overlapping_tensors_are_refused_by_name(tmp_path):
    m = TiedNet(tie=False)
    m.register_buffer("part", m.emb.weight.detach()[:5])  # a view of the same storage, not the same tensor
    m = scaffold(m, ScaffoldConfig(target_modules=["body"], r=2))
    with pytest.raises(ValueError, match=r"'(emb.weight|part)' and '(emb.weight|part)' share memory without being "
                                         r"the same tensor"):
        io.save(m, tmp_path)


def test_tiny_bert_for_masked_lm_round_trips(tmp_path):
    """transformers' BertForMaskedLM ties the decoder to the word embeddings (and the decoder bias)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=24, max_position_embeddings=16)

    def fresh():
        torch.manual_seed(0)
        return transformers.BertForMaskedLM(config).eval()

    m = scaffold(fresh(), ScaffoldConfig(target_modules=[r".*attention\.self\.(query|key|value)"], r=2,
                                         trainable=["cls", "word_embeddings"], root_seed=1))
    nudge_trainable(m, 0.05, seed=3)
    io.save(m, tmp_path)
    ties = json.loads((tmp_path / io.CONFIG).read_text())["ties"]
    assert ties["cls.predictions.decoder.weight"] == "bert.embeddings.word_embeddings.weight"
    torch.manual_seed(9)  # the fresh model differs everywhere until loaded
    m2 = io.load(tmp_path, model=transformers.BertForMaskedLM(config)).eval()
    assert m2.cls.predictions.decoder.weight is m2.bert.embeddings.word_embeddings.weight
    ids = torch.tensor([[2, 7, 39, 11, 5]])
    assert torch.equal(m2(input_ids=ids).logits, m.eval()(input_ids=ids).logits)
