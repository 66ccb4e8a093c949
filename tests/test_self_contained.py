"""The checkout stands alone: fixtures, their checksums and the format notes all live inside it.

A fresh clone into an empty folder must pass ``make test``. So the fixtures are in
``tests/fixtures/`` and match their ``SHA256SUMS``; every anchor of ``docs/formats.md`` that
code or tests cite exists; and no file under ``src/``, ``tests/``, ``benchmarks/`` or
``examples/`` names a path outside the checkout.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from fixture_truth import FIXTURES

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("src", "tests", "benchmarks", "examples")
TEXT_SUFFIXES = (".py", ".md", ".txt", ".toml", ".cfg", ".json", ".ini", ".sh")
# Spelled in pieces so this file does not match itself.
OUTSIDE = [
    re.compile(re.escape("../" + "shared")),
    re.compile(re.escape("shared" + "/fixtures")),
    re.compile(re.escape("shared" + "/specs")),
    re.compile(re.escape("security" + ".md")),
    re.compile(re.escape("formats" + ".md §")),  # section numbers of an outside document
    re.compile(r"(?<![\w.])/" + r"(?:work|home|Users|root)/"),
    re.compile(r"parents\[[2-9]\]"),  # a path climbing above the checkout from a test file
]


def _text_files() -> list[Path]:
    found = []
    for top in SCANNED:
        for p in sorted((REPO / top).rglob("*")):
            if p.is_file() and p.suffix in TEXT_SUFFIXES and "egg-info" not in str(p):
                found.append(p)
    return found


def _slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_fixture_folder_is_inside_the_checkout() -> None:
    assert FIXTURES.is_dir(), f"{FIXTURES}: the fixtures are missing"
    assert FIXTURES.resolve().is_relative_to(REPO), FIXTURES


def test_fixtures_match_their_checksums() -> None:
    listed = {}
    for line in (FIXTURES / "SHA256SUMS").read_text("utf-8").splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name.removeprefix("./")] = digest
    assert listed, "SHA256SUMS lists no file"
    for name, digest in listed.items():
        path = FIXTURES / name
        assert path.is_file(), f"{path}: listed in SHA256SUMS but missing"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"{path}: changed"
    # Every fixture and ground-truth file is covered; the README and the scripts are not data.
    data = {
        p.relative_to(FIXTURES).as_posix()
        for p in FIXTURES.rglob("*")
        if p.is_file()
        and p.name not in ("README.md", "SHA256SUMS")
        and p.suffix != ".py"
        and "__pycache__" not in p.parts
    }
    assert data == set(listed), sorted(data ^ set(listed))


def test_fixture_provenance_travels_with_the_fixtures() -> None:
    assert (FIXTURES / "README.md").is_file()
    frameworks = [p for p in FIXTURES.iterdir() if p.is_dir() and p.name != "_tools"]
    assert frameworks
    for folder in frameworks:
        assert (folder / "make_fixture.py").is_file(), folder
        assert (folder / "make_expected.py").is_file(), folder
    assert (FIXTURES / "_tools" / "groundtruth.py").is_file()


def test_cited_format_anchors_exist() -> None:
    doc = (REPO / "docs" / "formats.md").read_text("utf-8")
    anchors = {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", doc, re.M)}
    cited = re.compile(r"docs/formats\.md#([A-Za-z0-9_-]+)")
    missing = []
    for path in [*_text_files(), REPO / "docs" / "formats.md"]:
        for m in cited.finditer(path.read_text("utf-8", "replace")):
            if m.group(1) not in anchors:
                missing.append(f"{path.relative_to(REPO)}: #{m.group(1)}")
    in_doc = re.findall(r"\]\(#([A-Za-z0-9_-]+)\)", doc)
    missing += [f"docs/formats.md: #{a}" for a in in_doc if a not in anchors]
    assert not missing, missing


@pytest.mark.parametrize("pattern", OUTSIDE, ids=lambda p: p.pattern)
def test_no_file_names_a_path_outside_the_checkout(pattern: re.Pattern[str]) -> None:
    hits = []
    for path in _text_files():
        for n, line in enumerate(path.read_text("utf-8", "replace").splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(REPO)}:{n}: {line.strip()[:100]}")
    assert not hits, hits
