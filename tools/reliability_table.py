#!/usr/bin/env python
"""Write docs/reliability.md from the reliability tests, or check that it is current.

    python tools/reliability_table.py           # rewrite docs/reliability.md
    python tools/reliability_table.py --check   # exit 1 if the file differs or a required case has no test

Every test in tests/test_reliability_*.py carries @case(group, name, behaviour) (tests/reliability.py). This reads
those decorators with `ast`, without importing the tests (which would start ComfyUI), so the table is exactly what
the tests assert and cannot drift from them.
"""
from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
DOC = ROOT / "docs" / "reliability.md"
GROUP_ORDER = ("Images", "Audio", "Weights", "Runs", "Determinism", "Fuzz")

# The cases the reliability issue lists; each must have a test.
REQUIRED = {
    "Images": ["No face found", "Several faces", "Face at the border", "Tiny image (< 64 px)", "Huge image (> 4K)",
               "Odd sizes (not multiples of 64)", "RGBA image", "Greyscale image", "Batched IMAGE (batch > 1)"],
    "Audio": ["Silence", "0 samples", "Shorter than one video frame", "Sample rates 8 kHz, 22.05 kHz, 44.1 kHz, 48 kHz",
              "Mono, stereo and 5.1", "NaN / Inf samples", "10 minutes"],
    "Weights": ["Missing file", "Truncated .pth", "Valid file in the wrong slot", "Pickle that runs code when unpickled",
                "Safetensors file with a bad header", "Wrong dtype (quantised copy)", "Wrong shapes (an SD1.5 UNet)"],
    "Runs": ["Cancel in the middle of sampling, then run again", "Two different workflows back to back",
             "NaN appearing in the latents", "Out of memory", "The disk fills during the mp4 write",
             "The output folder is read-only", "Cancel at 90 % of sampling", "Cancel during the save",
             "The server is killed during the save", "Out of memory in the last decode chunk",
             "Minutes of audio at flat GPU memory", "One hour of audio"],
    "Determinism": ["Same seed and inputs, same latents", "Seed 0 is a valid seed"],
    "Fuzz": ["Audio length, sample rate, channels, batch", "Image size, channels, batch, face, settings"],
}


@dataclass(frozen=True)
class Case:
    group: str
    name: str
    behaviour: str
    test: str  # file::function


def _literal(node: ast.expr, where: str) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    raise ValueError(f"{where}: @case arguments must be string literals")


def cases_in(path: Path) -> tuple[list[Case], list[str]]:
    """The @case-marked tests of one file, and the names of its tests that have no @case."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found, unmarked = [], []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef) or not node.name.startswith("test_"):
            continue
        marks = [d for d in node.decorator_list
                 if isinstance(d, ast.Call) and isinstance(d.func, ast.Name) and d.func.id == "case"]
        if not marks:
            unmarked.append(node.name)
            continue
        where = f"{path.name}::{node.name}"
        group, name, behaviour = (_literal(a, where) for a in marks[0].args)
        found.append(Case(group, name, behaviour, f"tests/{path.name}::{node.name}"))
    return found, unmarked


def collect(tests: Path = TESTS) -> tuple[list[Case], list[str]]:
    cases, unmarked = [], []
    for path in sorted(tests.glob("test_reliability_*.py")):
        found, missing = cases_in(path)
        cases += found
        unmarked += [f"{path.name}::{name}" for name in missing]
    return cases, unmarked


def problems(cases: list[Case], unmarked: list[str]) -> list[str]:
    issues = [f"{test} has no @case(...)" for test in unmarked]
    have = {(c.group, c.name) for c in cases}
    for group, names in REQUIRED.items():
        issues += [f"no test for the required case {group} / {name}" for name in names if (group, name) not in have]
    seen: set = set()
    for c in cases:
        if (c.group, c.name) in seen:
            issues.append(f"{c.group} / {c.name} is claimed by more than one test")
        seen.add((c.group, c.name))
    return issues


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(cases: list[Case]) -> str:
    lines = [
        "# Reliability: bad inputs, faults and unsafe files",
        "",
        "What the Sonic nodes do with each kind of input or fault users meet. Every row is a test that asserts exactly "
        "this behaviour, most of them by running the pack in the real ComfyUI runtime (random weights in the real "
        "file formats, CPU). After every refusal ComfyUI keeps running: the tests run a healthy prompt next. No "
        "failure leaves a half-written video: the output folder holds nothing or complete files.",
        "",
        "This file is generated from the tests' `@case(...)` marks by `python tools/reliability_table.py`; "
        "`make test` fails when it is out of date.",
    ]
    for group in GROUP_ORDER:
        rows = [c for c in cases if c.group == group]
        if not rows:
            continue
        lines += ["", f"## {group}", "", "| Case | What happens | Test |", "|---|---|---|"]
        lines += [f"| {_cell(c.name)} | {_cell(c.behaviour)} | `{c.test}` |" for c in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if docs/reliability.md is not current")
    args = parser.parse_args(argv)
    cases, unmarked = collect()
    found = problems(cases, unmarked)
    for line in found:
        print(f"reliability_table: {line}", file=sys.stderr)
    text = render(cases)
    if args.check:
        current = DOC.read_text() if DOC.is_file() else ""
        if current != text:
            print(f"reliability_table: {DOC.relative_to(ROOT)} is out of date: run python tools/reliability_table.py",
                  file=sys.stderr)
            return 1
        return 1 if found else 0
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)}: {len(cases)} cases")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
