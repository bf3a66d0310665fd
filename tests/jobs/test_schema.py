"""docs/job.schema.json is generated from the config dataclasses, is up to date, and validates real configs."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from kiln.jobs._toml import loads
from kiln.jobs.schema import job_schema, main, render

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "docs" / "job.schema.json"


def test_the_shipped_schema_is_up_to_date() -> None:
    assert SCHEMA.read_text() == render(), "run: python -m kiln.jobs.schema docs/job.schema.json"
    assert main([str(SCHEMA), "--check"]) == 0


def test_check_reports_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "job.schema.json"
    stale.write_text("{}\n")
    assert main([str(stale), "--check"]) == 1
    assert main([str(stale)]) == 0 and json.loads(stale.read_text()) == job_schema()


def test_the_example_job_validates_and_mistakes_do_not() -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    example = loads((ROOT / "examples" / "pipeline" / "job.toml").read_text())
    jsonschema.validate(example, schema)
    for broken, where in [
        ({**example, "fit": {"epoch": 3}}, "Additional properties"),  # a typo'd key
        ({**example, "fit": {"epochs": "ten"}}, "'ten' is not of type 'integer'"),
        ({**example, "model": {**example["model"], "loss": "crossentropy"}}, "is not one of"),
        ({key: value for key, value in example.items() if key != "data"}, "'data' is a required property"),
    ]:
        with pytest.raises(jsonschema.ValidationError, match=where):
            jsonschema.validate(broken, schema)
