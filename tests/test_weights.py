"""Weight loading: mmap + per-tensor cast round trips, strict-mismatch messages, bad files, file recognition."""
from __future__ import annotations

import gc
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from sonic_model.weights.file_signatures import NO_MATCH, identify_kind, sniff_container
from sonic_model.weights.weights import WeightFileError, load_weights_into, read_state_dict
from tools.process_memory import AnonPeak

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TinyAudio2Token(nn.Module):
    """Same structure as Sonic's audio2token (proj1/2/3 + LayerNorm), tiny sizes."""

    def __init__(self, d_in: int = 12, hidden: int = 8, tokens: int = 4, dim: int = 6) -> None:
        super().__init__()
        self.proj1 = nn.Linear(d_in, hidden)
        self.proj2 = nn.Linear(hidden, hidden)
        self.proj3 = nn.Linear(hidden, tokens * dim)
        self.norm = nn.LayerNorm(dim)


class TinyAudio2Bucket(nn.Module):
    def __init__(self, d_in: int = 20, hidden: int = 8) -> None:
        super().__init__()
        self.proj1 = nn.Linear(d_in, hidden)
        self.proj2 = nn.Linear(hidden, hidden)
        self.proj3 = nn.Linear(hidden, 2)


class TinyMixed(nn.Module):
    """A legacy-constructor scalar (real even under meta, like diffusers' mix_factor), a buffer, an int buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 3)
        self.mix_factor = nn.Parameter(torch.Tensor([0.5]))
        self.register_buffer("scale", torch.ones(3))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))


def _meta(cls: type[nn.Module], **kw) -> nn.Module:
    with torch.device("meta"):
        return cls(**kw)


def _random_sd(module_cls: type[nn.Module], seed: int = 0, **kw) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    sd = module_cls(**kw).state_dict()
    for v in sd.values():
        if v.is_floating_point():
            v.normal_()
    return {k: v.clone() for k, v in sd.items()}


def _save(sd: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)
    return path


def _file_mappings(path: Path) -> list[tuple[int, int]]:
    """Address ranges where this process maps `path` (from /proc/self/maps)."""
    st, ranges = os.stat(path), []
    with open("/proc/self/maps") as maps:
        for parts in (line.split(None, 5) for line in maps):
            device = tuple(int(x, 16) for x in parts[3].split(":"))
            if device == (os.major(st.st_dev), os.minor(st.st_dev)) and int(parts[4]) == st.st_ino:
                ranges.append(tuple(int(x, 16) for x in parts[0].split("-")))
    return ranges


def _inside_file_mapping(t: torch.Tensor, path: Path) -> bool:
    return any(lo <= t.data_ptr() < hi for lo, hi in _file_mappings(path))


# ---------------------------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("file_dtype", list(DTYPES))
@pytest.mark.parametrize("target", list(DTYPES))
def test_round_trip_mmap_and_cast(tmp_path: Path, suffix: str, file_dtype: str, target: str) -> None:
    ref = {k: v.to(DTYPES[file_dtype]) for k, v in _random_sd(TinyAudio2Token).items()}
    path = _save(ref, tmp_path / f"audio2token{suffix}")
    module = load_weights_into(_meta(TinyAudio2Token), path, "audio2token", dtype=DTYPES[target])
    got = module.state_dict()
    assert set(got) == set(ref)
    for k, v in ref.items():
        assert got[k].dtype == DTYPES[target] and got[k].device.type == "cpu"
        assert torch.equal(got[k], v.to(DTYPES[target])), k
        # Same dtype: a view of the mapped file (no copy); otherwise a fresh cast tensor.
        assert _inside_file_mapping(got[k], path) == (file_dtype == target), k
    out = module.proj1(torch.ones(2, 12, dtype=DTYPES[target]))
    assert out.shape == (2, 8)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_read_state_dict_casts_floats_only(tmp_path: Path, suffix: str) -> None:
    sd = {"w": torch.randn(4, 3), "idx": torch.arange(5), "h": torch.randn(7).half()}
    path = _save(sd, tmp_path / f"x{suffix}")
    got = read_state_dict(path, dtype=torch.bfloat16)
    assert got["w"].dtype == torch.bfloat16 and torch.equal(got["w"], sd["w"].bfloat16())
    assert got["h"].dtype == torch.bfloat16 and torch.equal(got["h"], sd["h"].bfloat16())
    assert got["idx"].dtype == torch.int64 and torch.equal(got["idx"], sd["idx"])
    plain = read_state_dict(path)
    assert {k: v.dtype for k, v in plain.items()} == {k: v.dtype for k, v in sd.items()}


def test_mixed_dtype_file_kept_views_survive_released_neighbours(tmp_path: Path) -> None:
    """Casting the fp32 tensors of a mixed file leaves its fp16 views, neighbours on the same pages, intact."""
    torch.manual_seed(1)
    sd = {f"t{i:02d}": (torch.randn(37) if i % 2 else torch.randn(53).half()) for i in range(40)}
    for suffix in (".pth", ".safetensors"):
        path = _save(sd, tmp_path / f"mixed{suffix}")
        got = read_state_dict(path, dtype=torch.float16)
        for k, v in sd.items():
            assert torch.equal(got[k], v.half()), (suffix, k)
        assert all(got[k].sum().isfinite() for k in got)


# Floats per tensor: every allocation (also the fp16 casts, 48 MiB) is above glibc's largest mmap threshold (32 MiB),
# so each is fresh anonymous memory that RssAnon sees. Measured in a fresh process: in the suite's, what earlier
# tests did to the allocator (freed heap, thresholds libraries set) can hide the control's copy.
BIG = 24 << 20
_MEASURE = """
import gc, sys, torch
from sonic_model.weights.weights import read_state_dict
from tools.process_memory import AnonPeak
path, control = sys.argv[1], sys.argv[2] == "control"
gc.collect()
with AnonPeak() as peak:
    if not control:
        got = read_state_dict(path, dtype=torch.float16)
        assert got["w1"].dtype == torch.float16
    elif path.endswith(".pth"):
        got = {k: v.half() for k, v in torch.load(path, weights_only=True).items()}
    else:
        from safetensors.torch import load
        with open(path, "rb") as f:
            got = {k: v.half() for k, v in load(f.read()).items()}
