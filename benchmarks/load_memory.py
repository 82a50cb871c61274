#!/usr/bin/env python
"""Host memory of loading a full-size Sonic UNet checkpoint: Sonic's reader vs the libraries' own, per tensor.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/load_memory.py --file-dtype fp32 --tmpdir /tmp  # unet.pth's shape
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/load_memory.py --scale 0.1   # every 10th key, quick
    ... --cases lean,safe_open,torch_mmap,naive                               # naive: model + whole file in memory

Cases, each in a fresh subprocess, all but naive casting one tensor at a time and assigning into a meta-device model:
  lean        sonic_model.weights.weights.load_weights_into, what the pack loads with
  safe_open   safetensors.safe_open on a .safetensors file: get_tensor(key).to(dtype) per key, one assign=True load
  torch_mmap  torch.load(mmap=True, weights_only=True) on a .pth file: the same per-key cast and load
  naive       a materialised model and a fully read state dict (no mapping), a copying load

Writes random checkpoints shaped like the reference manifest (sonic_unet.json): a .pth (lean reads the --format
file, .pth by default like the real unet.pth) and, where safe_open runs, a .safetensors file. Reports anonymous
memory (RssAnon: what the process itself holds; a mapping's file pages are page cache the kernel reclaims) above the
child's value right before the model is built: its peak (sampled every millisecond and after every tensor), after
loading and after reading every weight once; RssFile and VmHWM (which counts file pages too) beside it.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tools.process_memory import AnonPeak, status_kib  # noqa: E402
from tools.reference_data import MANIFEST_DIR  # noqa: E402

MANIFEST = MANIFEST_DIR / "sonic_unet.json"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ST_CODES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
CASES = ("lean", "safe_open", "torch_mmap", "naive")
LIBRARY_CASES = ("safe_open", "torch_mmap")
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


# ----------------------------------------------------------------------------------------------------------------
# Writing the checkpoints
# ----------------------------------------------------------------------------------------------------------------


def random_tensors(shapes: dict[str, tuple[int, ...]], dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """Random weights filled in place, chunk-wise, so no full-size fp32 intermediate ever exists."""
    gen = torch.Generator().manual_seed(0)
    for name, shape in shapes.items():
        t = torch.empty(shape, dtype=dtype)
        flat = t.view(-1)
        for start in range(0, flat.numel(), 1 << 24):
            flat[start:start + (1 << 24)].normal_(0.0, 0.02, generator=gen)
        yield name, t


def write_pth(shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, path: Path) -> None:
    """A plain state-dict pickle like unet.pth; torch.save needs the whole dict in memory (run in a subprocess)."""
    torch.save(dict(random_tensors(shapes, dtype)), path)


def write_safetensors(shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, path: Path) -> None:
    """The header, then each tensor's bytes as it is drawn: safetensors' save_file turns every tensor into bytes
    first, which at full size would hold the file twice in memory."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": ST_CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for _, t in random_tensors(shapes, dtype):
            f.write(t.reshape(-1).view(torch.uint8).numpy().data)


# ----------------------------------------------------------------------------------------------------------------
# Child: one measurement per process
# ----------------------------------------------------------------------------------------------------------------


def _real_builder():
    """build_sonic_unet, imported before the baseline is taken (diffusers' import alone is ~0.25 GiB)."""
    try:
        from sonic_model.unet.unet import build_sonic_unet

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
                return (model if device == "meta" else model.to_empty(device=device)), "sonic_model.unet.unet"
            note = f"generic (real UNet keys differ from the manifest: {len(set(got) ^ set(shapes))} keys)"
        except Exception as e:
            note = f"generic (build_sonic_unet unavailable: {type(e).__name__}: {str(e)[:80]})"
    else:
        note = "generic"
    with torch.device(device):
        return ManifestModule(shapes, dtype), note


def load_safe_open(model: nn.Module, file: str, dtype: torch.dtype, peak: AnonPeak) -> None:
    from safetensors import safe_open

    sd = {}
    with safe_open(file, framework="pt") as f:
        for key in f.keys():
            sd[key] = f.get_tensor(key).to(dtype)  # a view of the file's mapping, cast: only the cast is anonymous
            peak.sample()
    model.load_state_dict(sd, strict=True, assign=True)


