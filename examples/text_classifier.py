"""Text: an embedding-bag topic classifier on a generated JSON-lines corpus, with its vocabulary in the package.

The script writes its corpus as JSON lines (`{"text": ..., "label": "sports"}`) about four topics (sports, weather,
cooking, technology): two topic words in one of eight templates with filler words, a third word from another topic
in a third of the sentences, and words two topics share ("cloud", "chips", "pitch"). `kiln.data.read_jsonl` builds a
word `Vocabulary` on the training file and encodes the test file with it. The model is an `nn.EmbeddingBag` (the
mean of the words' embeddings, padding skipped) and a linear layer.

The vocabulary is part of the package, as a declared preprocessing step (`kiln.export.preprocess`): a `text` step
holds the tokenizer's name, the tokens in id order (`vocabulary.state_dict()["tokens"]`, plain JSON) and the maximum
length, and a `classes` output step names the topics. `kiln serve` applies it on `/v1` and in `kiln predict`: a
client sends the text itself (`{"inputs": ["a sentence", ...]}` or a `text/plain` body), the server tokenizes it
exactly as `Vocabulary` did in training (one implementation, `kiln._tokens`) and answers `"labels"` (topic names)
next to the raw `"outputs"`. No client code needs the vocabulary; `/v2` still takes token ids.

```bash
python examples/text_classifier.py --epochs 10
```

```text
4000 training sentences, Vocabulary(size=118, tokenizer='word'), classes ['cooking', 'sports', 'technology', ...]
test accuracy 0.9760  test loss 0.0765
registered topics@1 (run 92484b3b6d4c455ba94d79e6d7f96f5f) and promoted it to production

serve it:   kiln serve topics@production
query it:   kiln predict topics --input @topics.json
            # or: curl -s localhost:8000/v1/models/topics:predict -d @topics.json
            the request holds the text itself: the server tokenizes it and answers its topic
  sports     <- 'the striker scored a late goal and the fans went wild'
  weather    <- 'expect heavy rain and strong wind tonight'
  cooking    <- 'melt the butter in a pan then add the garlic'
  technology <- 'the laptop needs a software update'
served topics@production: 1000 test sentences sent as text over HTTP, accuracy 0.9760, agreement with the
in-process model 1.0000
```

`topics.json` is `{"inputs": ["the striker scored a late goal and the fans went wild"]}`, and the answer to it is
`{"outputs": [[...4 logits...]], "labels": ["sports"]}`.

Tested: `tests/gallery/test_text_classifier.py` runs it with `--epochs 10 --train-size 2000` and requires a test
accuracy of at least 0.93 (chance is a quarter), then starts `kiln serve` itself, checks that the metadata route
says it applies the text step, sends 4 new sentences as text and checks each topic label (and that they are the
labels of the ids `kiln.data.Vocabulary` gives, run through the graph in the test's process), and runs the
`kiln predict` command the script printed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from serving import example_parser, promote, served, show_commands
from torch import nn

import kiln
import kiln.store
from kiln.data import read_jsonl

NAME = "topics"
MAX_LENGTH = 24
TOPICS = {
    "sports": ["match", "goal", "team", "coach", "league", "player", "referee", "season", "stadium", "striker",
               "tournament", "pitch", "fans", "trophy"],
    "weather": ["rain", "storm", "forecast", "sunshine", "wind", "cloud", "snow", "temperature", "thunder", "fog",
                "drizzle", "frost", "heatwave", "umbrella"],
    "cooking": ["recipe", "oven", "flour", "garlic", "sauce", "onion", "pan", "butter", "spices", "dough", "chips",
                "soup", "kitchen", "pitch"],  # pitch: also sports
    "technology": ["software", "laptop", "server", "update", "battery", "network", "app", "code", "screen",
                   "browser", "cloud", "chips", "keyboard", "password"],  # cloud: also weather; chips: also cooking
}  # fmt: skip
TEMPLATES = [
    "i read that the {a} was {adjective} and the {b} {verb} {time}",
    "{time} the {a} {verb} and everyone talked about the {b}",
    "my friend says the {a} is {adjective} but the {b} {verb}",
    "nobody expected the {a} to be so {adjective} {time}",
    "we spent the afternoon on the {a} and the {b} {verb}",
    "the news {time} was all about the {a} and the {b}",
    "is the {a} really {adjective} or did the {b} just {verb}",
    "after the {a} {verb} the {b} seemed {adjective}",
]
FILLERS = {
    "adjective": ["great", "terrible", "strange", "late", "perfect", "unusual", "fine", "awful"],
    "verb": ["changed", "failed", "improved", "surprised us", "went wrong", "was better", "stopped", "returned"],
    "time": ["yesterday", "this morning", "last night", "on monday", "again", "at last", "today", "all week"],
}


def sentence(topic: str, rng: random.Random) -> str:
    a, b = rng.sample(TOPICS[topic], 2)
    fills = {slot: rng.choice(words) for slot, words in FILLERS.items()}
    text = rng.choice(TEMPLATES).format(a=a, b=b, **fills)
    if rng.random() < 1 / 3:  # a word from another topic: two words of the topic against one
        other = rng.choice([t for t in TOPICS if t != topic])
        text += rng.choice([" and the {c} too", " even with the {c}", " like the {c}"]).format(
            c=rng.choice(TOPICS[other])
        )
    return text


def write_corpus(path: Path, count: int, seed: int) -> None:
    """``count`` JSON lines with a text and its topic."""
    rng = random.Random(seed)
    with path.open("w") as file:
        for _ in range(count):
            topic = rng.choice(sorted(TOPICS))
            file.write(json.dumps({"text": sentence(topic, rng), "label": topic}) + "\n")


def classifier(vocabulary_size: int, classes: int, dim: int = 32) -> nn.Module:
    return nn.Sequential(
        nn.EmbeddingBag(vocabulary_size, dim, mode="mean", padding_idx=0),  # (B, L) token ids -> (B, D), pads skipped
        nn.Linear(dim, classes),  # (B, 4)
    )


def main() -> None:
    parser = example_parser(__doc__, __file__)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--train-size", type=int, default=4000, help="sentences in the training file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-serve", action="store_true", help="register only; do not start a server")
    args = parser.parse_args()

    write_corpus(Path("topics_train.jsonl"), args.train_size, seed=args.seed)
    write_corpus(Path("topics_test.jsonl"), 1000, seed=args.seed + 1)  # other sentences from the same templates
    train = read_jsonl("topics_train.jsonl", max_length=MAX_LENGTH)  # builds the vocabulary on the training text
    test = read_jsonl("topics_test.jsonl", vocabulary=train.vocabulary, classes=train.classes, max_length=MAX_LENGTH)
    vocabulary = train.vocabulary
    print(f"{len(train)} training sentences, {vocabulary}, classes {train.classes}")
    train, val = train.split(0.9, seed=args.seed)

    torch.manual_seed(args.seed)
    model = kiln.Model(classifier(len(vocabulary), len(train.classes)), loss="cross_entropy", optimizer="adamw",
                       lr=1e-2, metrics=["accuracy"], store=kiln.store.Store())  # fmt: skip
    model.fit(train, epochs=args.epochs, batch_size=64, validation=val, seed=args.seed, run="topics-embedding-bag",
              lr_schedule="cosine", verbose=0)  # fmt: skip
    result = model.evaluate(test)
    print(f"test accuracy {result['accuracy']:.4f}  test loss {result['loss']:.4f}")

    preprocessing = {  # what the server does with a request: text in, topic names out (kiln.export.preprocess)
        "format": "kiln.preprocessing/1",
        "input": {"type": "text", "tokenizer": "word", "vocabulary": vocabulary.state_dict()["tokens"],
                  "max_length": MAX_LENGTH},  # the training tokenizer and ids; cut to MAX_LENGTH, padded with 0
        "output": {"type": "classes", "names": train.classes},  # answers carry "labels" next to the logits
    }  # fmt: skip
    version = model.register(
        NAME,
        preprocessing=preprocessing,
        example_input=test.x[:1],
        description="embedding bag on a generated topic corpus; text in, topic out",
    )
    promote(version, model.run_id)

    texts = ["the striker scored a late goal and the fans went wild", "expect heavy rain and strong wind tonight",
             "melt the butter in a pan then add the garlic", "the laptop needs a software update"]  # fmt: skip
    show_commands(f"{NAME}@production", {"inputs": texts[:1]}, Path("topics.json"),
                  note="the request holds the text itself: the server tokenizes it and answers its topic")  # fmt: skip
    if args.no_serve:
        return
    test_texts = [json.loads(line)["text"] for line in Path("topics_test.jsonl").read_text().splitlines()]
    with served(f"{NAME}@production") as client:
        labels = client.answer(NAME, texts)["labels"]  # raw text in, topic names out
        served_test = [label for i in range(0, len(test_texts), 256)
                       for label in client.answer(NAME, test_texts[i : i + 256])["labels"]]  # fmt: skip
    for text, label in zip(texts, labels, strict=True):
        print(f"  {label:<10} <- {text!r}")
    truth = [train.classes[i] for i in test.y.tolist()]
    in_process = [train.classes[i] for i in model.predict(test).argmax(-1).tolist()]
    accuracy = float(np.mean([a == b for a, b in zip(served_test, truth, strict=True)]))
    agree = float(np.mean([a == b for a, b in zip(served_test, in_process, strict=True)]))
    print(f"served {NAME}@production: {len(test_texts)} test sentences sent as text over HTTP, accuracy "
          f"{accuracy:.4f}, agreement with the in-process model {agree:.4f}")  # fmt: skip
    if not np.isclose(agree, 1.0):
        raise SystemExit("the served model disagrees with the trained one")


if __name__ == "__main__":
    main()
