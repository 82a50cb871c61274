#!/usr/bin/env python
"""Check our implementation against the official Sonic reference data (reference/, see its README.md).

    .venv/bin/python tools/parity.py reference/golden/*.json reference/manifest/*.json
    .venv/bin/python tools/parity.py --dtype bf16 --device cuda reference/golden/*.json

Each file is dispatched on its own description: a golden's `golden_type` field, or, for a key manifest
(`{"key": [shape]}`), on which model its key set belongs to. Prints the max-abs error of every output against the
stored one and exits 1 if any exceeds the golden's recommended tolerance (2 if a file cannot be read at all).
`.safetensors` paths are mapped to their same-stem `.json`.

--dtype fp16|bf16 runs every model in that precision and judges the outputs by the tolerances measured for it
(tools/parity_checks/precision.py; fp32 keeps the golden's own). --device runs on another torch device, with TF32 off
as the reference data's tolerances ask. Key manifests are shapes only: the same check in every precision.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from tools.parity_checks.common import Comparison, read_golden  # noqa: E402
from tools.parity_checks.precision import DTYPES  # noqa: E402

# golden_type -> module in tools/parity_checks exposing run(golden) -> list[Comparison]
GOLDEN_CHECKS = {
    "audio2token": "audio_adapters",
    "audio2bucket": "audio_adapters",
    "whisper_windows": "whisper",
    "unet_single_window": "unet",
    "shift_fusion_pipeline": "pipeline",
    "rife": "rife",
}


def _json_for(path: Path) -> Path:
    return path.with_suffix(".json") if path.suffix == ".safetensors" else path


def check_file(path: Path, dtype: str = "fp32", device: str = "cpu") -> tuple[str, list[Comparison]]:
    """Returns (a one-line description of what was checked, comparisons). Empty comparisons = nothing to check."""
    path = _json_for(Path(path))
    doc = json.loads(path.read_text())
    if isinstance(doc, dict) and "golden_type" in doc:
        kind = doc["golden_type"]
        if kind == "weights":
            return f"{path.name}: weights companion of {doc.get('weights_of')} (read with its golden)", []
        if kind not in GOLDEN_CHECKS:
            raise SystemExit(f"{path}: unknown golden_type {kind!r}; known: {', '.join(sorted(GOLDEN_CHECKS))}")
        module = importlib.import_module(f"tools.parity_checks.{GOLDEN_CHECKS[kind]}")
        golden = read_golden(path, DTYPES[dtype], device)
        return f"{path.name}: golden {kind} ({dtype} on {device})", module.run(golden)
    from tools.parity_checks import manifest

    model = manifest.identify(doc)
    if model is None:
        return f"{path.name}: not a golden or a key manifest (nothing to compare)", []
    return f"{path.name}: key manifest of {model}", manifest.run(model, doc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, help="golden .json/.safetensors files or key manifests")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                        help="precision of every model (fp16/bf16: measured tolerances)")
    parser.add_argument("--device", default="cpu", help="torch device to run on, e.g. cuda")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            print(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
            return 2
        # the goldens' tolerances are for true fp32 (`reference/README.md` §4)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    failed = 0
    seen: set[Path] = set()
    for file in args.files:
        target = _json_for(file).resolve()
        if target in seen:
            continue
        seen.add(target)
        if not target.exists():
            print(f"{file}: no such file (a .safetensors golden needs its same-stem .json beside it)")
            return 2
        title, comparisons = check_file(target, args.dtype, args.device)
        print(title)
        for comparison in comparisons:
            print(comparison.line())
            failed += not comparison.passed
    print(f"parity: {failed} output(s) outside tolerance" if failed else "parity: all outputs within tolerance")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
