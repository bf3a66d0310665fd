"""MkDocs hooks for the docs site: pages kept outside docs/ (benchmarks/RESULTS.md) become site pages, and the docs'
relative links to them (which work on a repository browser) are pointed at those pages; the example gallery's pages
are generated from the examples' docstrings (gallery_pages.py) and listed in the nav."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gallery_pages  # beside this file: mkdocs puts the hooks' folder on sys.path while it loads them
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
# repository file -> the site page that shows it
OUTSIDE = {"benchmarks/RESULTS.md": "benchmarks.md"}
GALLERY_INDEX = "gallery/index.md"


def on_config(config: Any) -> Any:
    """The nav's ``gallery/index.md`` entry becomes a section: the gallery's first page, then one page per example."""
    section = [{"Overview": GALLERY_INDEX}, *(page for page in gallery_pages.pages() if page != GALLERY_INDEX)]

    def expand(items: list[Any]) -> list[Any]:
        expanded = []
        for item in items:
            if isinstance(item, dict):
                [(title, value)] = item.items()
                if value == GALLERY_INDEX:
                    value = section
                elif isinstance(value, list):
                    value = expand(value)
                item = {title: value}
            expanded.append(item)
        return expanded

    if config.nav:
        config.nav = expand(config.nav)
    config.watch.append(str(gallery_pages.EXAMPLES))  # `mkdocs serve` rebuilds when a docstring changes
    return config


def on_files(files: Files, config: Any) -> Files:
    for source, page in OUTSIDE.items():
        files.append(File.generated(config, page, content=(ROOT / source).read_text()))
    for page, markdown in gallery_pages.pages().items():
        files.append(File.generated(config, page, content=markdown))
    return files


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    depth = page.file.src_uri.count("/")
    for source, target in OUTSIDE.items():
        markdown = markdown.replace(f"]({'../' * (depth + 1)}{source}", f"]({'../' * depth}{target}")
    return markdown
