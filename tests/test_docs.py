"""The README and the guide in docs/ (an mdBook): every chapter is in the book's summary,
every relative link leads to a file that exists and to a heading that exists in it, and the
book builds."""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "docs"
PAGES = [ROOT / "README.md"] + sorted((BOOK / "src").glob("*.md"))
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """A heading's anchor as GitHub and mdBook make it: lower case, punctuation dropped,
    spaces to dashes."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    inside_code = False
    found = set()
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            inside_code = not inside_code
        elif not inside_code and (m := re.match(r"#+ (.*)", line)):
            found.add(slug(m.group(1)))
    return found


def links(page: Path):
    inside_code = False
    for n, line in enumerate(page.read_text().splitlines(), 1):
        if line.startswith("```"):
            inside_code = not inside_code
            continue
        if inside_code:
            continue
        for m in LINK.finditer(line):
            yield n, m.group(1) or m.group(2)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_somewhere(page):
    broken = []
    for n, target in links(page):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"line {n}: {target} (no {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"line {n}: {target} (no heading #{anchor} in {dest.name})")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_every_chapter_is_in_the_summary_and_the_readme_stays_a_front_page():
    summary = (BOOK / "src" / "SUMMARY.md").read_text()
    listed = set(re.findall(r"\]\(([^)]+\.md)\)", summary))
    chapters = {p.name for p in (BOOK / "src").glob("*.md")} - {"SUMMARY.md"}
    assert chapters == listed, (sorted(chapters - listed), sorted(listed - chapters))
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250, "the README is the front page; the rest goes in docs/"


def test_the_book_builds(tmp_path):
    mdbook = shutil.which("mdbook")
    if not mdbook:
        pytest.skip("mdbook is not installed (install/mdbook.sh builds it)")
    run = subprocess.run([mdbook, "build", str(BOOK), "--dest-dir", str(tmp_path / "book")],
                         capture_output=True, text=True, timeout=120, env=dict(os.environ, RUST_LOG="warn"))
    assert run.returncode == 0, run.stderr
    assert "ERROR" not in run.stderr and "WARN" not in run.stderr, run.stderr
    for page in (BOOK / "src").glob("*.md"):
        if page.name != "SUMMARY.md":
            assert (tmp_path / "book" / page.with_suffix(".html").name).exists(), page.name
