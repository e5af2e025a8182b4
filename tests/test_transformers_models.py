"""Models of the transformers library, built from tiny configs (no weights are downloaded, never
from_pretrained): GPT-2 (Conv1D, lm_head tied to wte), BERT (masked-LM decoder tied to the word
embeddings; a sequence classifier), ViT and Llama. Each is scaffolded by target_modules="all-linear"
and by explicit patterns; at init it is the original model holding W_seed (eq. (1) with beta = 1, B = 0);
only A, B, beta and the declared trainable modules train, and the loss falls; an adapter file reloads
into a fresh instance (tied weights stored once and retied); merge() gives a model whose state_dict
loads strictly into the original class with the same outputs. A plain torch
nn.TransformerEncoder (nn.MultiheadAttention) runs the same checks. The README's GPT-2 example and the
guide's "Scaffolding your own model" run as written."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")

from reservoir_depth import TrainConfig, io, train  # noqa: E402
from reservoir_depth.data import Dataset  # noqa: E402
from reservoir_depth.spectra.probes import ActivationSpectra  # noqa: E402
from reservoir_depth.scaffold import (LAYER_TYPES, ScaffoldConfig, matches, merge, scaffold,  # noqa: E402
                                     scaffold_layers)
from test_doc_examples import promised_output  # noqa: E402  (one reading of a block's print comments)

V, T, N = 50, 12, 4  # vocabulary, sequence length, batch


def _gpt2():
    cfg = transformers.GPT2Config(vocab_size=V, n_positions=16, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def _bert_config(**kw):
    return transformers.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=16, hidden_dropout_prob=0.0,
                                   attention_probs_dropout_prob=0.0, **kw)


def _bert_mlm():
    return transformers.BertForMaskedLM(_bert_config())


def _bert_cls():
    return transformers.BertForSequenceClassification(_bert_config(num_labels=3))


def _vit():
    cfg = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64, num_labels=3, hidden_dropout_prob=0.0,
                                 attention_probs_dropout_prob=0.0)
    return transformers.ViTForImageClassification(cfg)


def _llama():
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
    return transformers.LlamaForCausalLM(cfg)


class TorchEncoder(torch.nn.Module):
    """A plain torch model beside them: nn.TransformerEncoder (nn.MultiheadAttention, packed in_proj_weight;
    in eval mode without gradients torch takes its fused path, which reads the weights directly)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(V, 32)
        layer = torch.nn.TransformerEncoderLayer(32, nhead=2, dim_feedforward=64, dropout=0.0, batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.classifier = torch.nn.Linear(32, 3)

    def forward(self, input_ids, labels=None):
        logits = self.classifier(self.encoder(self.emb(input_ids)).mean(dim=1))
        loss = None if labels is None else torch.nn.functional.cross_entropy(logits, labels)
        return SimpleNamespace(logits=logits, loss=loss)


def _torch_encoder():
    return TorchEncoder()


def _tokens(g: torch.Generator) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, V, (N, T), generator=g)
    return {"input_ids": ids, "labels": ids}


def _sequences(g: torch.Generator) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(0, V, (N, T), generator=g), "labels": torch.randint(0, 3, (N,), generator=g)}


def _images(g: torch.Generator) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(N, 1, 8, 8, generator=g), "labels": torch.randint(0, 3, (N,), generator=g)}


