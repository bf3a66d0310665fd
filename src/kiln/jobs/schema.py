"""The JSON Schema of job configs, generated from the dataclasses of :mod:`kiln.jobs.config`.

``python -m kiln.jobs.schema`` rewrites ``docs/job.schema.json`` (``--check`` exits 1 when it is out of date). Point
an editor at it (e.g. Even Better TOML: ``#:schema ./job.schema.json`` on a config's first line) to get completion
and validation while writing a job.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .config import JobConfig
from .typed import schema_of

__all__ = ["job_schema", "main", "render"]


def job_schema() -> dict[str, Any]:
    """The job config's JSON Schema (draft 2020-12)."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "kiln job", **schema_of(JobConfig)}


def render() -> str:
    """The schema file's exact text."""
    return json.dumps(job_schema(), indent=2, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kiln.jobs.schema", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", default="docs/job.schema.json", help="where to write it")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs from the generated schema")
    args = parser.parse_args(argv)
    path, text = Path(args.path), render()
    if args.check:
        current = path.read_text() if path.is_file() else ""
        if current != text:
            print(f"{path} is out of date: run python -m kiln.jobs.schema {path}", file=sys.stderr)
            return 1
        return 0
    path.write_text(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
