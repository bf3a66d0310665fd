"""Store references: a URL only with a scheme, a path otherwise; unknown schemes are errors; passwords are masked."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.errors import ConfigError
from kiln.store.location import describe_store, locate


def test_a_plain_path_is_the_embedded_store(tmp_path: Path) -> None:
    found = locate(str(tmp_path / "s"))
    assert found.embedded and found.directory == tmp_path / "s"
    assert (found.blobs, found.tmp) == (tmp_path / "s" / "blobs", tmp_path / "s" / "tmp")
    assert found.url.get_backend_name() == "sqlite" and found.url.database == str(tmp_path / "s" / "kiln.db")
    assert locate(tmp_path / "s") == found
    assert locate(str(tmp_path / "s"), blobs=tmp_path / "b").blobs == tmp_path / "b"


@pytest.mark.parametrize("url", ["sqlite:///{root}/s", "sqlite:///{root}/s/kiln.db"])
def test_sqlite_urls_name_the_store_directory(tmp_path: Path, url: str) -> None:
    found = locate(url.format(root=tmp_path))
    assert found.directory == tmp_path / "s" and found.embedded


@pytest.mark.parametrize(
    "url", ["postgresql://kiln@db.lab/kiln", "postgresql+psycopg://kiln@db.lab/kiln", "postgres://kiln@db.lab/kiln"]
)
def test_postgresql_urls_are_never_paths(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    found = locate(url)
    assert not found.embedded and found.directory is None
    assert found.url.drivername == "postgresql+psycopg" and found.url.database == "kiln"
    assert found.blobs == tmp_path / ".kiln" / "blobs"  # the default: $KILN_HOME/blobs, else ./.kiln/blobs
    monkeypatch.setenv("KILN_HOME", str(tmp_path / "home"))
    assert locate(url).blobs == tmp_path / "home" / "blobs"
    monkeypatch.setenv("KILN_BLOBS", str(tmp_path / "shared"))
    assert locate(url).blobs == tmp_path / "shared" and locate(url).tmp == tmp_path / "shared" / "tmp"
    assert locate(url, blobs=tmp_path / "mine").blobs == tmp_path / "mine"
    assert not Path("postgresql:").exists()  # nothing was created on the way


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("mysql://kiln@db/kiln", "scheme 'mysql' is not one kiln knows"),
        ("s3://bucket/store", "scheme 's3' is not one kiln knows"),
        ("postgresql+psycopg2://kiln@db/kiln", "through psycopg 3"),
        ("postgresql://kiln:pw@db:notaport/kiln", "malformed store URL postgresql://"),
        ("postgresql:/kiln", "is not a URL"),
        ("sqlite://", "sqlite:// needs a directory"),
        ("", "must be a path or a URL"),
    ],
)
def test_bad_references_are_one_clear_error(reference: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        locate(reference)
    assert "pw" not in str(caught.value)


def test_the_password_is_masked_everywhere_it_is_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    found = locate("postgresql://kiln:hunter2@db.lab:5432/kiln?sslmode=require")
    assert found.url.password == "hunter2"  # still there for the driver
    assert found.describe() == "postgresql+psycopg://kiln:***@db.lab:5432/kiln?sslmode=require"
    assert found.secrets() == ["hunter2"]
    in_query = locate("postgresql://kiln@db.lab/kiln?password=hunter2")
    assert "hunter2" not in in_query.describe() and in_query.secrets() == ["hunter2"]
    assert found.identity() == "postgresql+psycopg://kiln@db.lab:5432/kiln?sslmode=require"  # what gc compares
    assert (
        in_query.identity()
        == locate("postgresql://kiln@db.lab/kiln").identity()
        == "postgresql+psycopg://kiln@db.lab/kiln"
    )
    monkeypatch.setenv("KILN_STORE", "postgresql://kiln:hunter2@db.lab/kiln")
    assert "hunter2" not in describe_store() and "kiln:***@db.lab" in describe_store()
