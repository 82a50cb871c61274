"""Tolerances of fp16 and bf16 runs against the fp32 goldens, derived from measurement.

The golden tolerances (`reference/README.md` §4) are for float32. A half-precision run differs from them by its own
rounding, so its tolerance comes from measuring that rounding: `benchmarks/precision_errors.py --write` runs every
golden in fp32, fp16 and bf16 over several seeds (the golden's own weights and copies with every weight scaled by
1 + 0.25·N(0, 1)) and stores, per output, the worst of two statistics in `precision_tolerances.json`:

* max_rel = max over elements of |a − b| / (1 + |b|): one element gone astray (an overflow, a bad cast of one row);
* rel_rms = ‖a − b‖ / ‖b‖: the whole output a little further off (a block in a lower precision, no fp32
  accumulation). It varies little between inputs, so its tolerance can sit close to the measurement.

The tolerance is MAX_MULTIPLE × the worst max_rel and RMS_MULTIPLE × the worst rel_rms, never below one rounding of
the output to the run's precision (its unit roundoff).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .common import Comparison, Golden

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOLERANCE_FILE = Path(__file__).with_name("precision_tolerances.json")
MAX_MULTIPLE = 3.0
RMS_MULTIPLE = 1.5


@dataclass(frozen=True)
class ReducedTolerance:
    max_rel: float
    rel_rms: float


def dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, d in DTYPES.items() if d == dtype)


def output_key(doc: dict, name: str) -> str:
    """`<case>.out.sample` → `*.out.sample`: one measured tolerance for every case of a golden."""
    head, _, rest = name.partition(".")
    cases = set(doc.get("cases") or ()) | ({"sequence"} if "sequence" in doc else set())
    return f"*.{rest}" if rest and head in cases else name


def error_stats(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, float, float]:
    """(max_abs, max_rel, rel_rms) of `actual` against `expected`, in float64 on the CPU."""
    a = actual.detach().to(torch.float64).cpu()
    b = expected.detach().to(torch.float64).cpu()
    diff = (a - b).abs()
    if not diff.numel():
        return 0.0, 0.0, 0.0
    norm = float(b.norm())
    rel_rms = float(diff.norm()) / norm if norm else float(diff.norm())
    return float(diff.max()), float((diff / (1 + b.abs())).max()), rel_rms


def _load_table() -> dict:
    return json.loads(TOLERANCE_FILE.read_text()) if TOLERANCE_FILE.exists() else {"measured": {}}


def reduced_tolerance(golden: Golden, name: str) -> ReducedTolerance | None:
    """The tolerance of output `name` in the golden's run precision; None when it was never measured."""
    kind = golden.doc["golden_type"]
    dtype = dtype_name(golden.dtype)
    measured = _load_table()["measured"].get(dtype, {}).get(kind, {}).get(output_key(golden.doc, name))
    if measured is None:
        return None
    roundoff = torch.finfo(golden.dtype).eps / 2
    return ReducedTolerance(max(MAX_MULTIPLE * measured["max_rel"], roundoff),
                            max(RMS_MULTIPLE * measured["rel_rms"], roundoff))


def compare_reduced(golden: Golden, name: str, actual: torch.Tensor, note: str = "") -> Comparison:
    """|a − b| ≤ t·(1 + |b|) everywhere and ‖a − b‖/‖b‖ ≤ t_rms, with the measured t of this run precision."""
    expected = golden.tensors[name]
    tol = reduced_tolerance(golden, name)
    if tol is None:
        return Comparison(name, float("inf"), 0.0, 0.0, False,
                          f"no measured {dtype_name(golden.dtype)} tolerance for "
                          f"{golden.doc['golden_type']} {output_key(golden.doc, name)}: "
                          "run benchmarks/precision_errors.py --write")
    if tuple(actual.shape) != tuple(expected.shape):
        return Comparison(name, float("inf"), tol.max_rel, tol.max_rel, False,
                          f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    max_abs, max_rel, rel_rms = error_stats(actual, expected)
    finite = bool(torch.isfinite(actual).all())
    if not finite:
        note = (note + "; " if note else "") + "non-finite values"
    passed = finite and max_rel <= tol.max_rel and rel_rms <= tol.rel_rms
    return Comparison(name, max_abs, tol.max_rel, tol.max_rel, passed, note, rel_rms, tol.rel_rms)
