"""Server settings: loopback by default, no reachable bind without a token, sane limits; `kiln predict --local`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kiln.cli import main
from kiln.errors import ConfigError
from kiln.serve import ServeConfig
from kiln.serve.config import is_loopback

from .conftest import Served, reference_outputs

TOKEN = "0123456789abcdef-token"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_hosts(host):
    assert is_loopback(host)
    assert ServeConfig(host=host).host == host


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "example.com", "localhost.evil.com", ""])
def test_reachable_bind_needs_a_token(host):
    assert not is_loopback(host)
    with pytest.raises(ConfigError, match="without an auth token"):
        ServeConfig(host=host)
    assert ServeConfig(host=host, token=TOKEN).token == TOKEN


@pytest.mark.parametrize("token", ["short", "has space in the middle!!", "tab\tinside-0123456789", "ünïcode-01234567"])
def test_weak_or_unsendable_tokens_are_refused(token):
    with pytest.raises(ConfigError, match="token"):
        ServeConfig(token=token)


@pytest.mark.parametrize(
    "options",
    [{"max_batch_size": 0}, {"workers": -1}, {"port": 70000}, {"timeout_s": 0}, {"max_delay_ms": -1},
     {"runtime": "tensorrt"}, {"threads": 0}, {"max_queue": True}],
)  # fmt: skip
def test_bad_settings_name_themselves(options):
    (name,) = options
    with pytest.raises(ConfigError, match=name):
        ServeConfig(**options)


def test_predict_local_matches_the_module(served: Served, capsys):
    x = np.random.default_rng(0).random((2, 64), dtype=np.float32)
    args = ["predict", "mlp@production", "--local", "--store", str(served.store), "--input", json.dumps(x.tolist())]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(printed["outputs"], reference_outputs(served.module, x), rtol=1e-4, atol=1e-5)
    assert main([*args[:-1], json.dumps({"inputs": [[0.0] * 3]})]) == 2
    assert "shape" in capsys.readouterr().err


def test_predict_without_a_server_says_so(capsys):
    assert main(["predict", "mlp", "--url", "http://127.0.0.1:9", "--input", "[0.0]"]) == 2
    assert "is `kiln serve` running" in capsys.readouterr().err
