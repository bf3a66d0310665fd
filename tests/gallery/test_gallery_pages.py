"""The example gallery's pages, generated from the examples' docstrings (docs/_ext/gallery_pages.py): every script has
one, with its command, its picture, and only promises its test keeps."""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path

import pytest

from test_examples import ROOT

_SPEC = importlib.util.spec_from_file_location("gallery_pages", ROOT / "docs" / "_ext" / "gallery_pages.py")
assert _SPEC is not None and _SPEC.loader is not None
gallery_pages = importlib.util.module_from_spec(_SPEC)
sys.modules["gallery_pages"] = gallery_pages  # dataclasses look their module up while the class is built
_SPEC.loader.exec_module(gallery_pages)

EXAMPLES = gallery_pages.examples()
NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:e[+-]?\d+)?(?![\w.])")  # 25, 0.93, 1e-12; not part of a word


def numbers_used(path: Path) -> set[float]:
    """Every number in ``path``'s code: numeric constants, and numbers inside its strings (arguments, patterns)."""
    found: set[float] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
            found.add(float(node.value))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.update(float(number) for number in re.findall(r"\d+(?:\.\d+)?(?:e[+-]?\d+)?", node.value))
    return found


def test_every_script_under_examples_has_a_page_or_is_a_helper():
    scripts = {str(path.relative_to(ROOT / "examples").with_suffix("")) for path in (ROOT / "examples").rglob("*.py")}
    assert scripts == set(gallery_pages.ORDER) | set(gallery_pages.HELPERS)
    pages = gallery_pages.pages()
    assert list(pages) == ["gallery/index.md", *(f"gallery/{name}.md" for name in gallery_pages.ORDER)]
    index = pages["gallery/index.md"]
    assert gallery_pages.TABLE_MARKER not in index
    for example in EXAMPLES:  # the table links every page, with the docstring's first line
        assert f"| [{example.title}]({example.name}.md) | {example.summary} |" in index


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda example: example.name)
def test_a_page_is_the_docstring_with_its_command_and_the_script(example):
    page = gallery_pages.page(example)
    assert page.startswith(f"# {example.title}\n\n{example.summary[0].upper()}")
    commands = re.findall(r"^```bash\n(.*?)^```$", page, flags=re.MULTILINE | re.DOTALL)
    assert any(example.script in block or example.name.endswith("pipeline") for block in commands), example.name
    assert page.endswith(f"## The script\n\n```python\n# {example.script}\n{example.source}\n```\n")
    assert '"""' not in example.source.split("\n", 1)[0]  # the docstring is not repeated in the code


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda example: example.name)
def test_the_numbers_a_page_says_are_tested_are_its_tests_numbers(example):
    tested = example.tested
    assert tested, f"{example.script}: no 'Tested:' paragraph saying which test runs it and what it must reach"
    named = re.findall(r"`(tests/[\w/]+\.py)`", tested)
    assert len(named) == 1, f"{example.script}: the Tested paragraph should name its test file once: {named}"
    test_file = ROOT / named[0]
    assert test_file.is_file(), named[0]
    assert Path(example.script).stem in test_file.read_text(), f"{named[0]} does not run {example.script}"
    used = numbers_used(test_file)
    said = [float(number) for number in NUMBER.findall(tested.replace(named[0], ""))]
    assert [number for number in said if number not in used] == [], (
        f"{example.script} says its test checks numbers that {named[0]} does not use (it uses {sorted(used)})"
    )


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda example: example.name)
def test_a_pages_python_blocks_are_the_scripts_own_code(example):
    for block in re.findall(r"^```python\n(.*?)^```$", example.body, flags=re.MULTILINE | re.DOTALL):
        missing = [line for line in block.splitlines() if line.strip() and line.strip() not in example.source]
        assert missing == [], f"{example.script}: its docstring shows code the script does not have: {missing}"


def test_pictures_and_links_point_at_the_site():
    pictures = {}
    for example in EXAMPLES:
        page = gallery_pages.page(example)
        for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page):
            path = (ROOT / "docs" / example.page).parent / target
            assert path.resolve().is_file(), (example.name, target)
            pictures[example.name] = path.resolve().relative_to(ROOT / "docs").as_posix()
    # the examples that draw a picture show it
    assert pictures == {"image_folder": "images/gallery/shapes_augmentation.png", "gan": "images/gallery/gan.png",
                        "gradients": "images/gallery/gradients.png",
                        "keyword_spotting": "images/gallery/keyword_spectrograms.png"}  # fmt: skip
    assert "](../custom_step.md)" in gallery_pages.page(gallery_pages.read("gan"))
    assert "](digits.md)" in gallery_pages.page(gallery_pages.read("digits_distributed"))


def test_a_link_the_site_cannot_show_is_an_error():
    with pytest.raises(ValueError, match=r"names tests/conftest.py, which the docs site does not have"):
        gallery_pages.relink("see [the fixtures](tests/conftest.py)", source="x", base="", page="gallery/x.md")
    with pytest.raises(ValueError, match=r"names docs/missing.md"):
        gallery_pages.relink("[gone](docs/missing.md)", source="x", base="", page="gallery/x.md")
    kept = "[a URL](https://pytorch.org) and [an anchor](#the-script)"
    assert gallery_pages.relink(kept, source="x", base="", page="gallery/x.md") == kept
    moved = gallery_pages.relink("[LSTM](../examples/lstm_lm.py#x)", source="y", base="docs", page="gallery/a/b.md")
    assert moved == "[LSTM](../lstm_lm.md#x)"
