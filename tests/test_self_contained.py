"""The repository stands on its own: no tracked file points outside it, and every section a comment cites exists."""
import re
import subprocess

from conftest import REFERENCE_DIR, REPO

# Names of what lives outside the repository: the folder beside a developer's checkout and its documents.
OUTSIDE = re.compile(r"\.\./shared|shared/reference|sonic-reference|\bspec §|reference README §")
CITATION = re.compile(r"`?((?:docs/)?official-behaviour\.md|reference/README\.md)`?\s+((?:§\d+(?:, )?)+)")
THIS_FILE = "tests/test_self_contained.py"  # it names them to find them


def _tracked_text_files() -> dict[str, str]:
    names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True).stdout
    texts = {}
    for name in filter(lambda n: n and n != THIS_FILE, names.decode().split("\0")):
        data = (REPO / name).read_bytes()
        if b"\0" not in data:  # images and tensors are no documents
            texts[name] = data.decode("utf-8", errors="replace")
    return texts


def outside_names(texts: dict[str, str]) -> dict[str, list[str]]:
    """File → the outside names it holds."""
    found = {}
    for name, text in texts.items():
        hits = [m.group(0) for m in OUTSIDE.finditer(text)]
        if hits:
            found[name] = hits
    return found


def broken_citations(texts: dict[str, str]) -> list[str]:
    """`<doc> §N` citations whose document has no section N (a `## N.` heading)."""
    docs = {"official-behaviour.md": REPO / "docs" / "official-behaviour.md",
            "reference/README.md": REFERENCE_DIR / "README.md"}
    sections = {key: set(re.findall(r"^## (\d+)\.", path.read_text(), re.M)) for key, path in docs.items()}
    broken = []
    for name, text in texts.items():
        for m in CITATION.finditer(text):
            key = "reference/README.md" if m.group(1).startswith("reference") else "official-behaviour.md"
            broken += [f"{name}: {m.group(0)}" for n in re.findall(r"\d+", m.group(2)) if n not in sections[key]]
    return broken


def test_no_tracked_file_points_outside_the_repository():
    found = outside_names(_tracked_text_files())
    assert not found, f"files naming documents or data outside the repository: {found}"


def test_the_check_finds_an_outside_name():
    texts = {"a.py": "see ../shared/reference/README.md", "b.md": "(spec §7), the shared/reference folder",
             "c.py": "fine", "sonic_model/sampling/shift_fusion.py": "(sonic-reference §6.5) and ../shared"}
    assert outside_names(texts) == {"a.py": ["../shared"], "b.md": ["spec §", "shared/reference"],
                                    "sonic_model/sampling/shift_fusion.py": ["sonic-reference", "../shared"]}


def test_every_cited_section_exists():
    texts = _tracked_text_files()
    assert sum(len(CITATION.findall(t)) for t in texts.values()) >= 10  # the docstrings do cite them
    assert not broken_citations(texts)


def test_a_missing_section_is_caught():
    assert broken_citations({"x.py": "(`docs/official-behaviour.md` §2, §99)"}) == [
        "x.py: `docs/official-behaviour.md` §2, §99"]


def test_the_reference_data_is_tracked():
    tracked = _tracked_text_files()
    assert "reference/README.md" in tracked and "reference/golden/index.json" in tracked
