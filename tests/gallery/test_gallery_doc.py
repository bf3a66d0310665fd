"""docs/gallery.md has a section for every gallery example, with commands and pictures that exist."""

from __future__ import annotations

import re

from test_examples import ROOT

GALLERY = ROOT / "docs" / "gallery.md"
EXAMPLES = ("image_folder", "tabular", "text_classifier", "keyword_spotting", "gradients", "digits_distributed", "gan",
            "lstm_lm")  # fmt: skip


def test_every_example_has_a_section_with_its_command_and_every_picture_exists():
    text = GALLERY.read_text()
    sections = re.split(r"^## ", text, flags=re.MULTILINE)[1:]
    for name in EXAMPLES:
        section = next((s for s in sections if f"examples/{name}.py" in s.splitlines()[0]), None)
        assert section is not None, f"no section headed with examples/{name}.py"
        assert f"python examples/{name}.py" in section or f"examples/{name}.py --" in section, name
        assert "```text" in section, f"{name}: no output shown"
    pictures = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert len(pictures) >= 3 and [p for p in pictures if not (GALLERY.parent / p).is_file()] == []
    links = re.findall(r"(?<!!)\[[^]]*\]\(([^)#:]+)\)", text)
    assert [link for link in links if not (GALLERY.parent / link).exists()] == []
    named = set(re.findall(r"`(examples/\w+\.py)`", text))
    assert [path for path in named if not (ROOT / path).is_file()] == []
