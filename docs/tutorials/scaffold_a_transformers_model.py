# %% [markdown]
# # Scaffold a transformers model and ship it as seed + adapters
#
# Any torch model scaffolds as it is. Here: a GPT-2 of the transformers library, built
# from a small `GPT2Config` (nothing is downloaded), scaffolded with
# `target_modules="all-linear"`, trained for a few steps on a tiny generated character
# corpus, saved as seed + adapters, loaded into a fresh instance and merged back into a
# plain `GPT2LMHeadModel` that loads strictly.
#
# `RESERVOIR_DEPTH_TUTORIAL_SIZE=small` (the default) trains a 2-layer, 64-wide model for
# 150 steps in about 15 s; `full` a 4-layer, 128-wide one for 400 steps (about 100 s).

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from reservoir_depth import ScaffoldConfig, count_parameters, load, merge, save, scaffold, scaffold_layers

SIZE = os.environ.get("RESERVOIR_DEPTH_TUTORIAL_SIZE", "small")
SETTINGS = {
    "small": dict(n_layer=2, n_embd=64, steps=150),
    "full": dict(n_layer=4, n_embd=128, steps=400),
}
if SIZE not in SETTINGS:
    raise ValueError(f"RESERVOIR_DEPTH_TUTORIAL_SIZE={SIZE!r}: allowed sizes are {sorted(SETTINGS)}")
n_layer, n_embd, steps = SETTINGS[SIZE]["n_layer"], SETTINGS[SIZE]["n_embd"], SETTINGS[SIZE]["steps"]
torch.set_num_threads(1)

# %% [markdown]
# ## A tiny corpus
#
# Sentences from a small seeded grammar, one character per token. A model that learns the
# words and the grammar predicts most characters; one that only counts letters does not.

# %%
g = torch.Generator().manual_seed(0)
words = {"who": ["the cat", "a dog", "my friend", "the old man"], "does": ["sees", "likes", "finds", "follows"],
         "what": ["the ball", "a red box", "the river", "some bread"]}
pick = lambda key: words[key][torch.randint(len(words[key]), (1,), generator=g).item()]
text = " ".join(f"{pick('who')} {pick('does')} {pick('what')}." for _ in range(600))
vocab = sorted(set(text))
ids = torch.tensor([vocab.index(c) for c in text])
print(f"{len(text):,} characters, vocabulary of {len(vocab)}: {''.join(vocab)!r}")
print(text[:80])

