import json
from pathlib import Path
from typing import Any

import pytest
import torch

from kiln.data import TextDataset, Vocabulary, make_loader, read_jsonl
from kiln.errors import ConfigError, DataError

from .files import inputs

REVIEWS = [
    {"text": "A great film, great cast!", "label": "positive"},
    {"text": "A dull film.", "label": "negative"},
    {"text": "Great fun", "label": "positive"},
    {"text": "Dull and long; too long", "label": "negative"},
    {"text": "not bad", "label": "neutral"},
]


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def test_build_orders_by_frequency_then_text_after_the_special_ids() -> None:
    vocab = Vocabulary.build(["b a c a", "a b d"])
    assert vocab.tokens == ["<pad>", "<unk>", "a", "b", "c", "d"]
    assert (vocab.pad_id, vocab.unk_id) == (0, 1)
    assert vocab.encode("a d zebra") == [2, 5, 1]
    assert len(Vocabulary.build(["b a c a", "a b d"], min_freq=2)) == 4
    assert Vocabulary.build(["b a c a", "a b d"], max_size=3).tokens == ["<pad>", "<unk>", "a"]
    with pytest.raises(ConfigError, match="max_size"):
        Vocabulary.build(["a"], max_size=1)


@pytest.mark.parametrize(
    ("tokenizer", "text", "decoded"),
    [("word", "Hello, World!", "hello , world !"), ("char", "héllo wörld", "héllo wörld")],
)
def test_encode_decode_round_trip(tokenizer: str, text: str, decoded: str) -> None:
    vocab = Vocabulary.build([text], tokenizer=tokenizer)
    ids = vocab.encode(text)
    assert 1 not in ids
    assert vocab.decode(ids) == decoded
    assert vocab.decode(torch.tensor([*ids, 0, 0])) == decoded  # padding is dropped


def test_encode_batch_truncates_and_pads_and_tokens_can_be_given() -> None:
    vocab = Vocabulary(["x", "y", "x"], tokenizer="char")
    assert vocab.tokens == ["<pad>", "<unk>", "x", "y"]
    batch = vocab.encode_batch(["xyzx", "y"], max_length=3)
    assert batch.dtype == torch.int64 and batch.tolist() == [[2, 3, 1], [3, 0, 0]]


def test_state_dict_is_json_and_restores_the_same_ids() -> None:
    vocab = Vocabulary.build(["the cat sat", "the dog"], tokenizer="char")
    restored = Vocabulary().load_state_dict(json.loads(json.dumps(vocab.state_dict())))
    assert restored.tokens == vocab.tokens and restored.tokenizer == "char"
    assert restored.encode("cats") == vocab.encode("cats")
    with pytest.raises(DataError, match="tokens"):
        Vocabulary().load_state_dict({"tokenizer": "word", "tokens": ["a", "b"]})


class SubwordTokenizer:
    """Stands in for a HuggingFace tokenizer: its bound .tokenize method is the hook."""

    def tokenize(self, text: str) -> list[str]:
        return [piece for word in text.split() for piece in (word[:2], "##" + word[2:]) if piece != "##"]


def test_a_callable_tokenizer_is_used_and_must_be_given_again_after_loading() -> None:
    tokenizer = SubwordTokenizer()
    vocab = Vocabulary.build(["walking talks"], tokenizer=tokenizer.tokenize)
    assert vocab.tokenize("walking") == ["wa", "##lking"] and "##lks" in vocab
    state = json.loads(json.dumps(vocab.state_dict()))
    assert state["tokenizer"] == "custom"
    again = Vocabulary(tokenizer=tokenizer.tokenize).load_state_dict(state)
    assert again.encode("talks walking") == vocab.encode("talks walking")
    with pytest.raises(ConfigError, match="custom tokenizer"):
        Vocabulary().load_state_dict(state).encode("walking")


