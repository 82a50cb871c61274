#!/usr/bin/env python
"""Peak host memory of loading a full-size Sonic UNet checkpoint: lean (mmap + meta + assign) vs naive.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/load_memory.py            # full size, ~3.15 GB temp file
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/load_memory.py --scale 0.1  # every 10th key, quick
    ... --file-dtype fp32                                                      # like the real fp32 unet.pth
    ... --format safetensors                                                   # a .safetensors file instead

Cases: lean = sonic_model.weights (its own file mapping, casts that hand each source's pages back); library = the
same meta model and assign, with the libraries' own readers (safetensors.torch.load_file / torch.load(mmap=True))
and plain casts; naive = a materialised model and a fully read state dict.

Writes a random checkpoint shaped like the reference manifest (sonic_unet.json), then measures each case in a
fresh subprocess: VmHWM (= ru_maxrss) minus the RSS right before the model is built, after loading and after
reading every weight once (mapped pages only count once touched). Target: lean <= 1.2x the model's size.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tools.process_memory import status_kib  # noqa: E402
from tools.reference_data import MANIFEST_DIR  # noqa: E402

MANIFEST = MANIFEST_DIR / "sonic_unet.json"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
GIB = 2**30


def manifest_shapes(manifest: Path, scale: float) -> dict[str, tuple[int, ...]]:
    """The manifest's keys; with scale < 1 every n-th key (so the size mix stays representative)."""
    shapes = {k: tuple(v) for k, v in json.loads(manifest.read_text()).items()}
    if scale >= 1:
        return shapes
    step = max(1, round(1 / scale))
    return {k: v for i, (k, v) in enumerate(sorted(shapes.items())) if i % step == 0}


