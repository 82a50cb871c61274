"""docs/reliability.md is generated from the reliability tests' @case marks and must be current; every case the
reliability issue lists has a test, and every reliability test names its case."""
import subprocess
import sys

from conftest import REPO
from tools import reliability_table


def test_reliability_doc_is_current_and_complete():
    result = subprocess.run([sys.executable, "tools/reliability_table.py", "--check"], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    cases, unmarked = reliability_table.collect()
    assert unmarked == [] and reliability_table.problems(cases, unmarked) == []
    text = (REPO / "docs" / "reliability.md").read_text()
    for case in cases:
        assert f"| {case.name} |" in text and f"`{case.test}`" in text


def test_the_checker_finds_unmarked_tests_and_missing_cases(tmp_path):
    (tmp_path / "test_reliability_example.py").write_text(
        "from reliability import case\n\n"
        "@case('Images', 'No face found', 'stops with a message')\n"
        "def test_image_no_face():\n    pass\n\n"
        "def test_something_unnamed():\n    pass\n")
    cases, unmarked = reliability_table.collect(tmp_path)
    assert [(c.group, c.name) for c in cases] == [("Images", "No face found")]
    found = reliability_table.problems(cases, unmarked)
    assert "test_reliability_example.py::test_something_unnamed has no @case(...)" in found
    assert "no test for the required case Weights / Truncated .pth" in found
    assert not any("No face found" in line for line in found)
    assert "| No face found | stops with a message |" in reliability_table.render(cases)