def test_read_jsonl_round_trips_into_padded_batches(tmp_path: Path) -> None:
    dataset = read_jsonl(write_jsonl(tmp_path / "train.jsonl", REVIEWS), max_length=6)
    assert isinstance(dataset, TextDataset)
    assert dataset.classes == ["negative", "neutral", "positive"]
    assert inputs(dataset).dtype == torch.int64 and inputs(dataset).shape == (5, 6)
    vocab = dataset.vocabulary
    assert vocab.decode(inputs(dataset)[0]) == "a great film , great cast"  # truncated to 6
    assert inputs(dataset)[2].tolist()[2:] == [0, 0, 0, 0]  # "great fun" + padding
    batches = list(make_loader(dataset, 2, shuffle=True, seed=4).epoch(0))
    assert [tuple(x.shape) for x, _ in batches] == [(2, 6), (2, 6), (1, 6)]
    by_text = {vocab.decode(x): dataset.classes[int(y)] for xs, ys in batches for x, y in zip(xs, ys, strict=True)}
    assert by_text["great fun"] == "positive" and by_text["not bad"] == "neutral"


def test_test_split_reuses_the_train_vocabulary_and_classes(tmp_path: Path) -> None:
    train = read_jsonl(write_jsonl(tmp_path / "train.jsonl", REVIEWS), tokenizer="word", min_freq=2)
    assert "great" in train.vocabulary and "cast" not in train.vocabulary
    records = [{"text": "great cast", "label": "positive"}]
    test = read_jsonl(write_jsonl(tmp_path / "test.jsonl", records), vocabulary=train.vocabulary, classes=train.classes)
    assert inputs(test)[0, :2].tolist() == [train.vocabulary.encode("great")[0], 1]
    assert test.y is not None and test.y.tolist() == [2] and test.vocabulary is train.vocabulary


def test_vocabulary_survives_a_split(tmp_path: Path) -> None:
    dataset = read_jsonl(write_jsonl(tmp_path / "train.jsonl", REVIEWS))
    first, second = dataset.split(0.6, seed=0)
    assert isinstance(first, TextDataset) and first.vocabulary is dataset.vocabulary
    assert second.classes == dataset.classes


@pytest.mark.parametrize(
    ("labels", "dtype", "values"),
    [([3, 0, 7], torch.int64, [3, 0, 7]), ([0.5, 1, -2.0], torch.float32, [0.5, 1.0, -2.0])],
)
def test_numeric_labels_are_kept(tmp_path: Path, labels: list[Any], dtype: torch.dtype, values: list[Any]) -> None:
    records = [{"body": f"text {i}", "score": label} for i, label in enumerate(labels)]
    dataset = read_jsonl(write_jsonl(tmp_path / "n.jsonl", records), text_field="body", label_field="score")
    assert dataset.y is not None and dataset.y.dtype == dtype and dataset.y.tolist() == values
    assert dataset.classes is None


def test_texts_without_labels(tmp_path: Path) -> None:
    dataset = read_jsonl(write_jsonl(tmp_path / "p.jsonl", [{"text": "hi"}]), label_field=None, tokenizer="char")
    assert dataset.y is None and dataset.vocabulary.decode(inputs(dataset)[0]) == "hi"


def test_bad_json_names_the_file_and_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", REVIEWS[:2])
    path.write_text(path.read_text() + "\n" + '{"text": "oops", "label": }\n')
    with pytest.raises(DataError) as error:
        read_jsonl(path)
    assert str(path) in str(error.value) and "line 4" in str(error.value) and "invalid JSON" in str(error.value)


@pytest.mark.parametrize(
    ("record", "match"),
    [
        ({"label": "x"}, "missing field 'text'"),
        ({"text": "x"}, "missing field 'label'"),
        ({"text": 3, "label": "x"}, "'text' must be a string"),
        ({"text": "x", "label": None}, "must be a string or a number"),
        ({"text": "x", "label": 1}, "mixes strings and numbers"),
        (["text", "label"], "expected a JSON object"),
    ],
)
def test_malformed_records_name_the_problem(tmp_path: Path, record: Any, match: str) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", [REVIEWS[0], record])
    with pytest.raises(DataError, match=match) as error:
        read_jsonl(path)
    assert "line 2" in str(error.value)


def test_empty_file_and_unknown_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="empty"):
        read_jsonl(write_jsonl(tmp_path / "e.jsonl", []))
    with pytest.raises(ConfigError, match="unknown tokenizer 'bpe'"):
        read_jsonl(write_jsonl(tmp_path / "t.jsonl", REVIEWS), tokenizer="bpe")
