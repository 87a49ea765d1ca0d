"""The README is a front page (issue 27): at most 250 lines, the Quickstart in its first 40, Python examples that
import from ``multiguard`` only, links that resolve, and an own-data path whose commands are those of the
walkthrough a test runs verbatim (docs/own-data.md)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_the_readme_is_a_front_page() -> None:
    lines = README.splitlines()
    assert len(lines) <= 250, len(lines)
    quickstart = next(i for i, line in enumerate(lines) if line.startswith("## Quickstart"))
    assert quickstart < 40 and "make demo" in "\n".join(lines[quickstart:40])


def test_readme_python_imports_from_multiguard_only() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks
    imports = [line for block in blocks for line in block.splitlines() if re.match(r"(from|import) multiguard", line)]
    assert imports and all(re.match(r"(from multiguard import |import multiguard$)", line) for line in imports), imports


def test_readme_links_resolve() -> None:
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    local = [t for t in targets if not t.startswith("http")]
    assert local and all((ROOT / target).exists() for target in local), [t for t in local if not (ROOT / t).exists()]


def test_readme_own_data_commands_are_those_the_walkthrough_runs() -> None:
    def commands(text: str) -> set[str]:
        block = re.findall(r"```bash\n(.*?)```", text, re.S)
        joined = "\n".join(block).replace("\\\n", " ")
        return {" ".join(line.split()) for line in joined.splitlines() if line.startswith("multiguard ")}

    section = README[README.index("## Your own data and model"):]
    section = section[:section.index("\n## ", 5)]
    ours = commands(section)
    assert len(ours) >= 4 and ours <= commands((ROOT / "docs" / "own-data.md").read_text())


def test_every_walkthrough_numbers_its_steps_in_order() -> None:
    """The numbered steps of each code block of the README and the docs (``# 1. fetch ...``) count 1, 2, 3, ...
    with no number repeated or skipped (issue 33: a walkthrough once read 1, 2, 3, 4, 2, 5, 6)."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    checked = 0
    for page in pages:
        for block in re.findall(r"```[\w-]*\n(.*?)```", page.read_text(encoding="utf-8"), re.S):
            steps = [int(m) for m in re.findall(r"^# (\d+)\. ", block, re.M)]
            if steps:
                checked += 1
                assert steps == list(range(1, len(steps) + 1)), f"{page.name}: steps numbered {steps}"
    assert checked >= 2  # docs/gpu.md and docs/denoised.md at least
