"""Inputs against the signature: dtype, shape, range, finiteness, ragged and deep lists, both protocols."""

from __future__ import annotations

import numpy as np
import pytest

from kiln.errors import ConfigError
from kiln.serve.protocol import decode_v1, decode_v2, encode_v1, encode_v2, parse_json
from kiln.serve.tensors import RequestError, TensorSpec, as_array, specs_from_signature

SIGNATURE = {
    "inputs": [{"name": "x", "dtype": "float32", "shape": [None, 4]}],
    "outputs": [{"name": "output", "dtype": "float32", "shape": [None, 2]}],
}
X = specs_from_signature(SIGNATURE, "inputs")
OUT = specs_from_signature(SIGNATURE, "outputs")
TOKENS = TensorSpec("tokens", np.dtype(np.int64), (3,), "INT64")
SMALL = TensorSpec("small", np.dtype(np.uint8), (2,), "UINT8")


def refused(value, spec=X[0], field="inputs") -> RequestError:
    with pytest.raises(RequestError) as caught:
        as_array(value, spec, field)
    return caught.value


def test_one_sample_and_a_batch_are_both_taken():
    array, single = as_array([1, 2, 3, 4], X[0], "inputs")
    assert single and array.shape == (1, 4) and array.dtype == np.float32
    array, single = as_array([[1, 2, 3, 4.5]] * 3, X[0], "inputs")
    assert not single and array.shape == (3, 4)
    array, _ = as_array([[1, 2, 3]], TOKENS, "inputs.tokens")
    assert array.dtype == np.int64


@pytest.mark.parametrize(
    ("value", "status", "words"),
    [
        ([1, 2, 3], 422, "shape (3,)"),
        ([[1, 2, 3, 4], [1, 2, 3]], 400, "ragged"),
        ([[1, 2, 3, 4], 5], 400, "ragged"),
        (["a", "b", "c", "d"], 422, "strings"),
        ([None, 1, 2, 3], 422, "null"),
        ([True, False, True, False], 422, "booleans"),
        ("1234", 422, "a string"),
        ({"a": 1}, 422, "object"),
        ([1e39, 0, 0, 0], 422, "inputs[0] is inf"),
        ([[0, 0, 0, 0], [0, 0, -1e300, 0]], 422, "inputs[1][2] is -inf"),
        ([], 422, "shape (0,)"),
        ([[]], 422, "shape (1, 0)"),
        ([[[1, 2, 3, 4]]], 422, "shape (1, 1, 4)"),
    ],
)
def test_wrong_inputs_get_a_4xx_naming_the_field(value, status, words):
    error = refused(value)
    assert error.status == status
    assert words in error.message
    assert error.message.startswith("inputs")


def test_deep_nesting_is_refused_not_crashing():
    value: object = [1.0]
    for _ in range(200):
        value = [value]
    assert "too deeply nested" in refused(value).message
    with pytest.raises(RequestError, match="not valid JSON"):
        parse_json(b"[" * 5000 + b"]" * 5000)  # past orjson's depth limit


def test_integers_are_range_checked_and_floats_refused_for_integer_inputs():
    assert "integers" in refused([1.5, 2, 3], TOKENS).message or "non-integer" in refused([1.5, 2, 3], TOKENS).message
    assert "outside the range of uint8" in refused([300, 1], SMALL, "inputs.small").message
    assert "outside the range of int64" not in refused([2**70, 1, 1], TOKENS).message  # object dtype: refused as such


@pytest.mark.parametrize("body", [b"", b"{", b"[NaN]", b'{"inputs": [Infinity]}', b"\xff\xfe", b"[1] x"])
def test_malformed_json_is_400(body):
    with pytest.raises(RequestError) as caught:
        parse_json(body)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ([1, 2], "JSON object"),
        ({"instances": [1, 2, 3, 4]}, "no 'inputs'"),
        ({"inputs": {"y": [1, 2, 3, 4]}}, "unknown ['y']"),
    ],
)
def test_v1_envelope_errors(payload, words):
    with pytest.raises(RequestError, match=words.replace("[", r"\[").replace("]", r"\]")):
        decode_v1(payload, X)


def test_v1_round_trip_keeps_single_samples_unbatched():
    decoded = decode_v1({"inputs": [0, 1, 2, 3]}, X)
    assert decoded.single and decoded.arrays[0].shape == (1, 4)
    out = np.arange(2, dtype=np.float32)[None]
    assert encode_v1([out], OUT, single=True) == b'{"outputs":[0.0,1.0]}'
    assert encode_v1([out], OUT, single=False) == b'{"outputs":[[0.0,1.0]]}'
    decoded = decode_v1({"inputs": {"x": [[0, 1, 2, 3]]}}, X)
    assert not decoded.single


def v2(**overrides):
    tensor = {"name": "x", "shape": [2, 4], "datatype": "FP32", "data": list(range(8))}
    return {"id": "r1", "inputs": [{**tensor, **overrides}]}


def test_v2_round_trip():
    decoded = decode_v2(v2(), X, OUT)
    assert decoded.arrays[0].shape == (2, 4) and decoded.request_id == "r1"
    body = encode_v2([np.zeros((2, 2), np.float32)], OUT, model="m", version="3", decoded=decoded)
    assert parse_json(body) == {
        "model_name": "m", "model_version": "3", "id": "r1",
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [2, 2], "data": [0.0] * 4}],
    }  # fmt: skip
    nested = decode_v2(v2(data=[[0, 1, 2, 3], [4, 5, 6, 7]]), X, OUT)
    assert np.array_equal(nested.arrays[0], decoded.arrays[0])


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"name": "y"}, "inputs[0].name"),
        ({"datatype": "INT64"}, "datatype"),
        ({"shape": [2, 5]}, "shape is [2, 5]"),
        ({"shape": [0, 4], "data": []}, "n >= 1"),
        ({"shape": "2x4"}, "list of non-negative integers"),
        ({"data": list(range(7))}, "holds 7 values"),
        ({"data": ["a"] * 8}, "strings"),
    ],
)
def test_v2_errors_name_the_tensor(overrides, words):
    with pytest.raises(RequestError, match=words.replace("[", r"\[").replace("]", r"\]")):
        decode_v2(v2(**overrides), X, OUT)


def test_v2_requested_outputs_must_exist():
    with pytest.raises(RequestError, match="'outputs'"):
        decode_v2({**v2(), "outputs": [{"name": "nope"}]}, X, OUT)
    assert decode_v2({**v2(), "outputs": [{"name": "output"}]}, X, OUT).outputs == ("output",)


def test_signature_dtypes_the_server_cannot_take_are_a_config_error():
    with pytest.raises(ConfigError, match="bfloat16"):
        specs_from_signature({"inputs": [{"name": "x", "dtype": "bfloat16", "shape": [None, 2]}]}, "inputs")


def test_non_finite_outputs_are_named_in_json():
    out = np.array([[np.nan, np.inf], [-np.inf, 0.5]], np.float32)
    assert encode_v1([out], OUT, single=False) == b'{"outputs":[["NaN","Infinity"],["-Infinity",0.5]]}'
    assert encode_v1([out[:, 0]], OUT, single=True) == b'{"outputs":"NaN"}'  # one sample of a 1-d output: a scalar
    finite = np.array([[0.25, 0.5]], np.float32)
    assert encode_v1([finite], OUT, single=False) == b'{"outputs":[[0.25,0.5]]}'
