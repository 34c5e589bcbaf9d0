"""The package's docstrings and comments point users only at files they have."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_package_points_only_at_files_in_the_project():
    outside = re.compile(r"\.\./shared|REFERENCE(_FLOW)?\.md|DESIGN\.md|TOY_WORLD_NOTES")
    found = [f"{p.relative_to(ROOT)}:{n}" for p in sorted((ROOT / "t2i_align").rglob("*.py"))
             for n, line in enumerate(p.read_text().splitlines(), 1) if outside.search(line)]
    assert found == []
    # every README.md / scripts / conf path a docstring names exists
    named = set()
    for p in (ROOT / "t2i_align").rglob("*.py"):
        named |= set(re.findall(r"\b((?:scripts|conf|tests)/[\w/.-]+\.(?:py|yaml))", p.read_text()))
    missing = sorted(n for n in named if not (ROOT / n).exists() and "<" not in n)
    assert missing == []
