# %% [markdown]
# # Text generation with an RNN, with charrnn
#
# The TensorFlow tutorial's steps — get Shakespeare, train Embedding(256) → GRU(1024) → Dense
# for 10 epochs on 100-character sequences, sample from "ROMEO: " — in a few calls. Run it as a
# script (`python tutorial.py`) or cell by cell in a notebook; `QUICK=1` trains a small model
# for one epoch instead, for a first look in a minute.

# %%
import os

import charrnn

quick = os.environ.get("QUICK") == "1"

# %% [markdown]
# ## The data
# Downloaded once and checked against its SHA-256 (an existing good copy is kept).

# %%
path = charrnn.download(output="data/shakespeare.txt")
text = open(path, encoding="utf-8").read()
print(f"{len(text):,} characters, {len(set(text))} distinct")

# %% [markdown]
# ## Training
# The tutorial's model and recipe are the default preset. Every flag of `charrnn train` is a
# keyword; `on_epoch` sees each epoch's losses. Ctrl-C (the notebook's stop button) saves a
# resumable checkpoint; run the cell again with `resume=True` to continue exactly.

# %%
history = []
settings = dict(rnn_units=256, epochs=1) if quick else dict(epochs=10)
model = charrnn.train(
    path,
    "checkpoints/tutorial-quick" if quick else "checkpoints/tutorial",
    seed=1,
    on_epoch=history.append,
    **settings,
)
for epoch in history:
    print(f"epoch {epoch['epoch']}: train {epoch['train_loss']:.3f}, validation {epoch['val_loss']:.3f} nats/char")

# %% [markdown]
# ## Sampling
# The same seed gives the same text as `charrnn generate --seed 1`. Lower temperatures are more
# predictable; `top_p` keeps only the most likely characters.

# %%
print(model.generate(start="ROMEO: ", length=1000, temperature=1.0, seed=1))

# %%
for piece in model.stream(start="JULIET: ", length=400, temperature=0.8, top_p=0.95):
    print(piece, end="", flush=True)
print()

# %% [markdown]
# ## How good is it?
# Nats (and bits) per character on the last tenth of the text, which training held out.

# %%
score = model.score(text[-len(text) // 10 :])
print(f"{score['nats_per_char']:.4f} nats/char, {score['bits_per_char']:.4f} bits/char, perplexity {score['perplexity']:.2f}")

# %% [markdown]
# The model's next-character distribution after a prefix (needs NumPy):

# %%
try:
    p = model.probabilities("ROMEO: Wherefore art thou")[-1]
    best = sorted(range(len(p)), key=lambda i: -p[i])[:5]
    print([(model.vocab[i], round(float(p[i]), 3)) for i in best])
except ImportError:
    print("pip install numpy to see the probabilities")
