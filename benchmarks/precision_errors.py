#!/usr/bin/env python
"""How far fp16 and bf16 runs land from fp32, per golden output: the measurement behind the reduced-precision
tolerances of tools/parity_checks/precision.py.

    .venv/bin/python benchmarks/precision_errors.py                 # print the measurement (all goldens, 4 seeds)
    .venv/bin/python benchmarks/precision_errors.py --write         # ... and store it as the tolerance table
    .venv/bin/python benchmarks/precision_errors.py --seeds 2 reference/golden/unet_single_window.json

Each golden runs through its own parity check (tools/parity_checks) in fp32, fp16 and bf16 with the same weights and
inputs; the fp32 run's outputs are the reference. Seed 0 uses the golden's own weights, seed s > 0 every weight
scaled by 1 + 0.25·N(0, 1) (generator seed s): the same networks' family, other numbers. Per output (cases of one
golden pooled) it keeps the worst over seeds of max_rel = max |a − b| / (1 + |b|) and rel_rms = ‖a − b‖ / ‖b‖.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from tools.parity import GOLDEN_CHECKS  # noqa: E402
from tools.parity_checks.common import Golden, read_golden  # noqa: E402
from tools.parity_checks.precision import (  # noqa: E402
    DTYPES, MAX_MULTIPLE, RMS_MULTIPLE, TOLERANCE_FILE, error_stats, output_key)
from tools.reference_data import GOLDEN_DIR  # noqa: E402

REDUCED = ("fp16", "bf16")


def golden_files(paths: list[Path]) -> list[Path]:
    """The given goldens, or every golden of the reference folder; weight companions are skipped."""
    paths = paths or sorted(GOLDEN_DIR.glob("*.json"))
    return [p for p in paths if json.loads(p.read_text()).get("golden_type") in GOLDEN_CHECKS]


def seeded_golden(path: Path, seed: int, dtype: torch.dtype, device: str) -> Golden:
    golden = read_golden(path, dtype, device)
    if seed:
        g = torch.Generator().manual_seed(seed)
        for name in sorted(golden.tensors):
            weight = golden.tensors[name]
            if name.startswith("weights.") and weight.is_floating_point():
                golden.tensors[name] = weight * (1 + 0.25 * torch.randn(weight.shape, generator=g))
    golden.produced = {}
    return golden


def outputs(path: Path, seed: int, dtype: torch.dtype, device: str) -> dict[str, torch.Tensor]:
    """Every output the golden's check hands to compare_golden, from a run in `dtype`."""
    golden = seeded_golden(path, seed, dtype, device)
    module = importlib.import_module(f"tools.parity_checks.{GOLDEN_CHECKS[golden.doc['golden_type']]}")
    with torch.no_grad():
        module.run(golden)
    return golden.produced


def measure(paths: list[Path], seeds: int, device: str) -> dict:
    """{dtype: {golden_type: {output key: {"max_rel", "rel_rms"}}}}, the worst over seeds and cases."""
    measured: dict = {d: {} for d in REDUCED}
    for path in paths:
        kind = json.loads(path.read_text())["golden_type"]
        doc = json.loads(path.read_text())
        for seed in range(seeds):
            start = time.perf_counter()
            reference = outputs(path, seed, torch.float32, device)
            for dtype in REDUCED:
                table = measured[dtype].setdefault(kind, {})
                for name, actual in outputs(path, seed, DTYPES[dtype], device).items():
                    _, max_rel, rel_rms = error_stats(actual, reference[name])
                    entry = table.setdefault(output_key(doc, name), {"max_rel": 0.0, "rel_rms": 0.0})
                    entry["max_rel"] = max(entry["max_rel"], max_rel)
                    entry["rel_rms"] = max(entry["rel_rms"], rel_rms)
            print(f"{path.name} seed {seed}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return measured


def report(measured: dict) -> list[str]:
    lines = [f"| golden | output | fp16 max_rel | fp16 rel_rms | bf16 max_rel | bf16 rel_rms | "
             f"bf16/fp16 rms |", "|---|---|---|---|---|---|---|"]
    for kind in sorted(measured["fp16"]):
        for key in sorted(measured["fp16"][kind]):
            half, brain = measured["fp16"][kind][key], measured["bf16"][kind][key]
            ratio = brain["rel_rms"] / half["rel_rms"] if half["rel_rms"] else float("nan")
            lines.append(f"| {kind} | {key} | {half['max_rel']:.2e} | {half['rel_rms']:.2e} | "
                         f"{brain['max_rel']:.2e} | {brain['rel_rms']:.2e} | {ratio:.1f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", type=Path, help="golden .json files (default: every golden)")
    parser.add_argument("--seeds", type=int, default=4, help="seed 0 = the golden's weights, then perturbed copies")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--write", action="store_true", help=f"store the measurement in {TOLERANCE_FILE.name}")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    paths = golden_files(args.files)
    measured = measure(paths, args.seeds, args.device)
    print(f"fp16/bf16 vs fp32, worst over {args.seeds} seeds; torch {torch.__version__} on {args.device}")
    print("\n".join(report(measured)))
    print(f"tolerance = {MAX_MULTIPLE:g} x max_rel and {RMS_MULTIPLE:g} x rel_rms (not below the unit roundoff)")
    if args.write:
        old = json.loads(TOLERANCE_FILE.read_text()) if TOLERANCE_FILE.exists() else {"measured": {}}
        for dtype, kinds in measured.items():  # goldens not measured this time keep their entries
            old["measured"].setdefault(dtype, {}).update(kinds)
        old["how"] = (f"benchmarks/precision_errors.py --seeds {args.seeds}: worst over seeds of fp16/bf16 vs fp32 "
                      f"on {args.device}, torch {torch.__version__}, {platform.machine()}")
        TOLERANCE_FILE.write_text(json.dumps(old, indent=1, sort_keys=True) + "\n")
        print(f"wrote {TOLERANCE_FILE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
