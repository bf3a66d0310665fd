"""The ```python blocks of docs/*.md run as written.

Each page's blocks run in order as one script, in a fresh process, in an empty directory with its own KILN_HOME,
as a reader who pastes them would run them. A block that cannot run here says why in an HTML comment on the line
above its fence, which the site does not show::

    <!-- not run: serve() blocks until it is stopped; tests/serve/ runs a real server -->
    ```python

Pages whose blocks a test of their own runs, with checks on what they print, are in ELSEWHERE; the lines a page
says its code prints are checked for the pages in PRINTED. docs/ARCHITECTURE.md describes the convention.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```python\n(.*?)^```$", flags=re.MULTILINE | re.DOTALL)
NOT_RUN = re.compile(r"^<!-- not run: (\S.*?) -->$")

# page -> the test that runs its blocks (and checks what they print)
ELSEWHERE = {"tutorial.md": "tests/test_docs.py", "custom_step.md": "tests/train/test_custom_step.py"}
# page -> lines the page shows as its code's output that the run must print too (seeded, so they do not change)
PRINTED = {
    "tuning.md": (
        "Study('digits-mlp', metric='val_accuracy', trials=30, best=0.9694)",
        "{'lr': 0.7837794639365088, 'width': 190, 'optimizer': 'sgd'}",
        "digits@1 True {'study': 'digits-mlp', 'trial': '11'}",
        "98 steps, diverged: True",
    ),
}


def python_blocks(page: Path) -> list[tuple[str, str | None]]:
    """The page's python blocks in order, each with the reason it is not run (None for a block that runs)."""
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rpartition("\n")[2]  # the last non-blank line above the fence
        reason = NOT_RUN.match(before)
        found.append((match.group(1), reason.group(1) if reason else None))
    return found


def runnable_pages() -> list[str]:
    return sorted(
        page.name
        for page in DOCS.glob("*.md")
        if page.name not in ELSEWHERE and any(reason is None for _, reason in python_blocks(page))
    )


def test_every_marker_says_why_and_stands_above_a_python_block():
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text()
        markers = re.findall(r"^<!-- not run\b.*$", text, flags=re.MULTILINE)
        explained = [reason for _, reason in python_blocks(page) if reason is not None]
        assert len(markers) == len(explained), f"{page.name}: a not-run marker without a reason, or not above a block"
    for page, test in ELSEWHERE.items():  # the test named really runs the page
        assert page in (ROOT / test).read_text(), f"{test} does not mention docs/{page}"


def test_most_python_blocks_in_the_docs_run():
    blocks = [reason for page in DOCS.glob("*.md") for _, reason in python_blocks(page)]
    assert len(blocks) >= 15 and sum(reason is None for reason in blocks) >= 0.75 * len(blocks), blocks


@pytest.mark.parametrize("name", runnable_pages())
def test_a_pages_python_blocks_run_as_written(name: str, tmp_path: Path) -> None:
    script = "\n\n".join(code for code, reason in python_blocks(DOCS / name) if reason is None)
    (tmp_path / "page.py").write_text(script)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KILN_HOME": str(tmp_path / ".kiln"), "COLUMNS": "200"}
    completed = subprocess.run([sys.executable, "page.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                               timeout=300, check=False)  # fmt: skip
    assert completed.returncode == 0, f"docs/{name}:\n{completed.stdout[-3000:]}{completed.stderr[-3000:]}"
    page, printed = (DOCS / name).read_text(), completed.stdout.splitlines()
    for line in PRINTED.get(name, ()):
        assert f"\n{line}\n" in page, f"docs/{name} no longer shows {line!r}: update PRINTED"
        assert line in printed, f"docs/{name} shows {line!r}; its code printed:\n{completed.stdout[-3000:]}"
