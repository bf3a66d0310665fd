"""An LSTM sequence classifier: `kiln.Model` on an `nn.LSTM`, on a generated counting task (no download).

Each sequence holds 24 random tokens from 2 to 19 with five marker tokens, each 0 or 1, planted at random
positions; its class is which marker appears more often, so the model must read the whole sequence. The model
embeds the tokens, runs an LSTM over them and classifies its last hidden state; `kiln.Model` trains it with the same
`fit` as any other module.

```bash
python examples/lstm_sequence.py --epochs 8
```

Tested: `tests/test_examples.py` runs it with `--epochs 4` and requires a test accuracy of at least 0.9.
"""

from __future__ import annotations

import torch
from serving import example_parser
from torch import nn

import kiln
from kiln.data import ArrayDataset


def make_data(n: int, length: int = 24, seed: int = 0) -> ArrayDataset:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(2, 20, (n, length), generator=generator)  # (N, T)
    markers = torch.randint(0, 2, (n, 5), generator=generator)  # 5 markers per sequence, each 0 or 1
    positions = torch.rand(n, length, generator=generator).argsort(dim=1)[:, :5]
    tokens.scatter_(1, positions, markers)
    labels = (markers.sum(1) >= 3).long()  # more ones than zeros
    return ArrayDataset(tokens, labels)


class LSTMClassifier(nn.Module):
    def __init__(self, vocab: int = 20, dim: int = 32, hidden: int = 64, classes: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(self.embed(tokens))  # h: (1, B, H)
        return self.head(h[-1])  # (B, classes)


def main() -> None:
    parser = example_parser(__doc__, __file__)
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    train, test = make_data(4000, seed=0), make_data(1000, seed=1)
    model = kiln.Model(LSTMClassifier(), loss="cross_entropy", lr=5e-3, metrics=["accuracy"])
    model.fit(train, epochs=args.epochs, batch_size=64, validation=test, clip_grad_norm=1.0, seed=0)
    print(f"test accuracy {model.evaluate(test)['accuracy']:.4f}")


if __name__ == "__main__":
    main()
