"""The example gallery's pages, generated at build time from the examples' module docstrings (hooks.py adds them to
the site; nothing generated is committed).

A gallery script's docstring is its page, in Markdown:

- the first line is ``Title: what it shows.``: the page's heading and lead, and its row in the gallery's table;
- the rest is the page as it reads in the script: the data, the model, how to run, serve and query it, one run's
  output, the result and its picture;
- links and pictures name repository paths (``docs/images/gallery/gan.png``, ``docs/custom_step.md``,
  ``examples/digits.py``), so they mean the same in the script and on the site, where they are pointed at the
  site's pages; a link to anything the site does not have is an error;
- a paragraph starting ``Tested:`` says which test runs the script and what it must reach; every number in it is a
  number that test uses (tests/gallery/test_gallery_pages.py checks), so the page cannot promise what is no longer
  checked;
- a ``python`` block is an excerpt of the script: every line of it is a line of the script (checked by the same test).

examples/README.md is the gallery's first page: its ``<!-- gallery table -->`` line becomes the table of examples.
"""

from __future__ import annotations

import ast
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
INTRO = "examples/README.md"
TABLE_MARKER = "<!-- gallery table -->"

# The gallery's order. Every script under examples/ is here or in HELPERS (tests/gallery/test_gallery_pages.py).
ORDER = (
    "digits",
    "image_folder",
    "tabular",
    "text_classifier",
    "keyword_spotting",
    "lstm_lm",
    "gan",
    "gradients",
    "digits_distributed",
    "pipeline/digits_pipeline",
    "lstm_sequence",
    "transformer_encoder",
)
HELPERS = {"serving": "the serving helper the gallery scripts import"}

_LINK = re.compile(r"(!?\[[^\]]*\])\(([^)\s]+)\)")  # [text](target) and ![alt](target)
_TESTED = re.compile(r"^Tested:", re.MULTILINE)


@dataclass(frozen=True)
class Example:
    name: str  # its path under examples/ without .py: "gan", "pipeline/digits_pipeline"
    title: str  # "A GAN"
    summary: str  # "a custom training step: two networks, two optimizers, ..."
    body: str  # the docstring after its first line, Markdown
    source: str  # the script below its docstring

    @property
    def script(self) -> str:
        return f"examples/{self.name}.py"

    @property
    def page(self) -> str:
        return f"gallery/{self.name}.md"

    @property
    def tested(self) -> str:
        """The ``Tested:`` paragraph, without its label; empty when the docstring has none."""
        match = _TESTED.search(self.body)
        if match is None:
            return ""
        end = self.body.find("\n\n", match.end())
        return self.body[match.end() : end if end != -1 else None].strip()


def read(name: str) -> Example:
    """The example ``examples/{name}.py``: its docstring split into title, summary and body, and its code."""
    path = EXAMPLES / f"{name}.py"
    text = path.read_text()
    tree = ast.parse(text, filename=str(path))
    docstring = ast.get_docstring(tree, clean=True)
    if not docstring:
        raise ValueError(f"{path.relative_to(ROOT)} has no module docstring: its gallery page is written there")
    first, _, body = docstring.partition("\n")
    title, colon, summary = first.partition(": ")
    if not colon:
        raise ValueError(f"{path.relative_to(ROOT)}: the docstring's first line should read 'Title: what it shows', "
                         f"not {first!r}")  # fmt: skip
    end = tree.body[0].end_lineno or 0  # the docstring is the module's first statement
    source = "\n".join(text.splitlines()[end:]).strip("\n")
    return Example(name, title.strip(), summary.strip(), body.strip("\n"), source)


def examples() -> list[Example]:
    return [read(name) for name in ORDER]


def site_path(repository_path: str) -> str | None:
    """The site page (or file) that shows a repository path, or None when the site has none."""
    if repository_path.startswith("docs/"):
        return repository_path.removeprefix("docs/")
    if repository_path.startswith("examples/") and repository_path.endswith(".py"):
        name = repository_path.removeprefix("examples/").removesuffix(".py")
        return f"gallery/{name}.md" if name in ORDER else None
    if repository_path == INTRO:
        return "gallery/index.md"
    return None


def relink(markdown: str, *, source: str, base: str, page: str) -> str:
    """``markdown``'s relative links and pictures, written relative to ``base`` (a repository folder, "" for its root),
    pointed at the site's copy of what they name, relative to ``page``. ``source`` names the text in errors."""

    def replace(match: re.Match[str]) -> str:
        label, target = match.groups()
        if target.startswith("#") or re.match(r"[a-z][a-z0-9+.-]*:", target):
            return match.group(0)  # an anchor on the same page, or a URL
        path, hash_, anchor = target.partition("#")
        repository_path = posixpath.normpath(posixpath.join(base, path))
        on_site = site_path(repository_path)
        if on_site is None or not (ROOT / repository_path).exists():
            raise ValueError(f"{source}: {label}({target}) names {repository_path}, which the docs site does not "
                             f"have; link a page under docs/ or a gallery script")  # fmt: skip
        return f"{label}({posixpath.relpath(on_site, posixpath.dirname(page))}{hash_}{anchor})"

    return _LINK.sub(replace, markdown)


def page(example: Example) -> str:
    """The gallery page of ``example``."""
    body = relink(example.body, source=example.script, base="", page=example.page)
    body = _TESTED.sub("**Tested:**", body)
    lead = example.summary[:1].upper() + example.summary[1:]
    return (
        f"# {example.title}\n\n{lead}\n\n`{example.script}` — the [script](#the-script) is below.\n\n{body}\n\n"
        f"## The script\n\n```python\n# {example.script}\n{example.source}\n```\n"
    )


def index(gallery: list[Example]) -> str:
    """The gallery's first page: examples/README.md with the table of examples in place of its marker."""
    intro = (ROOT / INTRO).read_text()
    if intro.count(TABLE_MARKER) != 1:
        raise ValueError(f"{INTRO} should hold the line {TABLE_MARKER} once: the table of examples goes there")
    rows = ["| example | what it shows |", "| --- | --- |"]
    for example in gallery:
        link = posixpath.relpath(example.page, "gallery")
        rows.append(f"| [{example.title}]({link}) | {example.summary.replace('|', '&#124;')} |")
    intro = relink(intro, source=INTRO, base="examples", page="gallery/index.md")
    return intro.replace(TABLE_MARKER, "\n".join(rows))


def pages() -> dict[str, str]:
    """Every gallery page, site path -> Markdown."""
    gallery = examples()
    return {"gallery/index.md": index(gallery), **{example.page: page(example) for example in gallery}}
