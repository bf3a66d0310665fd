"""Strict names: junk and traversal attempts fail with InvalidNameError before anything touches the store."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.errors import InvalidNameError
from kiln.store import Reference, Store, parse_reference
from kiln.store.names import check_alias, check_file_name, check_name

JUNK = [
    "../x", "..", ".", "%2e%2e", "%2e%2e%2fx", "..%2fx", "/etc/passwd", "/tmp/x", "a/b", "a\\b", "C:\\x", "x\x00y",
    "", " ", "a b", "x\n", "n" * 10_240, "ｘ", "é", "a..b", "-a", ".hidden", "~", "$HOME", "a@b@c",
]  # fmt: skip


@pytest.mark.parametrize("name", ["digits", "digits-cnn", "digits_v2", "a", "A9", "digits.v2", "x" * 64])
def test_good_names_pass(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", [*JUNK, "x" * 65, 3, None, b"digits"])
def test_junk_names_are_refused(name: object) -> None:
    with pytest.raises(InvalidNameError, match="invalid model name"):
        check_name(name)


def test_long_name_error_is_short() -> None:
    with pytest.raises(InvalidNameError) as caught:
        check_name("n" * 10_240)
    assert len(str(caught.value)) < 400 and "10240 characters" in str(caught.value)


@pytest.mark.parametrize("alias", [*JUNK, "Production", "1prod", "latest", "p" * 33])
def test_junk_aliases_are_refused(alias: str) -> None:
    with pytest.raises(InvalidNameError):
        check_alias(alias)


@pytest.mark.parametrize(
    "name", ["../x", "/abs", "a/../b", "a//b", "a/", ".x", "a/.x", "x\x00", "a..b", "-a", "n" * 129]
)
def test_junk_file_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidNameError):
        check_file_name(name)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("digits", Reference("digits")),
        ("digits@latest", Reference("digits")),
        ("digits@3", Reference("digits", version=3)),
        ("digits@production", Reference("digits", alias="production")),
    ],
)
def test_references_parse(text: str, expected: Reference) -> None:
    assert parse_reference(text) == expected
    assert str(parse_reference(text)) == str(expected)


@pytest.mark.parametrize(
    "text",
    [
        "digits@0",
        "digits@-1",
        "digits@03",
        "digits@",
        "@3",
        "digits@../x",
        "digits@%2e",
        "digits@Prod",
        "digits@1e3",
        "digits@" + "9" * 12,
        "../x@1",
        "digits@3@4",
    ],
)
def test_bad_references_are_refused(text: str) -> None:
    with pytest.raises(InvalidNameError):
        parse_reference(text)


def test_store_refuses_junk_and_its_tree_is_unchanged(tmp_path: Path, snapshot) -> None:
    store = Store(tmp_path / "store")
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"weights")
    good = store.register("good", {"w.bin": payload})
    run = store.start_run("run")
    run.finish()
    before = snapshot(tmp_path)
    calls = []
    for junk in JUNK:
        calls += [
            lambda j=junk: store.register(j, {"w.bin": payload}),
            lambda j=junk: store.register("good", {j: payload}),
            lambda j=junk: store.version(j),
            lambda j=junk: store.version(f"good@{j}"),
            lambda j=junk: store.versions(j),
            lambda j=junk: store.promote(j, 1, "production"),
            lambda j=junk: store.promote("good", 1, j),
            lambda j=junk: store.delete(f"{j}@1"),
            lambda j=junk: store.delete_model(j),
            lambda j=junk: store.read(good, j),
            lambda j=junk: store.start_run(j),
            lambda j=junk: store.run(j),
            lambda j=junk: store.log_artifact(run.id, j, payload),
            lambda j=junk: store.alias_history(j),
            lambda j=junk: store.verify(j),
        ]
    for call in calls:
        with pytest.raises(InvalidNameError):
            call()
    assert snapshot(tmp_path) == before
    assert [v.version for v in store.versions("good")] == [1]
    store.close()