print(peak.grown_kib)
"""


def _grown_kib(path: Path, control: bool) -> int:
    import subprocess
    import sys

    from conftest import REPO

    done = subprocess.run([sys.executable, "-c", _MEASURE, str(path), "control" if control else "sonic"], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_cast_load_holds_only_its_result(tmp_path: Path, suffix: str) -> None:
    """192 MiB fp32 -> fp16: at its peak the process holds the 96 MiB of results, never its own copy of the source
    (the full-size figures: benchmarks/RESULTS.md, 2026-12-07). A full read, the control, does hold one."""
    path = _save({f"w{i}": torch.randn(BIG) for i in range(2)}, tmp_path / f"big{suffix}")
    cast_kib = 2 * BIG * 2 // 1024
    assert _grown_kib(path, control=False) < 1.25 * cast_kib
    grown = _grown_kib(path, control=True)
    assert grown > 2 * cast_kib, grown


def test_legacy_pickle_checkpoint_loads(tmp_path: Path) -> None:
    ref = _random_sd(TinyAudio2Bucket)
    path = tmp_path / "audio2bucket.pth"
    torch.save(ref, path, _use_new_zipfile_serialization=False)
    module = load_weights_into(_meta(TinyAudio2Bucket), path, "audio2bucket", dtype=torch.float16)
    assert torch.equal(module.proj3.weight, ref["proj3.weight"].half())


def test_wrapper_dict_and_prefix_are_unwrapped(tmp_path: Path) -> None:
    ref = _random_sd(TinyAudio2Bucket)
    path = _save({"state_dict": {f"module.{k}": v for k, v in ref.items()}}, tmp_path / "flownet.pkl")
    assert torch.equal(read_state_dict(path)["module.proj1.weight"], ref["proj1.weight"])
    # DataParallel's "module." stays (RIFE strips it itself): every key is unexpected and the message says so.
    with pytest.raises(WeightFileError, match="6 missing, 6 unexpected"):
        load_weights_into(_meta(TinyAudio2Bucket), path, "rife")


def test_nothing_left_on_meta_and_real_scalars_replaced(tmp_path: Path) -> None:
    ref = _random_sd(TinyMixed)
    ref["mix_factor"] = torch.tensor([0.25])
    ref["steps"] = torch.tensor(7)
    path = _save(ref, tmp_path / "mixed.pth")
    module = _meta(TinyMixed)
    assert not module.mix_factor.is_meta and module.lin.weight.is_meta
    load_weights_into(module, path, "a tiny test model", dtype=torch.bfloat16)
    tensors = dict([*module.named_parameters(), *module.named_buffers()])
    assert not any(t.is_meta for t in tensors.values())
    assert module.mix_factor.dtype == torch.bfloat16 and module.mix_factor.item() == 0.25
    assert module.steps.dtype == torch.int64 and module.steps.item() == 7
    assert isinstance(module.mix_factor, nn.Parameter) and module.mix_factor.requires_grad


def test_non_persistent_meta_buffer_is_reported(tmp_path: Path) -> None:
    path = _save(_random_sd(TinyAudio2Bucket), tmp_path / "audio2bucket.pth")
    module = _meta(TinyAudio2Bucket)
    module.register_buffer("cache", torch.empty(3, device="meta"), persistent=False)
    with pytest.raises(RuntimeError, match="meta device.*cache"):
        load_weights_into(module, path, "audio2bucket")


def test_materialised_module_is_loaded_too(tmp_path: Path) -> None:
    ref = _random_sd(TinyAudio2Token, seed=3)
    path = _save(ref, tmp_path / "audio2token.pth")
    module = TinyAudio2Token()
    load_weights_into(module, path, "audio2token")
    assert torch.equal(module.norm.weight, ref["norm.weight"])


# ---------------------------------------------------------------------------------------------------------------
# Strict mismatch messages
# ---------------------------------------------------------------------------------------------------------------


def test_missing_unexpected_and_wrong_shape_are_counted(tmp_path: Path) -> None:
    sd = _random_sd(TinyAudio2Token)
    del sd["norm.bias"]
    sd["extra.weight"] = torch.zeros(2)
    sd["proj2.weight"] = torch.zeros(8, 9)
    path = _save(sd, tmp_path / "my_audio2token.pth")
    with pytest.raises(WeightFileError) as err:
        load_weights_into(_meta(TinyAudio2Token), path, "audio2token")
    msg = str(err.value)
    assert "my_audio2token.pth" in msg
    assert "expected the Sonic audio2token weights (audio2token.pth)" in msg
    assert "1 missing, 1 unexpected and 1 wrong-shape keys" in msg and NO_MATCH in msg
    assert "norm.bias" in msg and "extra.weight" in msg and "proj2.weight: file [8, 9] vs model [8, 8]" in msg


def test_same_kind_other_size_is_named(tmp_path: Path) -> None:
    path = _save(_random_sd(TinyAudio2Token, hidden=16), tmp_path / "audio2token.pth")
    with pytest.raises(WeightFileError, match="looks like the Sonic audio2token weights.*different model size"):
        load_weights_into(_meta(TinyAudio2Token), path, "audio2token")


def test_file_in_the_wrong_slot_is_recognised(tmp_path: Path) -> None:
    path = _save(_random_sd(TinyAudio2Bucket), tmp_path / "audio2token.pth")  # misnamed on purpose
    with pytest.raises(WeightFileError) as err:
        load_weights_into(_meta(TinyAudio2Token), path, "audio2token", dtype=torch.float16)
    msg = str(err.value)
    assert "looks like the Sonic audio2bucket weights (audio2bucket.pth)" in msg
    assert "expected the Sonic audio2token weights" in msg and str(path) in msg


# ---------------------------------------------------------------------------------------------------------------
# Bad files
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_checkpoint(tmp_path: Path, legacy: bool) -> None:
    good = _save(_random_sd(TinyAudio2Token), tmp_path / "good.pth")
    if legacy:
        torch.save(_random_sd(TinyAudio2Token), good, _use_new_zipfile_serialization=False)
    data = good.read_bytes()
    cut = tmp_path / "unet.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightFileError, match=r"unet\.pth is truncated or corrupt \(\d+ bytes; expected a PyTorch"):
        read_state_dict(cut)
    with pytest.raises(WeightFileError, match="download it again"):
        load_weights_into(_meta(TinyAudio2Token), cut, "audio2token")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_code_carrying_pickle_is_refused(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "audio2token.pth"
    payload = {"proj1.weight": _Evil(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with path.open("wb") as f:
            pickle.dump(payload, f)
    with pytest.raises(WeightFileError, match="contains Python code/objects.*refused for safety"):
        read_state_dict(path)
    with pytest.raises(WeightFileError, match="audio2token.pth contains Python code"):
        load_weights_into(_meta(TinyAudio2Token), path, "audio2token")
    assert not marker.exists()


def test_bad_safetensors_header(tmp_path: Path) -> None:
    garbage = tmp_path / "unet.safetensors"
    garbage.write_bytes(b"\xff" * 100)
    with pytest.raises(WeightFileError, match=r"unet\.safetensors is not a valid safetensors file"):
        read_state_dict(garbage)
    broken_json = tmp_path / "b.safetensors"
    broken_json.write_bytes((20).to_bytes(8, "little") + b'{"a": {"dtype": "F3' + b" " * 40)
    with pytest.raises(WeightFileError, match="not a valid safetensors file"):
        read_state_dict(broken_json)
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode()
    header += b" " * (-len(header) % 8)
    too_short = tmp_path / "short.safetensors"  # 4 floats announced, 8 bytes stored
    too_short.write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))
    with pytest.raises(WeightFileError, match=r"short\.safetensors is not a valid safetensors file \(.*invalid shape"):
        read_state_dict(too_short)
    good = _save(_random_sd(TinyAudio2Token), tmp_path / "good.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(WeightFileError, match="cut.safetensors is not a valid safetensors file"):
        load_weights_into(_meta(TinyAudio2Token), cut, "audio2token")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(WeightFileError, match=rf"not found: .*unet\.pth\. Put unet\.pth .* in {tmp_path}"):
        load_weights_into(_meta(TinyAudio2Token), tmp_path / "unet.pth", "unet")
    with pytest.raises(WeightFileError, match="not found"):
        read_state_dict(tmp_path / "nope.safetensors")
    with pytest.raises(WeightFileError, match="is a folder"):
        read_state_dict(tmp_path)


def test_lfs_pointer_html_and_non_tensor_files(tmp_path: Path) -> None:
    lfs = tmp_path / "unet.pth"
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 6303636358\n")
    with pytest.raises(WeightFileError, match="Git LFS pointer.*download"):
        read_state_dict(lfs)
    html = tmp_path / "audio2token.pth"
    html.write_text("<!DOCTYPE html><html><body>Access denied</body></html>")
    with pytest.raises(WeightFileError, match="web page"):
        read_state_dict(html)
    not_dict = _save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(WeightFileError, match="holds a list, not a dict of tensors"):
        read_state_dict(not_dict)
    mixed = _save({"w": torch.zeros(2), "epoch": 3}, tmp_path / "mixed.pth")
    with pytest.raises(WeightFileError, match="not a dict of tensors.*'epoch' \\(int\\)"):
        read_state_dict(mixed)


def test_renamed_file_is_read_by_content(tmp_path: Path) -> None:
    ref = _random_sd(TinyAudio2Bucket)
    path = _save(ref, tmp_path / "a.safetensors")
    renamed = tmp_path / "audio2bucket.pth"
    path.rename(renamed)
    assert sniff_container(renamed) == "safetensors"
    got = read_state_dict(renamed)
    assert torch.equal(got["proj2.bias"], ref["proj2.bias"])


def test_bad_dtype_is_rejected(tmp_path: Path) -> None:
    path = _save(_random_sd(TinyAudio2Bucket), tmp_path / "a.pth")
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        load_weights_into(_meta(TinyAudio2Bucket), path, "audio2bucket", dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------------------
# Recognition by signature
# ---------------------------------------------------------------------------------------------------------------


def _manifest(reference_dir: Path, name: str) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v) for k, v in json.loads((reference_dir / "manifest" / name).read_text()).items()}


def test_reference_manifests_are_recognised(reference_dir: Path) -> None:
    unet = _manifest(reference_dir, "sonic_unet.json")
    assert identify_kind(unet)[0] == "sonic_unet"
    stock = {k: v for k, v in unet.items() if "_ip." not in k}
    assert identify_kind(stock)[0] == "svd_unet"
    assert identify_kind(_manifest(reference_dir, "audio2token.json"))[0] == "audio2token"
    assert identify_kind(_manifest(reference_dir, "audio2bucket.json"))[0] == "audio2bucket"
    rife = _manifest(reference_dir, "rife_flownet.json")
    assert identify_kind(rife)[1] == "the RIFE frame-interpolation weights (flownet.pkl)"
    assert identify_kind({k.removeprefix("module."): v for k, v in rife.items()})[0] == "rife_flownet"
    wrapped = {f"unet.{k}": v for k, v in unet.items()}
    assert identify_kind(wrapped) is None  # the loader could not use it either


def test_svd_and_whisper_are_recognised_and_other_checkpoints_match_none() -> None:
    svd_single = {
        "model.diffusion_model.input_blocks.0.0.weight": (320, 8, 3, 3),
        "model.diffusion_model.input_blocks.1.0.time_stack.in_layers.2.weight": (320, 320, 3, 1, 1),
        "first_stage_model.decoder.conv_in.weight": (512, 4, 3, 3),
        "conditioner.embedders.0.open_clip.model.visual.proj": (1280, 1024),
    }
    assert identify_kind(svd_single)[0] == "svd_checkpoint"
    unet_only = {k: v for k, v in svd_single.items() if k.startswith("model.")}
    assert "without its VAE / CLIP vision" in identify_kind(unet_only)[1]
    hf_whisper = {"model.encoder.conv1.weight": (384, 80, 3), "model.decoder.embed_tokens.weight": (51865, 384)}
    assert identify_kind(hf_whisper)[1] == identify_kind({"encoder.conv1.weight": (384, 80, 3)})[1] == "a Whisper model"
    sd15_ldm = {
        "input_blocks.0.0.weight": (320, 4, 3, 3),
        "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
        "output_blocks.0.0.in_layers.0.weight": (2560,),
    }
    sd15_single = {f"model.diffusion_model.{k}": v for k, v in sd15_ldm.items()}
    for other in (sd15_ldm, sd15_single, {"vision_model.embeddings.patch_embedding.weight": (1280, 3, 14, 14)},
                  {"foo.weight": (3,), "bar.bias": (2,)}):
        assert identify_kind(other) is None, other


def test_sniffing_the_container(tmp_path: Path) -> None:
    zip_file = _save({"a": torch.zeros(2)}, tmp_path / "a.pth")
    st_file = _save({"a": torch.zeros(2)}, tmp_path / "a.safetensors")
    legacy = tmp_path / "legacy.pth"
    torch.save({"a": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    assert [sniff_container(p) for p in (zip_file, st_file, legacy, empty)] == ["zip", "safetensors", "pickle", "empty"]