class ManifestModule(nn.Module):
    """A module whose state dict has exactly the given dotted names and shapes (no forward)."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype) -> None:
        super().__init__()
        for name, shape in shapes.items():
            *parents, leaf = name.split(".")
            owner: nn.Module = self
            for part in parents:
                if part not in owner._modules:
                    owner.add_module(part, nn.Module())
                owner = owner._modules[part]
            owner.register_parameter(leaf, nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad=False))


def write_checkpoint(shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, path: Path) -> None:
    """Random weights filled in place, chunk-wise, so no full-size fp32 intermediate ever exists."""
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for name, shape in shapes.items():
        t = torch.empty(shape, dtype=dtype)
        flat = t.view(-1)
        for start in range(0, flat.numel(), 1 << 24):
            flat[start:start + (1 << 24)].normal_(0.0, 0.02, generator=gen)
        sd[name] = t
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    del sd
    gc.collect()


# ----------------------------------------------------------------------------------------------------------------
# Child: one measurement per process
# ----------------------------------------------------------------------------------------------------------------


def _real_builder():
    """build_sonic_unet, imported before the baseline is taken (diffusers' import alone is ~0.25 GiB)."""
    try:
        from sonic_model.unet import build_sonic_unet

        return build_sonic_unet
    except Exception as e:  # the benchmark must still run while the model class is in flux
        return e


def _build(
    shapes: dict[str, tuple[int, ...]], builder, device: str, dtype: torch.dtype
) -> tuple[nn.Module, str]:
    if builder is not None:
        try:
            if isinstance(builder, Exception):
                raise builder
            model = builder(device="meta", dtype=dtype)
            got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
            if got == shapes:
                return (model if device == "meta" else model.to_empty(device=device)), "sonic_model.unet"
            note = f"generic (real UNet keys differ from the manifest: {len(set(got) ^ set(shapes))} keys)"
        except Exception as e:
            note = f"generic (build_sonic_unet unavailable: {type(e).__name__}: {str(e)[:80]})"
    else:
        note = "generic"
    with torch.device(device):
        return ManifestModule(shapes, dtype), note


def child(args: argparse.Namespace) -> None:
    from sonic_model.weights import load_weights_into

    shapes = manifest_shapes(Path(args.manifest), args.scale)
    dtype = DTYPES[args.dtype]
    builder = _real_builder() if args.real else None
    gc.collect()
    base_kib = status_kib("VmRSS")
    t0 = time.perf_counter()
    if args.case == "lean":
        model, note = _build(shapes, builder, "meta", dtype)
        load_weights_into(model, args.file, "unet", dtype=dtype)
    elif args.case == "library":  # what the libraries do on their own: no hand-made mapping, no page release
        model, note = _build(shapes, builder, "meta", dtype)
        if args.file.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd = load_file(args.file)
        else:
            sd = torch.load(args.file, map_location="cpu", weights_only=True, mmap=True)
        for key in list(sd):  # one cast at a time, as lean does
            sd[key] = sd[key].to(dtype)
        model.load_state_dict(sd, strict=True, assign=True)
        del sd
        gc.collect()
    else:  # naive: materialised model + a fully read state dict, then a copying load
        model, note = _build(shapes, builder, "cpu", dtype)
        if args.file.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd = load_file(args.file)
        else:
            sd = torch.load(args.file, map_location="cpu", weights_only=True)
        model.load_state_dict(sd, strict=True)
        del sd
        gc.collect()
    load_s = time.perf_counter() - t0
    after_load_kib = status_kib("VmRSS")
    checksum = 0.0
    for p in model.parameters():  # read every weight once, as inference (or a move to the GPU) would
        for chunk in p.detach().reshape(-1).split(1 << 20):  # small chunks: no big fp32 temporary
            checksum += float(chunk.sum(dtype=torch.float32))
    result = {
        "case": args.case,
        "dtype": args.dtype,
        "model": note,
        "base_kib": base_kib,
        "after_load_kib": after_load_kib,
        "after_touch_kib": status_kib("VmRSS"),
        "vmhwm_kib": status_kib("VmHWM"),
        "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "load_s": load_s,
        "checksum": checksum,
        "on_meta": sum(t.is_meta for t in model.state_dict().values()),
    }
    print("RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------------------------------------------
# Parent
# ----------------------------------------------------------------------------------------------------------------


def run_case(args: argparse.Namespace, path: Path, case: str, dtype: str) -> dict:
    cmd = [
        sys.executable, __file__, "--child", case, "--file", str(path), "--dtype", dtype,
        "--scale", str(args.scale), "--manifest", str(args.manifest),
    ]
    if not args.generic and args.scale >= 1:
        cmd.append("--real")
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        raise RuntimeError(f"{case}/{dtype} failed (rc {proc.returncode}):\n{tail}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the manifest's keys (1 = full size)")
    ap.add_argument("--file-dtype", choices=list(DTYPES), default="fp16", help="dtype stored in the temp file")
    ap.add_argument("--targets", default="fp16,bf16", help="comma-separated load dtypes to measure")
    ap.add_argument("--tmpdir", default=None, help="where the temp checkpoint goes (default: system temp)")
    ap.add_argument("--generic", action="store_true", help="never use sonic_model.unet, only the manifest module")
    ap.add_argument("--manifest", default=str(MANIFEST))
    ap.add_argument("--format", choices=["pth", "safetensors"], default="pth", help="the temp file's format")
    ap.add_argument("--child", choices=["lean", "library", "naive"], help=argparse.SUPPRESS)
    ap.add_argument("--file", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", choices=list(DTYPES), help=argparse.SUPPRESS)
    ap.add_argument("--real", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.child:
        args.case = args.child
        child(args)
        return

    shapes = manifest_shapes(Path(args.manifest), args.scale)
    n_params = sum(torch.Size(s).numel() for s in shapes.values())
    tmp = Path(tempfile.mkdtemp(prefix="sonic_load_mem_", dir=args.tmpdir))
    path = tmp / f"unet.{args.format}"
    try:
        t0 = time.perf_counter()
        write_checkpoint(shapes, DTYPES[args.file_dtype], path)
        file_bytes = path.stat().st_size
        print(f"wrote {len(shapes)} tensors, {n_params / 1e6:.1f} M params, {args.file_dtype}: "
              f"{file_bytes / GIB:.2f} GiB in {time.perf_counter() - t0:.0f} s", flush=True)
        rows = []
        for target in args.targets.split(","):
            for case in ("lean", "library", "naive"):
                r = run_case(args, path, case, target)
                rows.append(r)
                print(f"  measured {case} -> {target}: peak +{(r['vmhwm_kib'] - r['base_kib']) / 2**20:.2f} GiB "
                      f"({r['model']})", flush=True)
        report(rows, file_bytes, n_params, f"{args.file_dtype} {args.format}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def report(rows: list[dict], file_bytes: int, n_params: int, file_dtype: str) -> None:
    print(f"\nfile: {file_bytes / GIB:.2f} GiB ({file_dtype}); model: {n_params / 1e6:.1f} M params")
    head = (f"{'case':<7} {'file->target':<12} {'model size':>10} {'+after load':>11} {'+after touch':>12} "
            f"{'+peak (HWM)':>11} {'peak/model':>10} {'abs peak':>9} {'load s':>7}  checksum")
    print(head)
    print("-" * len(head))
    for r in rows:
        model_bytes = n_params * DTYPES[r["dtype"]].itemsize
        gib = lambda kib: kib * 1024 / GIB  # noqa: E731
        peak = r["vmhwm_kib"] - r["base_kib"]
        print(f"{r['case']:<7} {file_dtype.split()[0] + '->' + r['dtype']:<12} {model_bytes / GIB:>8.2f} G "
              f"{gib(r['after_load_kib'] - r['base_kib']):>9.2f} G "
              f"{gib(r['after_touch_kib'] - r['base_kib']):>10.2f} G "
              f"{gib(peak):>9.2f} G {peak * 1024 / model_bytes:>9.2f}x {gib(r['vmhwm_kib']):>7.2f} G "
              f"{r['load_s']:>7.1f}  {r['checksum']:.6g}")
    print("(+ = above the child's RSS right before building the model; abs peak includes the torch import; "
          "ru_maxrss agrees with VmHWM)")
    bad = [r for r in rows if r["case"] == "lean"
           and (r["vmhwm_kib"] - r["base_kib"]) * 1024 > 1.2 * n_params * DTYPES[r["dtype"]].itemsize]
    left = [r for r in rows if r["on_meta"]]
    print("lean target (<= 1.2x model size):", "MET" if not bad else f"MISSED for {[r['dtype'] for r in bad]}")
    if left:
        print("WARNING: tensors left on meta in", [(r["case"], r["dtype"]) for r in left])


if __name__ == "__main__":
    main()
