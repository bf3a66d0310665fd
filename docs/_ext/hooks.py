"""MkDocs hooks for the API site: pages kept outside docs/ (benchmarks/RESULTS.md) become site pages, and the docs'
relative links to them (which work on a repository browser) are pointed at those pages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
# repository file -> the site page that shows it
OUTSIDE = {"benchmarks/RESULTS.md": "benchmarks.md"}


def on_files(files: Files, config: Any) -> Files:
    for source, page in OUTSIDE.items():
        files.append(File.generated(config, page, content=(ROOT / source).read_text()))
    return files


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    depth = page.file.src_uri.count("/")
    for source, target in OUTSIDE.items():
        markdown = markdown.replace(f"]({'../' * (depth + 1)}{source}", f"]({'../' * depth}{target}")
    return markdown
