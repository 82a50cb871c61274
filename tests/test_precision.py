"""fp16 and bf16 as a GPU runs them: the UNet's timestep stays fp32, and the UNet and pipeline goldens hold in half
precision under tolerances derived from measurement, tight enough to catch a precision slip.

How the tolerances were derived: `benchmarks/precision_errors.py --write` ran every golden through its parity check in
fp32, fp16 and bf16, for 4 seeds (the golden's own weights and 3 copies with every weight scaled by
1 + 0.25·N(0, 1)), and stored per output the worst max_rel = max |a − b| / (1 + |b|) and rel_rms = ‖a − b‖ / ‖b‖ of
the half-precision run against the fp32 run (tools/parity_checks/precision_tolerances.json). A run passes when
max_rel ≤ 3 × that worst and rel_rms ≤ 1.5 × that worst (tools/parity_checks/precision.py). The RMS statistic
barely moves between inputs (2.3e-3 to 2.4e-3 over the three UNet cases in fp16), which is why its multiple can be
small: a slip that leaves the max error inside the noise still shifts the RMS.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tools.parity_checks.common import compare_golden, read_golden
from tools.parity_checks.precision import DTYPES, reduced_tolerance
from tools.parity_checks.unet import build_model, case_names, forward_case, run

REDUCED = ["fp16", "bf16"]


@pytest.fixture(scope="module")
def unet_golden_path(reference_dir: Path) -> Path:
    return reference_dir / "golden" / "unet_single_window.json"


def test_time_embeddings_get_the_fp32_timestep_in_fp16_weights(unet_golden_path) -> None:
    """Upstream hands the UNet an fp32 timestep (0.25·ln σ) and its sinusoid embeds it in fp32; only the sinusoid's
    output is cast to the weights' dtype. The same for the added time ids (fps, motion buckets)."""
    golden = read_golden(unet_golden_path, torch.float16)
    model = build_model(golden)
    assert next(model.parameters()).dtype == torch.float16
    seen: dict[str, torch.Tensor] = {}
    model.time_proj.register_forward_pre_hook(lambda m, args: seen.setdefault("timestep", args[0]))
    model.add_time_proj.register_forward_pre_hook(lambda m, args: seen.setdefault("time_ids", args[0]))
    timestep = torch.tensor(0.25 * torch.log(torch.tensor(0.0291)).item())  # a σ whose log fp16 rounds
    assert timestep.to(torch.float16).float() != timestep
    case = case_names(golden)[0]
    t = {k.split(".in.", 1)[1]: golden.input(k) for k in golden.tensors if k.startswith(f"{case}.in.")}
    time_ids = golden.tensors[f"{case}.in.added_time_ids"] + 0.3  # fractional buckets, as audio2bucket makes
    with torch.no_grad():
        out = model(t["latent_model_input"], timestep, time_ids, t["clip_states"], t["audio_tokens"], t["face_mask"])
    assert out.dtype == torch.float16
    assert seen["timestep"].dtype == torch.float32
    assert torch.equal(seen["timestep"], timestep.expand_as(seen["timestep"]))
    assert seen["time_ids"].dtype == torch.float32 and torch.equal(seen["time_ids"], time_ids.flatten())


@pytest.mark.parametrize("dtype", REDUCED)
def test_unet_golden_in_half_precision(unet_golden_path, dtype: str) -> None:
    comparisons = run(read_golden(unet_golden_path, DTYPES[dtype]))
    failed = [c.line() for c in comparisons if not c.passed]
    assert not failed, "\n".join(failed)
    samples = [c for c in comparisons if c.name.endswith(".out.sample")]
    assert len(samples) == 3 and all(c.rel_rms_tol is not None for c in samples)


@pytest.mark.parametrize("dtype", REDUCED)
def test_pipeline_golden_in_half_precision(reference_dir: Path, dtype: str) -> None:
    """The whole sampler (CLIP, VAE encode, every window's UNet call, Euler steps, decode) through tools.parity."""
    from tools.parity import check_file

    _, comparisons = check_file(reference_dir / "golden" / "shift_fusion_pipeline_main.json", dtype)
    failed = [c.line() for c in comparisons if not c.passed]
    assert not failed, "\n".join(failed)
    judged = {c.name for c in comparisons if c.rel_rms_tol is not None}
    assert {"out.final_latents", "out.frames", "win.noise_pred"} <= judged


def _first_down_block_in_bf16(model: torch.nn.Module) -> None:
    """The slip: inside an fp16 run, the first down block's weights and layer outputs carry bf16's 8 mantissa bits
    (a block loaded or autocast in the wrong half type)."""
    def round_output(module, args, output):
        return output.to(torch.bfloat16).to(output.dtype)

    for name, module in model.named_modules():
        if name.startswith("down_blocks.0") and isinstance(module, (torch.nn.Linear, torch.nn.Conv2d,
                                                                    torch.nn.Conv3d)):
            module.weight.data = module.weight.data.to(torch.bfloat16).to(module.weight.dtype)
            module.register_forward_hook(round_output)


def test_a_precision_slip_exceeds_the_fp16_tolerance_but_not_the_old_one(unet_golden_path) -> None:
    """One block in bf16 inside an fp16 run: the measured tolerance fails it (its RMS error is ~3x fp16's), while
    the old bound (max |error| < 0.03) let it through. The golden itself passes (test above)."""
    golden = read_golden(unet_golden_path, torch.float16)
    model = build_model(golden)
    _first_down_block_in_bf16(model)
    for case in case_names(golden):
        name = f"{case}.out.sample"
        out = forward_case(model, golden, case)
        verdict = compare_golden(golden, name, out)
        assert not verdict.passed, verdict.line()
        assert verdict.rel_rms > 1.5 * verdict.rel_rms_tol, verdict.line()
        assert (out.float() - golden.tensors[name]).abs().max() < 0.03  # what the old test allowed


def test_an_unmeasured_output_fails_instead_of_passing(unet_golden_path) -> None:
    golden = read_golden(unet_golden_path, torch.bfloat16)
    name = "square.out.sample"
    assert reduced_tolerance(golden, name) is not None
    golden.doc = dict(golden.doc, golden_type="a_new_golden_type")
    verdict = compare_golden(golden, name, golden.tensors[name])
    assert not verdict.passed and "precision_errors.py --write" in verdict.note
