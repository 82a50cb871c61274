"""Shared pieces of the parity tool: reading goldens, looking up tolerances, comparing tensors.

A golden is a `.json` description plus the `.safetensors` file (and companions) it names; see
`reference/README.md` §2. Every check module returns a list of `Comparison`s.

A golden is read for one run precision and device (`read_golden(path, dtype, device)`): its tensors stay on the CPU
in fp32 as stored, each check moves its models with `cast_model` and its inputs with `Golden.input` to the run's device
and precision, and `compare_golden` judges fp32 runs by the golden's own tolerances and fp16/bf16 runs by the measured
ones of `precision.py`.
"""
from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from tools.reference_data import tensor_file


@dataclass
class Comparison:
    """One compared output: its worst absolute error and whether it is inside the tolerance."""

    name: str
    max_abs: float
    atol: float
    rtol: float
    passed: bool
    note: str = ""
    rel_rms: float | None = None       # ‖a − b‖ / ‖b‖, judged in fp16/bf16 runs only
    rel_rms_tol: float | None = None

    def line(self) -> str:
        verdict = "ok  " if self.passed else "FAIL"
        tol = "exact" if self.atol == 0 and self.rtol == 0 else f"atol {self.atol:g} rtol {self.rtol:g}"
        if self.rel_rms_tol is not None:
            tol += f"; rel_rms {self.rel_rms:.2e} ≤ {self.rel_rms_tol:.2e}"
        extra = f"  ({self.note})" if self.note else ""
        return f"  {verdict} {self.name:<48} max_abs {self.max_abs:.3e}  [{tol}]{extra}"


@dataclass
class Golden:
    """A golden's json description and all its tensors (main file and companions merged)."""

    path: Path
    doc: dict
    tensors: dict[str, torch.Tensor]
    dtype: torch.dtype = torch.float32   # the precision the check runs its models in
    device: torch.device = torch.device("cpu")  # where the check runs its models
    # When a dict: every output handed to compare_golden is recorded here (benchmarks/precision_errors.py).
    produced: dict[str, torch.Tensor] | None = None

    def input(self, name: str, keep_fp32: bool = False) -> torch.Tensor:
        """A stored input on the run's device, float tensors in the run's precision (or fp32 with keep_fp32)."""
        tensor = self.tensors[name].to(self.device)
        return tensor.to(self.dtype) if tensor.is_floating_point() and not keep_fp32 else tensor

    def weights(self, prefix: str = "weights.") -> dict[str, torch.Tensor]:
        """Tensors under `prefix`, with the prefix stripped (the official checkpoint key names)."""
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.tensors.items() if k.startswith(prefix)}


def cast_model(module: torch.nn.Module, golden: Golden) -> torch.nn.Module:
    """The module on the golden's device in its run precision (nn.Module.to: diffusers' own warns on casts)."""
    return torch.nn.Module.to(module, device=golden.device, dtype=golden.dtype)


def read_golden(json_path: Path, dtype: torch.dtype = torch.float32,
                device: str | torch.device = "cpu") -> Golden:
    """A golden's description and tensors (on the CPU, as stored), to be run in `dtype` on `device`."""
    json_path = Path(json_path)
    doc = json.loads(json_path.read_text())
    folder = json_path.parent
    tensors: dict[str, torch.Tensor] = {}
    if doc.get("file"):
        tensors.update(load_file(str(tensor_file(folder, doc["file"]))))
    for companion in (doc.get("companion_files") or {}).values():
        name = companion["file"] if isinstance(companion, dict) else companion
        tensors.update(load_file(str(tensor_file(folder, name))))
    return Golden(json_path, doc, tensors, dtype, torch.device(device))


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
    """Compare against the stored tensor `name`: fp32 runs with that golden's own tolerance, fp16/bf16 runs with
    the measured tolerance of that precision (tools/parity_checks/precision.py)."""
    if golden.produced is not None:
        golden.produced[name] = actual.detach().float().cpu()
    if golden.dtype == torch.float32:
        atol, rtol = tolerance_for(golden.doc, name)
        return compare(name, actual, golden.tensors[name], atol, rtol, note)
    from .precision import compare_reduced

    return compare_reduced(golden, name, actual, note)
