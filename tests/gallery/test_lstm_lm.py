"""examples/lstm_lm.py: a character LSTM trained with TBPTT (hidden state carried in self.carry) beats character
frequencies by far on held-out text, samples, and generates text through a real server."""

from __future__ import annotations

import ast
import re

from test_examples import run_example


def test_lstm_language_model_learns_the_docs_and_generates_through_the_server(tmp_path):
    output = run_example("lstm_lm.py", "--epochs", "3", "--chars", "30000", "--batch-size", "8", "--bptt", "32",
                         "--hidden", "128", "--layers", "1", "--lr", "1e-2", cwd=tmp_path)  # fmt: skip
    assert "corpus: 30000 characters of README.md and docs/*.md" in output
    held_out, unigram = map(float, re.search(r"held-out perplexity ([0-9.]+) \(character frequencies alone: "
                                              r"([0-9.]+)\)", output).groups())  # fmt: skip
    assert held_out < 0.5 * unigram  # an untrained model is at the vocabulary size (~100), frequencies at ~30
    by_epoch = ast.literal_eval(re.search(r"training perplexity by epoch (\[.*\])", output).group(1))
    assert len(by_epoch) == 3 and by_epoch[-1] < by_epoch[0]
    text = ast.literal_eval(re.search(r"^sample: (.*)$", output, re.MULTILINE).group(1))
    assert text.startswith("The model ") and len(text) == len("The model ") + 200
    served = ast.literal_eval(re.search(r"served docs-lm@production: 60 characters over HTTP: (.*)$", output,
                                        re.MULTILINE).group(1))  # fmt: skip
    assert served.startswith("kiln ") and len(served) == 65
