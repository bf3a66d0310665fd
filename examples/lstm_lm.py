r"""A language model: a character LSTM on kiln's own docs, trained with truncated backpropagation through time.

A character-level LSTM (2 layers of 256 units) on this repository's README.md and docs/*.md, read as one text with a
character `Vocabulary`; the last tenth is held out. `kiln.train.streams.stream_batches` lays the text out as 16
parallel streams cut into chunks of 64 characters, so that row `b` of each batch continues row `b` of the one
before. The custom `train_step` ([custom training steps](docs/custom_step.md)) carries the LSTM's state from batch to
batch in `self.carry`, which fit detaches after every batch (the truncation of backpropagation through time), empties
at every epoch's start and saves in checkpoints.

The held-out perplexity is measured with the state carried through the whole held-out text and compared with the
perplexity of character frequencies alone. `sample()` continues a prompt character by character with the state
carried along (temperature 0.8). The registered model reads a 64-character window and returns the next character's
logits; the vocabulary is in its preprocessing, and the client generates text one request per character.

```bash
python examples/lstm_lm.py --epochs 10
```

```text
corpus: 129827 characters of README.md and docs/*.md, vocabulary of 123 characters
kiln doctor: vanishing gradients in 'embed' (step 8)
  evidence: gradient norms 'embed' 0.00036 at step 8 are below 0.001x the largest, 'head' 0.83 (smallest ratio
  4.3e-04), on 2 looks in a row
  try: Add normalisation between layers: BatchNorm (MLPs, CNNs) or LayerNorm (transformers, RNNs) keeps ...
  try: Initialise for the activation: kiln.init(module, 'kaiming') for ReLU/GELU networks, ...
  try: Add residual connections (x + layer(x)) so the gradient reaches early layers directly.
training perplexity by epoch [22.8, 9.44, 6.47, 5.2, 4.53, 4.1, 3.81, 3.6, 3.47, 3.4]
held-out perplexity 5.540 (character frequencies alone: 33.763)
sample: 'The model ralies in thin machine file:\n-hearit\njob.toml loss serve` (a class step before ofter its
metrics (`device/test_y`; `maniby`).\n- **The same compached put it\n\n- **Horward when it beok keepes file it on '
factory __main__:CharLSTM lives in the running script: only that script can load this version with the torch
runtime; move it into an importable module.
registered docs-lm@1 (run 5a5ab1c354044404ae170397a499c55a) and promoted it to production

serve it:   kiln serve docs-lm@production
query it:   kiln predict docs-lm --input @docs_lm.json
            # or: curl -s localhost:8000/v1/models/docs-lm:predict -d @docs_lm.json
            the request holds the ids of 'kiln serve ' in a 64-character window
served docs-lm@production: 60 characters over HTTP: 'kiln steps: Trus | promote     │\n│ resumed = version: NNN,
metric'
```

The doctor's early finding is worth reading rather than obeying: an embedding's gradient is sparse (each step
touches only the rows of the characters in the batch) and small next to the output layer's at the start, and its
remedies are for stacks of dense layers. The perplexity falling from 22.8 to 3.4 says the training is healthy.

Tested: `tests/gallery/test_lstm_lm.py` runs it small (`--epochs 3 --chars 30000 --batch-size 8 --bptt 32`,
`--hidden 128 --layers 1 --lr 1e-2`) and requires a held-out perplexity below 0.5 times that of character
frequencies (an untrained model is at the vocabulary size), a training perplexity that falls over the 3 epochs, a
sample of 200 characters, and 60 characters generated through the server.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from serving import example_parser, promote, served, show_commands
from torch import nn

import kiln
import kiln.store
from kiln.data import Vocabulary
from kiln.train.streams import stream_batches

NAME = "docs-lm"
ROOT = Path(__file__).resolve().parents[1]
WINDOW = 64  # characters of context the served model reads


class CharLSTM(nn.Module):
    """Embedding -> 2-layer LSTM -> logits over the vocabulary."""

    def __init__(self, vocabulary: int, dim: int = 64, hidden: int = 256, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, dim)
        self.lstm = nn.LSTM(dim, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocabulary)

    def run(self, tokens: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[
        torch.Tensor, tuple[torch.Tensor, torch.Tensor]
    ]:  # fmt: skip
        out, state = self.lstm(self.embed(tokens), state)  # (B, T, H), ((L, B, H), (L, B, H))
        return self.head(out), state  # (B, T, V)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """What the server answers: the next character's logits after a window of characters, (B, T) -> (B, V)."""
        return self.run(tokens)[0][:, -1]


class LanguageModel(kiln.Model):
    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        tokens, targets = batch  # (B, T) each: targets are the next characters
        logits, state = self.module.run(tokens, self.carry.get("state"))  # state: None at an epoch's start
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        self.backward(loss)
        self.step()
        self.carry["state"] = state  # fit detaches it before the next batch: the truncation of TBPTT
        return {"loss": loss, "perplexity": loss.exp()}


def read_corpus(limit: int | None) -> str:
    paths = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    text = "\n\n".join(path.read_text(encoding="utf-8") for path in paths)
    return text[:limit] if limit else text


