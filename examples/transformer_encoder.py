"""A transformer encoder classifier: `nn.TransformerEncoder` through `kiln.Model`, on a generated task (no download).

Sequences of 32 random tokens; four copies of the label's "signal" token (one of four) and two random signal tokens
are planted at random positions, so the class is the most frequent signal token and the model must attend over the
whole sequence. The model is two encoder layers (64 dimensions, 4 heads, learned positions) and a linear head on the
mean of their outputs.

```bash
python examples/transformer_encoder.py --epochs 6
```

Tested: `tests/test_examples.py` runs it with `--epochs 3` and requires a test accuracy of at least 0.9.
"""

from __future__ import annotations

import torch
from serving import example_parser
from torch import nn

import kiln
from kiln.data import ArrayDataset

VOCAB, LENGTH, CLASSES = 32, 32, 4


def make_data(n: int, seed: int) -> ArrayDataset:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(CLASSES, VOCAB, (n, LENGTH), generator=generator)  # (N, T), noise tokens >= 4
    labels = torch.randint(0, CLASSES, (n,), generator=generator)
    positions = torch.rand(n, LENGTH, generator=generator).argsort(dim=1)[:, :6]  # 6 planted positions
    planted = labels[:, None].expand(n, 4)  # 4 copies of the label token ...
    distractors = torch.randint(0, CLASSES, (n, 2), generator=generator)  # ... beat 2 random signal tokens
    tokens.scatter_(1, positions, torch.cat([planted, distractors], dim=1))
    return ArrayDataset(tokens, labels)


class EncoderClassifier(nn.Module):
    def __init__(self, dim: int = 64, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.position = nn.Parameter(torch.zeros(1, LENGTH, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, CLASSES)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(tokens) + self.position)  # (B, T, D)
        return self.head(h.mean(dim=1))  # (B, CLASSES)


def main() -> None:
    parser = example_parser(__doc__, __file__)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    torch.manual_seed(0)
    train, test = make_data(4000, seed=0), make_data(1000, seed=1)
    model = kiln.Model(EncoderClassifier(), loss="cross_entropy", lr=2e-3, metrics=["accuracy"])
    model.fit(train, epochs=args.epochs, batch_size=64, validation=test, lr_schedule=kiln.LRSchedule(
        "cosine", warmup_steps=50), seed=0)
    print(f"test accuracy {model.evaluate(test)['accuracy']:.4f}")


if __name__ == "__main__":
    main()