def load_torch_mmap(model: nn.Module, file: str, dtype: torch.dtype, peak: AnonPeak) -> None:
    source = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    sd = {}
    for key in list(source):
        sd[key] = source.pop(key).to(dtype)
        peak.sample()
    model.load_state_dict(sd, strict=True, assign=True)


def child(args: argparse.Namespace) -> None:
    from sonic_model.weights.weights import load_weights_into

    shapes = manifest_shapes(Path(args.manifest), args.scale)
    dtype = DTYPES[args.dtype]
    builder = _real_builder() if args.real else None
    gc.collect()
    base = {field: status_kib(field) for field in ("VmRSS", "RssAnon", "RssFile")}
    t0 = time.perf_counter()
    with AnonPeak() as peak:
        if args.case == "naive":  # a materialised model and a fully read state dict, then a copying load
            model, note = _build(shapes, builder, "cpu", dtype)
            sd = torch.load(args.file, map_location="cpu", weights_only=True)
            model.load_state_dict(sd, strict=True)
            del sd
        else:
            model, note = _build(shapes, builder, "meta", dtype)
            loader = {"lean": lambda m, f, d, p: load_weights_into(m, f, "unet", dtype=d),
                      "safe_open": load_safe_open, "torch_mmap": load_torch_mmap}[args.case]
            loader(model, args.file, dtype, peak)
        gc.collect()
    load_s = time.perf_counter() - t0
    after_load = {field: status_kib(field) for field in ("RssAnon", "RssFile")}
    checksum = 0.0
    for p in model.parameters():  # read every weight once, as inference (or a move to the GPU) would
        for chunk in p.detach().reshape(-1).split(1 << 20):  # small chunks: no big fp32 temporary
            checksum += float(chunk.sum(dtype=torch.float32))
    result = {
        "case": args.case, "dtype": args.dtype, "model": note, "file": Path(args.file).suffix,
        "base_anon_kib": base["RssAnon"], "peak_anon_kib": peak.peak_kib,
        "after_load_anon_kib": after_load["RssAnon"], "after_touch_anon_kib": status_kib("RssAnon"),
        "after_load_file_kib": after_load["RssFile"] - base["RssFile"],
        "vmhwm_above_kib": status_kib("VmHWM") - base["VmRSS"],
        "load_s": load_s, "checksum": checksum,
        "on_meta": sum(t.is_meta for t in model.state_dict().values()),
    }
    print("RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------------------------------------------
# Parent
# ----------------------------------------------------------------------------------------------------------------


def _python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def run_case(args: argparse.Namespace, path: Path, case: str, dtype: str) -> dict:
    cmd = ["--child", case, "--file", str(path), "--dtype", dtype, "--scale", str(args.scale),
           "--manifest", str(args.manifest)]
    if not args.generic and args.scale >= 1:
        cmd.append("--real")
    proc = _python(*cmd)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{case}/{dtype} failed (rc {proc.returncode}):\n{proc.stdout[-2000:]}\n"
                           f"{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def files_for(cases: list[str], lean_format: str) -> set[str]:
    """Which checkpoint formats the chosen cases read."""
    need = {"safe_open": "safetensors", "torch_mmap": "pth", "naive": "pth", "lean": lean_format}
    return {need[c] for c in cases}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the manifest's keys (1 = full size)")
    ap.add_argument("--file-dtype", choices=list(DTYPES), default="fp32", help="dtype stored in the temp files")
    ap.add_argument("--targets", default="fp16", help="comma-separated load dtypes to measure")
    ap.add_argument("--cases", default="lean,safe_open,torch_mmap", help=f"comma-separated, of {', '.join(CASES)}")
    ap.add_argument("--tmpdir", default=None, help="where the temp checkpoints go (default: system temp)")
    ap.add_argument("--generic", action="store_true", help="never use sonic_model.unet.unet, only the manifest module")
    ap.add_argument("--manifest", default=str(MANIFEST))
    ap.add_argument("--format", choices=["pth", "safetensors"], default="pth", help="the file lean reads")
    ap.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    ap.add_argument("--write", choices=["pth", "safetensors"], help=argparse.SUPPRESS)
    ap.add_argument("--file", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", choices=list(DTYPES), help=argparse.SUPPRESS)
    ap.add_argument("--real", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    shapes = manifest_shapes(Path(args.manifest), args.scale)
    if args.child:
        args.case = args.child
        child(args)
        return
    if args.write:
        writer = write_pth if args.write == "pth" else write_safetensors
        writer(shapes, DTYPES[args.file_dtype], Path(args.file))
        return

    cases = args.cases.split(",")
    n_params = sum(math.prod(s) for s in shapes.values())
    tmp = Path(tempfile.mkdtemp(prefix="sonic_load_mem_", dir=args.tmpdir))
    try:
        paths = {}
        for fmt in sorted(files_for(cases, args.format)):
            paths[fmt], t0 = tmp / f"unet.{fmt}", time.perf_counter()
            done = _python("--write", fmt, "--file", str(paths[fmt]), "--file-dtype", args.file_dtype,
                           "--scale", str(args.scale), "--manifest", str(args.manifest))
            if done.returncode != 0:
                raise RuntimeError(f"writing {fmt} failed:\n{done.stderr[-4000:]}")
            print(f"wrote {paths[fmt].name}: {len(shapes)} tensors, {n_params / 1e6:.1f} M params, "
                  f"{args.file_dtype}, {paths[fmt].stat().st_size / GIB:.2f} GiB in {time.perf_counter() - t0:.0f} s",
                  flush=True)
        rows = []
        for target in args.targets.split(","):
            for case in cases:
                fmt = args.format if case == "lean" else files_for([case], args.format).pop()
                rows.append(run_case(args, paths[fmt], case, target))
                r = rows[-1]
                print(f"  measured {case} ({fmt}) -> {target}: peak RssAnon "
                      f"+{(r['peak_anon_kib'] - r['base_anon_kib']) / 2**20:.2f} GiB ({r['model']})", flush=True)
        report(rows, n_params, args.file_dtype)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def report(rows: list[dict], n_params: int, file_dtype: str) -> None:
    print(f"\nmodel: {n_params / 1e6:.1f} M params; files {file_dtype}; all figures GiB above the child's value right "
          "before the model is built")
    head = (f"{'case':<10} {'file':<17} {'->':<5} {'model':>6} {'anon peak':>9} {'anon load':>9} {'anon touch':>10} "
            f"{'file pages':>10} {'VmHWM':>6} {'load s':>7}  checksum")
    print(head)
    print("-" * len(head))
    gib = lambda kib: kib * 1024 / GIB  # noqa: E731
    for r in rows:
        model_bytes = n_params * DTYPES[r["dtype"]].itemsize
        print(f"{r['case']:<10} {file_dtype + ' ' + r['file']:<17} {r['dtype']:<5} {model_bytes / GIB:>6.2f} "
              f"{gib(r['peak_anon_kib'] - r['base_anon_kib']):>9.2f} "
              f"{gib(r['after_load_anon_kib'] - r['base_anon_kib']):>9.2f} "
              f"{gib(r['after_touch_anon_kib'] - r['base_anon_kib']):>10.2f} {gib(r['after_load_file_kib']):>10.2f} "
              f"{gib(r['vmhwm_above_kib']):>6.2f} {r['load_s']:>7.1f}  {r['checksum']:.6g}")
    for target in dict.fromkeys(r["dtype"] for r in rows):
        peaks = {r["case"]: r["peak_anon_kib"] - r["base_anon_kib"] for r in rows if r["dtype"] == target}
        for case in LIBRARY_CASES:
            if "lean" in peaks and case in peaks:
                print(f"{case} vs lean -> {target}: {100 * (peaks[case] / peaks['lean'] - 1):+.1f} % peak RssAnon")
    left = [r for r in rows if r["on_meta"]]
    if left:
        print("WARNING: tensors left on meta in", [(r["case"], r["dtype"]) for r in left])


if __name__ == "__main__":
    main()