@dataclass(frozen=True)
class Case:
    """A transformers model, a scaffold of it, its inputs, and what ties it has."""

    build: Callable[[], torch.nn.Module]
    batch: Callable[[torch.Generator], dict[str, torch.Tensor]]
    targets: tuple[str, ...]
    trainable: tuple[str, ...]
    ties: dict[str, str] = field(default_factory=dict)  # {alias: stored name} in the adapter file

    def model(self, seed: int = 0) -> torch.nn.Module:
        """A fresh instance whose random init depends on ``seed`` only."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return self.build()

    def config(self) -> ScaffoldConfig:
        return ScaffoldConfig(target_modules=self.targets, trainable=self.trainable, r=4, root_seed=3)

    def inputs(self, seed: int = 0) -> dict[str, torch.Tensor]:
        return self.batch(torch.Generator().manual_seed(seed))


GPT2_TIES = {"lm_head.weight": "transformer.wte.weight"}
BERT_TIES = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
             "cls.predictions.decoder.bias": "cls.predictions.bias"}
CASES = [
    pytest.param(Case(_gpt2, _tokens, ("all-linear",), ("ln_f",), GPT2_TIES), id="gpt2-all-linear"),
    pytest.param(Case(_gpt2, _tokens, ("attn.c_attn", "attn.c_proj"), ("lm_head",), GPT2_TIES), id="gpt2-attention"),
    pytest.param(Case(_gpt2, _tokens, ("c_attn", "c_proj", "c_fc", "wpe"), ("ln_f",), GPT2_TIES),
                 id="gpt2-blocks-and-positions"),
    pytest.param(Case(_bert_mlm, _tokens, ("all-linear",), ("cls.predictions.transform.LayerNorm",), BERT_TIES),
                 id="bert-mlm-all-linear"),
    pytest.param(Case(_bert_mlm, _tokens, ("query", "key", "value"), ("cls",), BERT_TIES), id="bert-mlm-attention"),
    pytest.param(Case(_bert_cls, _sequences, ("all-linear",), ("classifier",)), id="bert-cls-all-linear"),
    pytest.param(Case(_bert_cls, _sequences, (r"bert\.encoder\.layer\.\d+\.attention\.self\.(query|key|value)",
                                              "attention.output.dense"), ("classifier", "pooler")),
                 id="bert-cls-regex"),
    pytest.param(Case(_bert_cls, _sequences, ("word_embeddings", "query", "key", "value"), ("classifier",)),
                 id="bert-cls-padded-embedding"),  # word_embeddings has padding_idx 0
    pytest.param(Case(_vit, _images, ("all-linear",), ("classifier",)), id="vit-all-linear"),
    pytest.param(Case(_vit, _images, ("q_proj", "k_proj", "v_proj", "o_proj", "projection"),
                      ("classifier", "vit.layernorm")), id="vit-attention-and-patches"),
    pytest.param(Case(_llama, _tokens, ("all-linear",), ("lm_head",)), id="llama-all-linear"),
    pytest.param(Case(_llama, _tokens, ("q_proj", "k_proj", "v_proj", "o_proj"), ("lm_head", "embed_tokens", "norm")),
                 id="llama-attention"),
    pytest.param(Case(_llama, _tokens, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                                        "embed_tokens"), ("lm_head",)), id="llama-embedding-too"),
    pytest.param(Case(_torch_encoder, _sequences, ("all-linear",), ("classifier",)), id="torch-encoder-all-linear"),
    pytest.param(Case(_torch_encoder, _sequences, ("self_attn",), ("classifier", "emb")), id="torch-encoder-attention"),
]


def logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**inputs).logits


def _replaced(model: torch.nn.Module, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) that the scaffold layer ``name`` replaced in the unscaffolded ``model``: an
    nn.MultiheadAttention's ``in_proj`` is its packed in_proj_weight / in_proj_bias."""
    parent, _, local = name.rpartition(".")
    owner = model.get_submodule(parent)
    if isinstance(owner, torch.nn.MultiheadAttention) and local == "in_proj":
        return owner.in_proj_weight, owner.in_proj_bias
    m = model.get_submodule(name)
    return m.weight, getattr(m, "bias", None)  # an nn.Embedding has no bias


def trained(case: Case, steps: int, lr: float = 1e-2) -> tuple[torch.nn.Module, list[float]]:
    model = scaffold(case.model(), case.config()).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    batch, losses = case.inputs(1), []
    for _ in range(steps):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model.eval(), losses


# -- at init: the original model holding W_seed ---------------------------------------------------------------

@pytest.mark.parametrize("case", CASES)
def test_at_init_the_scaffold_is_the_original_model_holding_w_seed(case):
    original = case.model()
    reference = copy.deepcopy(original)
    model = scaffold(original, case.config())
    layers = dict(scaffold_layers(model))
    assert layers, "nothing was scaffolded"
    with torch.no_grad():
        for name, layer in layers.items():
            weight, bias = _replaced(reference, name)
            weight.copy_(layer.W_seed)  # W_seed is held in the layout of the weight it replaces
            assert (bias is None) == (layer.bias is None), name  # bias="keep": the bias structure stays
            if bias is not None:
                bias.copy_(layer.bias)
    x = case.inputs()
    torch.testing.assert_close(logits(model, x), logits(reference, x), rtol=1e-5, atol=1e-6)


