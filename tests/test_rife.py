"""RIFE ×2: key layout, golden parity (and that the check can fail), loader safety, interpolation behaviour."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sonic_model.video import rife_blocks
from sonic_model.video.rife import IFNet, interpolate_x2, iter_interpolated, load_rife, midpoint, warp
from tools.parity_checks import rife as rife_check
from tools.parity_checks.common import Golden, read_golden


@pytest.fixture(scope="module")
def golden(reference_dir: Path) -> Golden:
    return read_golden(reference_dir / "golden" / "rife.json")


@pytest.fixture(scope="module")
def flownet(golden: Golden) -> dict[str, torch.Tensor]:
    """The golden weights exactly as flownet.pkl stores them (`module.` prefix)."""
    return golden.weights("weights.")


@pytest.fixture(scope="module")
def model(flownet: dict[str, torch.Tensor]) -> IFNet:
    return load_rife(flownet)


def _frames(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, h, w, 3, generator=torch.Generator().manual_seed(seed))


# --- layout and parity ------------------------------------------------------------------------------------------


def test_full_key_set_matches_manifest(reference_dir: Path) -> None:
    manifest = json.loads((reference_dir / "manifest" / "rife_flownet.json").read_text())
    with torch.device("meta"):
        net = IFNet()
    ours = {f"module.{k}": list(v.shape) for k, v in net.state_dict().items()}
    assert ours == manifest
    assert sum(p.numel() for p in net.parameters()) == 3038015


def test_parity_with_official_golden(golden: Golden) -> None:
    comparisons = rife_check.run(golden)
    failed = [c.line() for c in comparisons if not c.passed]
    assert not failed, "\n".join(failed)
    compared = {c.name for c in comparisons}
    expected = {n for n in golden.doc["tensors"] if ".in." not in n}
    assert compared == expected  # every listed output and aux tensor was checked


def test_parity_check_fails_on_perturbed_weight(golden: Golden) -> None:
    tensors = dict(golden.tensors)
    key = "weights.module.block2.conv1.2.bias"
    tensors[key] = tensors[key] + 1e-2
    comparisons = rife_check.run(Golden(golden.path, golden.doc, tensors))
    assert any(not c.passed and c.name.endswith("aux.flow") for c in comparisons)


def test_parity_check_fails_with_align_corners_false(golden: Golden, monkeypatch: pytest.MonkeyPatch) -> None:
    original = rife_blocks.F.grid_sample

    def misaligned(*args, **kwargs):
        kwargs["align_corners"] = False
        return original(*args, **kwargs)

    monkeypatch.setattr(rife_blocks.F, "grid_sample", misaligned)
    comparisons = rife_check.run(golden)
    middle = [c for c in comparisons if c.name.endswith("out.middle")]
    assert middle and all(not c.passed and c.max_abs > 0.05 for c in middle)


# --- behaviour --------------------------------------------------------------------------------------------------


def test_equal_frames_are_symmetric_and_constant_frames_are_fixed_points(model: IFNet) -> None:
    # With img0 == img1 both directions of every level see identical inputs, so the two flow halves are equal and
    # the mask logit cancels to 0: middle = warp(I, F) for the (nonzero, random-weight) flow F. That equals I only
    # where warping is the identity, e.g. for a constant image (bilinear weights sum to 1, border padding).
    image = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out = model(image, image)
    torch.testing.assert_close(out.flow[:, 0:2], out.flow[:, 2:4], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.mask, torch.full_like(out.mask, 0.5), atol=1e-6, rtol=0)
    with torch.inference_mode():
        torch.testing.assert_close(out.middle, warp(image, out.flow[:, 0:2]), atol=1e-5, rtol=0)
    assert out.flow.abs().max() > 0.5  # the flow really is nonzero, so the constant-image case is the real claim

    for h, w in ((48, 64), (37, 50)):
        constant = torch.full((2, 3, h, w), 0.3)
        constant[1] = torch.tensor([0.9, 0.1, 0.5]).view(3, 1, 1)
        torch.testing.assert_close(midpoint(model, constant, constant), constant, atol=1e-5, rtol=0)


def test_swapping_inputs_gives_the_same_midpoint(model: IFNet) -> None:
    a, b = torch.rand(2, 1, 3, 32, 48, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(midpoint(model, a, b), midpoint(model, b, a), atol=1e-5, rtol=0)


def test_output_layout_range_and_originals(model: IFNet) -> None:
    frames = _frames(4, 32, 48)
    out = interpolate_x2(frames, model, batch_size=2)
    assert out.shape == (7, 32, 48, 3) and out.device.type == "cpu" and out.dtype == frames.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out[0::2], frames)  # originals pass through untouched
    for i in range(3):
        expected = midpoint(model, frames[i].permute(2, 0, 1)[None], frames[i + 1].permute(2, 0, 1)[None])
        torch.testing.assert_close(out[2 * i + 1], expected[0].permute(1, 2, 0), atol=1e-5, rtol=0)
    assert torch.equal(interpolate_x2(frames[:1], model), frames[:1])
    assert interpolate_x2(frames[:0], model).shape == (0, 32, 48, 3)


def test_deterministic(model: IFNet) -> None:
    frames = _frames(3, 32, 32, seed=3)
    assert torch.equal(interpolate_x2(frames, model), interpolate_x2(frames, model))


def test_sizes_not_multiple_of_16_are_padded(model: IFNet) -> None:
    frames = _frames(3, 37, 50, seed=4)
    out = interpolate_x2(frames, model)
    assert out.shape == (5, 37, 50, 3)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    # Inputs already on the 16-grid are not padded: midpoint equals the bare network output, clamped.
    a, b = (f.permute(2, 0, 1)[None] for f in _frames(2, 32, 48, seed=5))
    with torch.inference_mode():
        bare = model(a, b).middle.clamp(0, 1)
    assert torch.equal(midpoint(model, a, b), bare)


def test_batch_size_independent(model: IFNet) -> None:
    frames = _frames(6, 32, 32, seed=6)
    one = interpolate_x2(frames, model, batch_size=1)
    for size in (4, 8):
        torch.testing.assert_close(interpolate_x2(frames, model, batch_size=size, device="cpu"), one,
                                   atol=1e-5, rtol=0)


def test_streaming_reads_lazily_and_accepts_chunks(model: IFNet) -> None:
    frames = _frames(5, 32, 32, seed=7)
    consumed = []

    def source():
        for i in range(5):
            consumed.append(i)
            yield frames[i]

    stream = iter_interpolated(source(), model, batch_size=1)
    first_three = [next(stream) for _ in range(3)]  # f0, m01, f1 need only two input frames
    assert consumed == [0, 1]
    rest = list(stream)
    expected = interpolate_x2(frames, model, batch_size=1)
    assert torch.equal(torch.stack(first_three + rest), expected)
    chunked = torch.stack(list(iter_interpolated([frames[:2], frames[2:]], model, batch_size=1)))
    assert torch.equal(chunked, expected)
    with pytest.raises(ValueError):
        iter_interpolated(frames[..., :2], model)


def test_a_float64_run_right_after_a_float32_run_warps_in_float64(model: IFNet) -> None:
    a, b = (f.permute(2, 0, 1)[None] for f in _frames(2, 32, 32, seed=8))
    single = midpoint(model, a, b)
    double_model = IFNet().to(torch.float64)
    double_model.load_state_dict(model.state_dict())
    double = midpoint(double_model.eval(), a.double(), b.double())  # same size right after a float32 run
    assert double.dtype == torch.float64
    torch.testing.assert_close(double.float(), single, atol=1e-5, rtol=0)
    assert rife_blocks._base_grid(32, 32, torch.device("cpu"), torch.float64).dtype == torch.float64


# --- loader -----------------------------------------------------------------------------------------------------


def _same_weights(net: IFNet, flownet: dict[str, torch.Tensor]) -> bool:
    state = net.state_dict()
    return all(torch.equal(state[k.replace("module.", "")], v) for k, v in flownet.items())


def test_loads_flownet_pkl_file_and_folder(tmp_path: Path, flownet: dict[str, torch.Tensor]) -> None:
    torch.save(flownet, tmp_path / "flownet.pkl")
    from_file = load_rife(tmp_path / "flownet.pkl")
    assert _same_weights(from_file, flownet) and not from_file.training
    assert _same_weights(load_rife(str(tmp_path)), flownet)  # the official loader takes the folder
    save_file(dict(flownet), str(tmp_path / "flownet.safetensors"))
    assert _same_weights(load_rife(tmp_path / "flownet.safetensors"), flownet)


def test_accepts_unprefixed_checkpoint(tmp_path: Path, flownet: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "flownet.pkl"
    torch.save({k.replace("module.", ""): v for k, v in flownet.items()}, path)
    assert _same_weights(load_rife(path), flownet)


def test_refuses_wrong_checkpoint_naming_the_file(tmp_path: Path, flownet: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "not_rife.pkl"
    torch.save({"encoder.weight": torch.randn(4, 4), "encoder.bias": torch.randn(4)}, path)
    with pytest.raises(ValueError, match="not_rife.pkl does not fit: expected the RIFE") as info:
        load_rife(path)
    assert "Unexpected e.g. encoder.bias, encoder.weight" in str(info.value)
    unet = tmp_path / "unet_in_rife_slot.pkl"
    torch.save({"conv_in.weight": torch.randn(320, 8, 3, 3), "conv_in.bias": torch.randn(320),
                "down_blocks.0.attentions.0.temporal_transformer_blocks.0.attn2.to_k.weight": torch.randn(320, 1024)},
               unet)
    with pytest.raises(ValueError, match="use flownet.pkl here"):
        load_rife(unet)

    incomplete = tmp_path / "incomplete.pkl"
    torch.save({k: v for k, v in flownet.items() if "block_tea" not in k}, incomplete)
    with pytest.raises(ValueError, match=r"incomplete\.pkl.*40 missing"):
        load_rife(incomplete)


def test_refuses_malicious_pickle_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "flownet.pkl"
    torch.save({"module.block0.conv0.0.0.weight": Payload()}, path)
    with pytest.raises(ValueError, match=r"flownet\.pkl contains Python code.*refused for safety"):
        load_rife(path)
    assert not marker.exists()