context = 32
windows = ids[: (len(ids) - 1) // context * context].view(-1, context)  # (n, context) token ids
split = int(0.9 * len(windows))
train_ids, test_ids = windows[:split], windows[split:]

# %% [markdown]
# ## Scaffold it
#
# `"all-linear"` takes GPT-2's `Conv1D` layers (`c_attn`, `c_proj`, `c_fc`, `mlp.c_proj`)
# and leaves out `lm_head`, the output layer, which GPT-2 ties to the token embedding
# `wte`. With a character vocabulary the embedding is small, so we train it
# (`trainable=["wte", "ln_f"]`; the tied head trains with it). Everything else is frozen.

# %%
config = GPT2Config(vocab_size=len(vocab), n_positions=context, n_layer=n_layer, n_embd=n_embd, n_head=4,
                    bos_token_id=None, eos_token_id=None)  # GPT-2's ids (50256) lie outside this vocabulary
torch.manual_seed(0)
model = scaffold(GPT2LMHeadModel(config), ScaffoldConfig(r=4, trainable=["wte", "ln_f"], root_seed=0))
print("scaffolded:", [name for name, _ in scaffold_layers(model)])
print(count_parameters(model))


# %%
def test_loss(m: torch.nn.Module) -> float:
    """Mean next-token loss (nats per character) on the held-out windows."""
    m.eval()
    with torch.no_grad():
        return m(test_ids, labels=test_ids).loss.item()


opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
curve = [(0, test_loss(model))]
for step in range(1, steps + 1):
    model.train()
    batch = train_ids[torch.randint(len(train_ids), (32,), generator=g)]
    model(batch, labels=batch).loss.backward()  # labels are shifted inside GPT-2: next-token loss
    opt.step()
    opt.zero_grad()
    if step % max(steps // 10, 1) == 0:
        curve.append((step, test_loss(model)))
print(f"test loss: {curve[0][1]:.3f} nats/char at step 0 (ln {len(vocab)} = "
      f"{torch.log(torch.tensor(float(len(vocab)))):.3f}), {curve[-1][1]:.3f} after {steps} steps")

fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(*zip(*curve), "-o", ms=3)
ax.set(xlabel="optimiser step", ylabel="test loss (nats / char)", title="scaffolded GPT-2, r = 4")

# %% [markdown]
# ## Ship it as seed + adapters
#
# `save` writes `adapter.safetensors` (A, B, beta, the trained `wte` and `ln_f`, and any
# frozen tensor the seed cannot regenerate) and `adapter.json` (spec, root seed, the draw
# of each layer, fingerprints and sha256 sums). `W_seed` is not stored: it is drawn again
# from the seed on load. Its report sets the file against a dense checkpoint of the same
# model: 16% of it at the small size (2 layers, 64 wide), 6% at the full size (4 layers,
# 128 wide). Adapters grow like r (d_in + d_out) per layer and `W_seed` like d_in d_out,
# so the share falls as the model widens; at this toy size the trained character
# embedding and the JSON record are a large part of the file.

# %%
folder = Path(tempfile.mkdtemp()) / "gpt2-r4"
report = save(model, folder)
print(f"seed + adapters: {report.bytes:,} bytes; full checkpoint: {report.full_bytes:,} bytes "
      f"({100 * report.ratio:.1f}%)")
print(sorted(p.name for p in folder.iterdir()))

# %% [markdown]
# `load` needs a fresh instance of the same class for a model that is not one of the
# toolkit's families: it scaffolds it again, regenerates every `W_seed` from the seed and
# checks its fingerprint, verifies every tensor's sha256 and restores the tie.

# %%
fresh = load(folder, model=GPT2LMHeadModel(config))
fresh.eval()
model.eval()
with torch.no_grad():
    same = torch.equal(fresh(test_ids).logits, model(test_ids).logits)
print("reloaded model gives the same logits:", same, "; test loss", round(test_loss(fresh), 3))

# %% [markdown]
# ## Merge back to a plain GPT-2
#
# `merge` folds each scaffold layer into its original class, `W = beta W_seed + s B A`:
# the result is an ordinary `GPT2LMHeadModel` whose state dict loads strictly (same keys
# and shapes) into a model that never saw this toolkit.

# %%
plain = merge(fresh)
reference = GPT2LMHeadModel(config)
print(reference.load_state_dict(plain.state_dict()))  # strict=True by default
reference.eval()
with torch.no_grad():
    gap = (reference(test_ids).logits - model(test_ids).logits).abs().max().item()
print(f"plain GPT-2: {type(reference).__name__}, max |logit difference| = {gap:.2e}")

prompt = torch.tensor([[vocab.index(c) for c in "the cat "]])
with torch.no_grad():
    for _ in range(24):  # greedy decoding
        prompt = torch.cat([prompt, reference(prompt).logits[:, -1:].argmax(-1)], dim=1)
print(repr("".join(vocab[i] for i in prompt[0].tolist())))

# %% [markdown]
# The merged model is an ordinary GPT-2: nothing of this toolkit is needed to run it. Its
# greedy continuation shows what the few steps bought: after 150 steps (small) it has the
# words but not yet the grammar; after 400 (full) it writes sentences of the corpus. The
# file to ship is the adapter folder, about a sixteenth of the checkpoint at the full size,
# and `load` rebuilds the whole model from it and the seed.

# %%
# Run as a script (`python docs/tutorials/scaffold_a_transformers_model.py`), the figures drawn above are still open here
# and are saved in the current folder; docs/tutorials/render.py saves each cell's figures with the page
# and closes them, so there this cell writes nothing.
for k in plt.get_fignums():
    plt.figure(k).savefig(f"scaffold_a_transformers_model_figure_{k}.png", dpi=100, bbox_inches="tight")
    print(f"wrote scaffold_a_transformers_model_figure_{k}.png")
