"""examples/text_classifier.py: JSONL corpus -> vocabulary -> embedding bag -> registered with its vocabulary as
declared preprocessing -> served by a real `kiln serve` with text in and topic labels out, and queried with the
commands the example prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx

from kiln.data import Vocabulary
from kiln.serve.runtime import load_runtime
from serve._server import ServerProcess
from test_examples import accuracy, run_example


def test_text_classifier_registers_its_vocabulary_and_serves_text_in_labels_out(tmp_path):
    output = run_example("text_classifier.py", "--epochs", "10", "--train-size", "2000", "--no-serve", cwd=tmp_path)
    assert accuracy(output) >= 0.93  # chance is 0.25; a third of the sentences carry another topic's word
    assert "kiln serve topics@production" in output and "kiln predict topics --input @topics.json" in output
    store = tmp_path / ".kiln"
    with ServerProcess("topics@production", store, "--no-access-log") as server:
        server.wait_ready()
        meta = httpx.get(f"{server.url}/v1/models/topics").json()
        assert meta["reference"] == "topics@1" and meta["runtime"] == "onnx"
        preprocessing = meta["preprocessing"]
        assert preprocessing["input"]["tokenizer"] == "word" and preprocessing["input"]["max_length"] == 24
        assert preprocessing["output"]["names"] == ["cooking", "sports", "technology", "weather"]
        assert meta["applies"]["input"] == "text" and meta["applies"]["labels"] is True
        texts = ["the coach and the striker left the stadium", "a storm and thunder with fog all week",
                 "bake the dough and add garlic to the sauce", "my password and the browser update failed"]  # fmt: skip
        reply = httpx.post(f"{server.url}/v1/models/topics:predict", json={"inputs": texts})  # text in, no client code
        assert reply.status_code == 200, reply.text
        assert reply.json()["labels"] == ["sports", "weather", "cooking", "technology"]
        assert len(reply.json()["outputs"]) == 4 and len(reply.json()["outputs"][0]) == 4  # the logits are kept
        # In this process: the texts tokenized by kiln.data's Vocabulary (the training code path), the graph run on them
        vocabulary = Vocabulary().load_state_dict({"tokenizer": "word", "tokens": preprocessing["input"]["vocabulary"]})
        ids = vocabulary.encode_batch(texts, max_length=24).numpy()
        logits = load_runtime("topics@1", store=store).run([ids])[0]
        assert [preprocessing["output"]["names"][i] for i in logits.argmax(-1)] == reply.json()["labels"]

        # The command the example printed, as a user would type it, against this server.
        printed = subprocess.run([sys.executable, "-m", "kiln.cli", "predict", "topics", "--input", "@topics.json",
                                  "--url", server.url], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)  # fmt: skip
        assert printed.returncode == 0, printed.stderr
        assert json.loads(printed.stdout)["labels"] == ["sports"]  # "the striker scored a late goal ..."
        assert server.terminate() == 0