@torch.no_grad()
def perplexity(module: CharLSTM, ids: torch.Tensor) -> float:
    """exp(mean cross-entropy) of predicting each character of ``ids`` from the ones before, state carried."""
    x, y = ids[:-1][None], ids[1:][None]  # (1, N)
    total, state = 0.0, None
    for start in range(0, x.shape[1], 512):
        logits, state = module.run(x[:, start : start + 512], state)
        total += float(F.cross_entropy(logits[0], y[0, start : start + 512], reduction="sum"))
    return math.exp(total / y.shape[1])


@torch.no_grad()
def sample(module: CharLSTM, vocabulary: Vocabulary, prompt: str, length: int, *, temperature: float = 0.8,
           seed: int = 0) -> str:  # fmt: skip
    """``prompt`` continued by ``length`` characters drawn from the model, the hidden state carried along."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.tensor([vocabulary.encode(prompt)])  # (1, P)
    logits, state = module.run(ids)
    out = []
    for _ in range(length):
        probabilities = (logits[0, -1] / temperature).softmax(-1)
        probabilities[: Vocabulary.unk_id + 1] = 0  # never <pad> or <unk>
        token = int(torch.multinomial(probabilities, 1, generator=generator))
        out.append(token)
        logits, state = module.run(torch.tensor([[token]]), state)
    return prompt + vocabulary.decode(out)


def window(vocabulary: Vocabulary, text: str) -> list[int]:
    """The last WINDOW characters of ``text`` as ids, left-padded with spaces: the served model's input."""
    return vocabulary.encode(text[-WINDOW:].rjust(WINDOW))


def main() -> None:
    parser = example_parser(__doc__, __file__)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--chars", type=int, default=None, help="use only the first CHARS characters of the docs")
    parser.add_argument("--batch-size", type=int, default=16, help="parallel streams of text")
    parser.add_argument("--bptt", type=int, default=64, help="characters per chunk: how far back gradients reach")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-serve", action="store_true", help="register only; do not start a server")
    args = parser.parse_args()

    text = read_corpus(args.chars)
    vocabulary = Vocabulary.build([text], tokenizer="char")
    ids = torch.tensor(vocabulary.encode(text))  # (N,)
    split = int(len(ids) * 0.9)
    train, held_out = ids[:split], ids[split:]
    frequencies = torch.bincount(train, minlength=len(vocabulary)).float() + 1  # add-one smoothing
    unigram = math.exp(float(-(frequencies / frequencies.sum()).log()[held_out].mean()))
    print(f"corpus: {len(text)} characters of README.md and docs/*.md, vocabulary of {len(vocabulary)} characters")

    torch.manual_seed(args.seed)
    net = CharLSTM(len(vocabulary), hidden=args.hidden, layers=args.layers)
    model = LanguageModel(net, optimizer="adamw", lr=args.lr, store=kiln.store.Store())
    streams = stream_batches(train, batch_size=args.batch_size, length=args.bptt)  # x, y: (chunks * B, bptt)
    model.fit(streams, epochs=args.epochs, batch_size=args.batch_size,
              shuffle=False, clip_grad_norm=1.0, lr_schedule="cosine", seed=args.seed, run="docs-char-lstm",
              verbose=0)  # fmt: skip
    history = model.history
    module = model.module.eval()
    score = perplexity(module, held_out)
    print(f"training perplexity by epoch {[round(p, 2) for p in history['perplexity']]}")
    print(f"held-out perplexity {score:.3f} (character frequencies alone: {unigram:.3f})")
    print(f"sample: {sample(module, vocabulary, 'The model ', 200)!r}")

    preprocessing = {"vocabulary": vocabulary.state_dict(), "window": WINDOW,
                     "input": f"the last {WINDOW} characters as ids, left-padded with spaces"}  # fmt: skip
    example = torch.tensor([window(vocabulary, "kiln serve ")])
    config = {"vocabulary": len(vocabulary), "hidden": args.hidden, "layers": args.layers}  # rebuilds CharLSTM
    version = model.register(NAME, example_input=example, preprocessing=preprocessing, config=config,
                             metrics={"perplexity": score, "unigram_perplexity": unigram},
                             description="character LSTM trained with TBPTT on kiln's docs")  # fmt: skip
    promote(version, model.run_id)
    show_commands(f"{NAME}@production", {"inputs": example.numpy()}, Path("docs_lm.json"),
                  note="the request holds the ids of 'kiln serve ' in a 64-character window")  # fmt: skip
    if args.no_serve:
        return
    prompt, generator = "kiln ", np.random.default_rng(args.seed)
    with served(f"{NAME}@production") as client:
        meta = client.metadata(NAME)["preprocessing"]
        client_vocabulary = Vocabulary().load_state_dict(meta["vocabulary"])
        for _ in range(60):  # one request per character: the server sees the last 64 characters each time
            logits = client.predict(NAME, [window(client_vocabulary, prompt)])[0]
            probabilities = np.exp((logits - logits.max()) / 0.8)
            probabilities[: Vocabulary.unk_id + 1] = 0  # never <pad> or <unk>
            prompt += client_vocabulary.decode(
                [int(generator.choice(len(logits), p=probabilities / probabilities.sum()))]
            )
    print(f"served {NAME}@production: 60 characters over HTTP: {prompt!r}")


if __name__ == "__main__":
    main()
