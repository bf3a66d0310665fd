"""examples/text_classifier.py: JSONL corpus -> vocabulary -> embedding bag -> registered with its vocabulary ->
served by a real `kiln serve` and queried with the commands the example prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx

from kiln.data import Vocabulary
from serve._server import ServerProcess
from test_examples import accuracy, run_example


def test_text_classifier_registers_its_vocabulary_and_serves_token_ids(tmp_path):
    output = run_example("text_classifier.py", "--epochs", "10", "--train-size", "2000", "--no-serve", cwd=tmp_path)
    assert accuracy(output) >= 0.93  # chance is 0.25; a third of the sentences carry another topic's word
    assert "kiln serve topics@production" in output and "kiln predict topics --input @topics.json" in output
    store = tmp_path / ".kiln"
    with ServerProcess("topics@production", store, "--no-access-log") as server:
        server.wait_ready()
        meta = httpx.get(f"{server.url}/v1/models/topics").json()
        assert meta["reference"] == "topics@1" and meta["runtime"] == "onnx"
        preprocessing = meta["preprocessing"]
        assert preprocessing["vocabulary"]["tokenizer"] == "word" and preprocessing["max_length"] == 24
        assert preprocessing["classes"] == ["cooking", "sports", "technology", "weather"]
        vocabulary = Vocabulary().load_state_dict(
            preprocessing["vocabulary"]
        )  # the client's tokenizer, from the server
        texts = ["the coach and the striker left the stadium", "a storm and thunder with fog all week",
                 "bake the dough and add garlic to the sauce", "my password and the browser update failed"]  # fmt: skip
        ids = vocabulary.encode_batch(texts, max_length=preprocessing["max_length"]).tolist()
        reply = httpx.post(f"{server.url}/v1/models/topics:predict", json={"inputs": ids})
        assert reply.status_code == 200, reply.text
        labels = [preprocessing["classes"][max(range(4), key=row.__getitem__)] for row in reply.json()["outputs"]]
        assert labels == ["sports", "weather", "cooking", "technology"]

        # The command the example printed, as a user would type it, against this server.
        printed = subprocess.run([sys.executable, "-m", "kiln.cli", "predict", "topics", "--input", "@topics.json",
                                  "--url", server.url], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)  # fmt: skip
        assert printed.returncode == 0, printed.stderr
        logits = json.loads(printed.stdout)["outputs"][0]
        assert preprocessing["classes"][max(range(4), key=logits.__getitem__)] == "sports"  # "the striker scored ..."
        assert server.terminate() == 0
