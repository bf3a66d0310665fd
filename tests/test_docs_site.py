"""The documentation site builds with ``mkdocs build --strict``: a broken link, a missing page in a link, a bad anchor
or an API reference that does not resolve fails the suite."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_site_builds_strictly_with_the_api_reference(tmp_path: Path) -> None:
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={"NO_MKDOCS_2_WARNING": "1", "PATH": ""},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    model_page = (site / "api" / "model" / "index.html").read_text()
    assert "kiln.train.model.Model" in model_page and "def fit" not in model_page  # rendered, not source
    assert 'id="kiln.train.model.Model.fit"' in model_page  # the docstrings were read, method by method
    assert "model.fit(train" in re.sub(r"<[^>]+>", "", model_page)  # an Example: block rendered (highlighted) code
    assert (site / "benchmarks" / "index.html").exists()  # benchmarks/RESULTS.md became a page
    assert "../benchmarks/RESULTS.md" not in (site / "performance" / "index.html").read_text()
    # the gallery: a page per example, generated from its docstring, with its picture, and an index linking them
    gan = (site / "gallery" / "gan" / "index.html").read_text()
    assert "A custom training step, two networks and two optimizers" in gan  # the docstring's first line
    assert 'src="../../images/gallery/gan.png"' in gan and (site / "images" / "gallery" / "gan.png").is_file()
    assert "def train_step" in re.sub(r"<[^>]+>", "", gan)  # the script itself, below the text
    gallery = (site / "gallery" / "index.html").read_text()
    assert 'href="gan/"' in gallery and 'href="pipeline/digits_pipeline/"' in gallery