PATTERNS = {_gpt2: ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj", "wpe",
                    r"transformer\.h\.0\.(attn|mlp)\..*"],
            _llama: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens",
                     r"model\.layers\.1\.(self_attn|mlp)\..*"]}


@settings(max_examples=30, deadline=None)
@given(data=st.data(), build=st.sampled_from(list(PATTERNS)), r=st.integers(0, 4),
       bias=st.sampled_from(["keep", "none"]))
def test_any_choice_of_targets_is_the_original_at_init_and_merges_strictly(data, build, r, bias):
    """Any subset of a model's target patterns, any rank: at init the scaffold is the original model holding
    W_seed (with the seeded bias, or none); after a step, merge() loads strictly into the original class."""
    targets = data.draw(st.lists(st.sampled_from(PATTERNS[build]), min_size=1, max_size=4, unique=True))
    case = Case(build, _tokens, tuple(targets), ("lm_head",))
    model = scaffold(case.model(), ScaffoldConfig(target_modules=targets, trainable=["lm_head"], r=r, bias=bias))
    reference = case.model()
    with torch.no_grad():
        for name, layer in scaffold_layers(model):
            weight, b = _replaced(reference, name)
            weight.copy_(layer.W_seed)
            if b is not None:  # bias="none" drops it: the reference adds zero
                b.copy_(layer.bias if layer.bias is not None else torch.zeros_like(b))
    x = case.inputs()
    torch.testing.assert_close(logits(model, x), logits(reference, x), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        for _, layer in scaffold_layers(model):
            layer.beta.fill_(0.7)
            layer.lora_B.normal_()
    if bias == "keep":
        fresh = case.model(seed=1)
        fresh.load_state_dict(merge(model).state_dict(), strict=True)
        # float32: W = beta W_seed + s B A summed first vs. term by term, with B ~ N(0, 1): ~1e-5 apart
        torch.testing.assert_close(logits(fresh, x), logits(model, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", [p for p in CASES if p.values[0].targets == ("all-linear",)])
def test_all_linear_leaves_out_the_output_layer_and_trainable_modules(case):
    model = case.model()
    out = getattr(model, "get_output_embeddings", lambda: None)()  # the declared output layer, if any
    scaffold(model, case.config())
    names = [n for n, _ in scaffold_layers(model)]
    assert names and all(model.get_submodule(n) is not out for n in names)
    assert not any(n == t or n.startswith(t + ".") for n in names for t in case.trainable)


@pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to False", "ignore:`is_gradient_checkpointing` is deprecated")
@pytest.mark.parametrize("build, task_type", [(_gpt2, None), (_bert_mlm, None), (_llama, None),
                                              (_bert_cls, None)])
def test_all_linear_takes_the_layers_peft_takes(build, task_type):
    """The reference implementation: peft's LoraConfig(target_modules="all-linear") on the same model. Both
    leave out only the declared output layer (get_output_embeddings()); a sequence classifier's head, which
    no model declares, is taken by both (peft leaves it out only with task_type="SEQ_CLS"; here, name it in
    trainable= or exclude=)."""
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(build(), peft.LoraConfig(target_modules="all-linear", r=2, task_type=task_type))
    theirs = {n.removeprefix("base_model.model.") for n, m in model.named_modules()
              if isinstance(m, peft.tuners.lora.LoraLayer)}
    ours = {n for n, _ in scaffold_layers(scaffold(build(), ScaffoldConfig(r=2)))}
    assert ours == theirs


# -- refusals on real models ----------------------------------------------------------------------------------

@pytest.mark.parametrize("build, target, tied_to, attention", [
    (_gpt2, "lm_head", "transformer.wte.weight", "c_attn"),
    (_bert_mlm, "decoder", "bert.embeddings.word_embeddings.weight", "query")])
def test_a_tied_output_layer_is_refused_as_a_target_and_trains_through_trainable(build, target, tied_to, attention):
    with pytest.raises(ValueError, match=rf"weight is tied to \[.*'{re.escape(tied_to)}'.*\].*trainable="):
        scaffold(build(), ScaffoldConfig(target_modules=[target], r=2))
    model = scaffold(build(), ScaffoldConfig(target_modules=[attention], r=2, trainable=[target]))
    assert model.get_parameter(tied_to).requires_grad  # one tensor: training the head trains the embedding


@pytest.mark.parametrize("build, pattern, what", [
    (_gpt2, "ln_1", "LayerNorm"), (_llama, "input_layernorm", "LlamaRMSNorm"), (_bert_cls, "attention", None)])
def test_patterns_that_name_no_scaffoldable_layer_are_refused_naming_the_modules(build, pattern, what):
    if what is None:  # containers only: nothing to replace
        match = r"match no scaffoldable layer"
    else:
        match = rf"cannot be scaffolded: .*\.{pattern} \({what}\)"
    with pytest.raises(ValueError, match=match):
        scaffold(build(), ScaffoldConfig(target_modules=[pattern], r=2))


def test_all_linear_leaves_out_layers_inside_a_trainable_module():
    model = scaffold(_bert_cls(), ScaffoldConfig(r=2, trainable=["pooler", "classifier"]))
    assert not [n for n, _ in scaffold_layers(model) if n.startswith("bert.pooler.")]
    assert model.bert.pooler.dense.weight.requires_grad  # trainable=["pooler"]: every parameter of the pooler


def test_an_explicit_target_inside_a_trainable_module_is_refused():
    with pytest.raises(ValueError, match=r"bert\.pooler\.dense.*pooler"):
        scaffold(_bert_cls(), ScaffoldConfig(target_modules=["dense"], r=2, trainable=["pooler", "classifier"]))


# -- training: only A, B, beta and the trainable modules move; the loss falls -----------------------------------

def _expected_trained(model: torch.nn.Module, case: Case) -> set[str]:
    """Every state_dict name that training may change: each layer's declared trained tensors, the parameters
    of the trainable modules and their aliases (a tied weight trains under both names)."""
    names = {f"{n}.{t}" for n, layer in scaffold_layers(model) for t in layer.trained}
    ids = {id(p) for n, m in model.named_modules() if matches(n, case.trainable) for p in m.parameters()}
    names |= {n for n, p in model.named_parameters(remove_duplicate=False) if id(p) in ids}
    return names


@pytest.mark.parametrize("case", CASES)
def test_only_adapters_beta_and_trainable_modules_train_and_the_loss_falls(case):
    model = scaffold(case.model(), case.config())
    before = {k: v.clone() for k, v in model.state_dict(keep_vars=False).items()}
    seeds = {n: layer.W_seed.clone() for n, layer in scaffold_layers(model)}
    requires = {n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
    expected = _expected_trained(model, case)
    assert requires == expected & {n for n, _ in model.named_parameters(remove_duplicate=False)}

    model, losses = trained(case, steps=30)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == expected
    for n, layer in scaffold_layers(model):
        assert torch.equal(layer.W_seed, seeds[n]), f"{n}: W_seed moved"
    assert losses[-1] < 0.9 * losses[0], losses


# -- adapter files: a fresh instance reloads the trained model --------------------------------------------------

@pytest.mark.parametrize("case", CASES)
def test_save_load_into_a_fresh_instance_reties_and_reproduces(case, tmp_path):
    model, _ = trained(case, steps=3)
    io.save(model, tmp_path)
    meta = json.loads((tmp_path / io.CONFIG).read_text())
    assert meta["ties"] == case.ties
    stored = set(load_file(str(tmp_path / io.TENSORS)))
    assert not stored & set(case.ties), "a tied tensor is stored twice"
    assert not any(k.endswith("W_seed") for k in stored)

    fresh = case.model(seed=7)  # other random weights everywhere: the file must set them all
    loaded = io.load(tmp_path, model=fresh)
    for alias, name in case.ties.items():
        mod, _, attr = alias.rpartition(".")
        assert getattr(loaded.get_submodule(mod), attr) is loaded.get_parameter(name), f"{alias} is not retied"
    x = case.inputs(2)
    assert torch.equal(logits(loaded, x), logits(model, x))


# -- merge: a plain model of the original class ------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES)
def test_merge_loads_strictly_into_the_original_class_with_the_same_outputs(case):
    model, _ = trained(case, steps=3)
    merged = merge(model)
    classes = {n: type(m) for n, m in case.model().named_modules()}
    assert {n: type(m) for n, m in merged.named_modules()} == classes  # every module of its original class
    fresh = case.model(seed=7)
    fresh.load_state_dict(merged.state_dict(), strict=True)
    x = case.inputs(2)
    torch.testing.assert_close(logits(fresh, x), logits(model, x), rtol=1e-4, atol=1e-5)
    for alias, name in case.ties.items():  # merge keeps the ties
        mod, _, attr = alias.rpartition(".")
        assert getattr(merged.get_submodule(mod), attr) is merged.get_parameter(name), f"{alias} is not tied"


# -- the training loop takes a transformers model ------------------------------------------------------------------

def test_train_takes_a_transformers_language_model_and_its_loss_falls():
    g = torch.Generator().manual_seed(0)
    X = torch.randint(0, V, (24, T), generator=g)
    Y = X.roll(-1, dims=1)  # a next-token task the model can learn: y[:, t] = x[:, t + 1] (wrapping)
    data = Dataset("tokens", X[:16], Y[:16], X[16:], Y[16:], V, task="lm", vocab_size=V)
    model = scaffold(_gpt2(), ScaffoldConfig(r=4, trainable=["ln_f"]))
    frame = train(model, data, TrainConfig(epochs=3, batch_size=8, lr=1e-2, device="cpu", progress=False)).to_frame()
    assert frame["train_loss"].iloc[-1] < frame["train_loss"].iloc[1]


# -- spectra read token positions as rows ------------------------------------------------------------------------

@pytest.mark.parametrize("case", [p for p in CASES if p.id in ("gpt2-blocks-and-positions", "llama-embedding-too")])
def test_activation_spectra_of_a_language_model_take_every_token_position_as_a_row(case):
    model = scaffold(case.model(), case.config())
    spectra = ActivationSpectra().fit(model, case.inputs()["input_ids"])
    assert spectra.layer_names_ == [n for n, _ in scaffold_layers(model)]
    rows = {n: T if n == "transformer.wpe" else N * T for n in spectra.layer_names_}  # GPT-2 feeds wpe (1, T) ids
    assert {n: c.n_ for n, c in spectra.covariances_.items()} == rows
    widths = {n: c.mean_.shape[0] for n, c in spectra.covariances_.items()}
    assert widths == {n: layer.map_shape[1] for n, layer in scaffold_layers(model)}  # what each A sees: d_in


# -- the documentation's examples run -----------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def marked_block(path: Path, marker: str) -> str:
    """The ```python block right after ``<!-- marker -->`` in a markdown file."""
    m = re.search(rf"<!-- {re.escape(marker)} -->\n```python\n(.*?)\n```", path.read_text(), re.S)
    assert m, f"{path.name} has no python block after <!-- {marker} -->"
    return m.group(1)


def test_readme_gpt2_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(marked_block(ROOT / "README.md", "example: gpt2"), "README.md (gpt2)", "exec"), scope)
    assert type(scope["plain"]) is transformers.GPT2LMHeadModel
    meta = json.loads((tmp_path / "runs" / "gpt2-r4" / io.CONFIG).read_text())
    assert meta["ties"] == {}  # untied (tie_word_embeddings=False), so wte and lm_head are scaffolded apart
    assert {n for n, _ in scaffold_layers(scope["same"])} == {f"transformer.h.{i}.{m}" for i in range(2)
                                                              for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc",
                                                                        "mlp.c_proj")} | \
        {"transformer.wte", "transformer.wpe", "lm_head"}
    ids = scope["ids"]
    with torch.no_grad():
        torch.testing.assert_close(scope["plain"].eval()(ids).logits, scope["model"].eval()(ids).logits)


def section_blocks(path: Path, heading: str) -> list[str]:
    """Every ```python block of the ``## heading`` section of a markdown file, in order."""
    text = path.read_text()
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)\n```", text[start:end if end > 0 else None], re.S)


def test_guide_scaffolding_your_own_model_runs_and_prints_what_it_says(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    blocks = section_blocks(ROOT / "docs" / "guide.md", "Scaffolding your own model")
    assert len(blocks) >= 8
    registered = dict(LAYER_TYPES)
    scope: dict = {}
    try:
        for i, code in enumerate(blocks):
            exec(compile(code, f"guide.md, Scaffolding your own model, block {i}", "exec"), scope)
            printed = capsys.readouterr().out
            for text in promised_output(code):
                assert text in printed, f"block {i} promises {text!r}, printed:\n{printed}"
    finally:  # the guide registers a layer type of its own: leave the registry as it was
        LAYER_TYPES.clear()
        LAYER_TYPES.update(registered)
