"""Shared pieces of the parity tool: reading goldens, looking up tolerances, comparing tensors.

A golden is a `.json` description plus the `.safetensors` file (and companions) it names; see
`../shared/reference/README.md` §2. Every check module returns a list of `Comparison`s.
"""
from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file


@dataclass
class Comparison:
    """One compared output: its worst absolute error and whether it is inside the tolerance."""

    name: str
    max_abs: float
    atol: float
    rtol: float
    passed: bool
    note: str = ""

    def line(self) -> str:
        verdict = "ok  " if self.passed else "FAIL"
        tol = "exact" if self.atol == 0 and self.rtol == 0 else f"atol {self.atol:g} rtol {self.rtol:g}"
        extra = f"  ({self.note})" if self.note else ""
        return f"  {verdict} {self.name:<48} max_abs {self.max_abs:.3e}  [{tol}]{extra}"


@dataclass
class Golden:
    """A golden's json description and all its tensors (main file and companions merged)."""

    path: Path
    doc: dict
    tensors: dict[str, torch.Tensor]

    def weights(self, prefix: str = "weights.") -> dict[str, torch.Tensor]:
        """Tensors under `prefix`, with the prefix stripped (the official checkpoint key names)."""
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.tensors.items() if k.startswith(prefix)}


def read_golden(json_path: Path) -> Golden:
    json_path = Path(json_path)
    doc = json.loads(json_path.read_text())
    folder = json_path.parent
    tensors: dict[str, torch.Tensor] = {}
    if doc.get("file"):
        tensors.update(load_file(str(folder / doc["file"])))
    for companion in (doc.get("companion_files") or {}).values():
        name = companion["file"] if isinstance(companion, dict) else companion
        tensors.update(load_file(str(folder / name)))
    return Golden(json_path, doc, tensors)


def _pattern_matches(pattern: str, name: str) -> tuple[bool, int]:
    """Does one tolerance pattern cover `name`? Returns (match, specificity)."""
    best = (False, -1)
    for alternative in (a.strip() for a in pattern.split(",")):
        parts = [p.strip() for p in alternative.split(" / ")]
        head = parts[0]
        if fnmatch.fnmatchcase(name, head):
            best = max(best, (True, len(head.replace("*", ""))))
        # "out.token_seq_padded / windows / encoder states": descriptive alternatives under head's prefix.
        prefix = head.rsplit(".", 1)[0] + "." if "." in head else ""
        for words in parts[1:]:
            if name.startswith(prefix) and all(w in name for w in words.split()):
                best = max(best, (True, len(words)))
    return best


def tolerance_for(doc: dict, name: str) -> tuple[float, float]:
    """The most specific `recommended_tolerance` entry covering `name`.

    With no entry matching, the strictest tolerance in the golden is used, never a looser default.
    """
    table = doc.get("recommended_tolerance") or {}
    matches = []
    for pattern, tol in table.items():
        hit, specificity = _pattern_matches(pattern, name)
        if hit:
            matches.append((specificity, tol))
    if matches:
        tol = max(matches, key=lambda m: m[0])[1]
        return float(tol["atol"]), float(tol["rtol"])
    if not table:
        return 0.0, 0.0
    strictest = min(table.values(), key=lambda t: (t["atol"], t["rtol"]))
    return float(strictest["atol"]), float(strictest["rtol"])


def compare(name: str, actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float,
            note: str = "") -> Comparison:
    """Element-wise |a − b| ≤ atol + rtol·|b| (torch.testing.assert_close semantics)."""
    if tuple(actual.shape) != tuple(expected.shape):
        return Comparison(name, float("inf"), atol, rtol, False,
                          f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    a = actual.detach().to(torch.float64).cpu()
    b = expected.detach().to(torch.float64).cpu()
    diff = (a - b).abs()
    max_abs = float(diff.max()) if diff.numel() else 0.0
    finite = bool(torch.isfinite(a).all())
    passed = finite and bool((diff <= atol + rtol * b.abs()).all())
    if not finite:
        note = (note + "; " if note else "") + "non-finite values"
    return Comparison(name, max_abs, atol, rtol, passed, note)


def compare_golden(golden: Golden, name: str, actual: torch.Tensor, note: str = "") -> Comparison:
    """Compare against the stored tensor `name` with that golden's own tolerance."""
    atol, rtol = tolerance_for(golden.doc, name)
    return compare(name, actual, golden.tensors[name], atol, rtol, note)
