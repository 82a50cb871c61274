"""The VRAM memory model: its terms against live-set measurements on the meta device, its scaling, and the choice."""
import re
from dataclasses import replace

import pytest
import torch

from benchmarks import vram_model as bench
from sonic_model.sampling import memory_model as mm

GIB = mm.GIB


@pytest.fixture(scope="module")
def meta_unet():
    return bench.meta_unet()


def test_the_live_set_meter_counts_what_a_function_holds():
    x = torch.zeros(1000)  # an input: not counted

    def held(x):
        a = x * 2                # 4000 B
        flat = a.view(-1)        # a view: no new storage
        b = flat + 1             # 4000 B, a and b alive: the peak
        del a, flat
        c = b * 3                # b and c alive: 8000 B again
        del b
        return torch.cat([c, c])  # 8000 B beside c: the peak, 12000 B

    assert bench.peak_live_bytes(torch.nn.Linear(1, 1), held, (x,), efficient=False) == 12000


def test_a_meta_forward_holds_what_a_real_cpu_forward_holds():
    """The same live set on the meta device as in a real forward (tiny config, random weights, both kernels)."""
    from tools.tiny_models import TINY_UNET_CONFIG

    cpu = bench.meta_unet(TINY_UNET_CONFIG, torch.float32)
    cpu = cpu.to_empty(device="cpu")
    with torch.no_grad():
        for p in cpu.parameters():
            p.normal_(0, 0.02)
    meta = bench.meta_unet(TINY_UNET_CONFIG, torch.float32)
    for efficient in (True, False):
        on_cpu = bench.unet_activation_peak(cpu, 3, 8, 8, efficient)
        assert on_cpu > 0 and bench.unet_activation_peak(meta, 3, 8, 8, efficient) == on_cpu


def test_weight_term_is_the_real_config_parameter_bytes(meta_unet):
    params = sum(p.numel() for p in meta_unet.parameters())
    assert params == mm.UNET_PARAMS
    assert sum(p.nbytes for p in meta_unet.parameters()) == mm.unet_weight_bytes("fp16")
    fp8 = torch.nn.Module.to(bench.meta_unet(dtype=torch.float32), dtype=torch.float8_e4m3fn)
    assert sum(p.nbytes for p in fp8.parameters()) == mm.unet_weight_bytes("fp8_e4m3fn") == params
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in meta_unet.modules())
    assert largest == mm.UNET_LARGEST_LAYER_PARAMS


# Latent sizes where the term under test is the peak (at 32×32 the math kernel's scores outgrow the feed-forward).
@pytest.mark.parametrize("attention, slices, frames, height, width", [
    ("efficient", None, 2, 16, 24), ("math", None, 1, 32, 32), ("math", 2, 1, 32, 32)])
def test_activation_term_matches_the_live_set_of_a_real_config_forward(meta_unet, attention, slices, frames, height,
                                                                        width):
    # The fitted terms are exact at full size and within ~1 % at these small ones.
    ff_peak = mm.unet_activation_bytes(frames, height * width, "fp16", "efficient")
    if attention == "math":
        assert mm.unet_activation_bytes(frames, height * width, "fp16", attention, slices) > 1.05 * ff_peak
    measured = bench.unet_activation_peak(meta_unet, frames, height, width, attention == "efficient", slices)
    model = mm.unet_activation_bytes(frames, height * width, "fp16", attention, slices)
    assert model == pytest.approx(measured, rel=0.015)


def test_activation_terms_scale_as_derived():
    tokens, frames = 64 * 64, 25
    one = mm.unet_activation_bytes(frames, tokens)
    # Memory-efficient kernels (sliced or not): linear in pixels and in frames.
    assert mm.unet_activation_bytes(frames, 2 * tokens) == 2 * one
    assert mm.unet_activation_bytes(3 * frames, tokens) == 3 * one
    assert mm.unet_activation_bytes(frames, 2 * tokens, slices=8) == 2 * one
    # Math kernel: the scores are quadratic in tokens; slicing divides them.
    math_one = mm.unet_activation_bytes(frames, tokens, attention="math")
    assert 3.5 < mm.unet_activation_bytes(frames, 2 * tokens, attention="math") / math_one < 4
    sliced = mm.unet_activation_bytes(frames, tokens, attention="math", slices=8)
    assert one < sliced < math_one / 4


def test_decode_and_rife_terms_match_measurements():
    vae = bench.meta_vae()
    assert sum(p.numel() for p in vae.parameters()) == mm.VAE_PARAMS
    measured = bench.vae_decode_peak(vae, 2, 64, 96)
    assert mm.vae_decode_bytes(64, 96, 2, "fp16") - mm.VAE_PARAMS * 2 == pytest.approx(measured, rel=0.001)
    params, measured = bench.rife_peak(2, 64, 96)
    frames = 3 * 3 * 64 * 96 * 4  # the 3 stacked input frames, inputs of the measured call
    assert params == mm.RIFE_PARAMS
    assert mm.rife_bytes(64, 96, 2) - mm.RIFE_PARAMS * 4 == pytest.approx(measured + frames, rel=0.02)


def test_constants_taken_from_the_host():
    import comfy.model_management as cmm
    from comfy.cli_args import args

    if not cmm.WINDOWS and args.reserve_vram is None:
        assert cmm.EXTRA_RESERVED_VRAM == mm.COMFY_RESERVED_VRAM["linux"]


def _budget_edge(mode: mm.SamplingMode, **shape) -> int:
    """The least free VRAM in which `mode`'s predicted peak fits with the margin."""
    peak = mm.estimate(mm.RunShape(512, 512, **shape), mode).peak
    return int(peak * (1 + mm.SAFETY_MARGIN)) + 1


def test_the_fastest_fitting_mode_is_picked():
    assert mm.choose_mode(100 * GIB, 512, 512).mode == mm.BATCHED
    edge = _budget_edge(mm.BATCHED)
    assert mm.choose_mode(edge, 512, 512).mode == mm.BATCHED
    chosen = mm.choose_mode(edge - 2, 512, 512)
    assert chosen == mm.estimate(mm.RunShape(512, 512), mm.PER_ROW)
    # Without a fused attention kernel, slicing is what makes per-row fit.
    edge = _budget_edge(mm.PER_ROW_SLICED, attention="math")
    assert mm.choose_mode(edge, 512, 512, attention="math").mode == mm.PER_ROW_SLICED
    assert mm.choose_mode(edge - 2, 512, 512, attention="math").mode.offload


def test_more_vram_never_picks_a_slower_mode_and_every_pick_fits():
    previous = (len(mm.MODES), float("inf"))
    for free in range(2 * GIB, 12 * GIB, 32 * mm.MIB):
        try:
            chosen = mm.choose_mode(free, 512, 512, decode_chunk=None, rife_batch=None)
            mode, peak = chosen.mode, chosen.peak
        except mm.DoesNotFit:
            assert previous[0] == len(mm.MODES), "a smaller card fitted where a larger one does not"
            continue
        rank = (mm.MODES.index(replace(mode, offload_bytes=0)), mode.offload_bytes)
        assert rank <= previous
        assert peak * (1 + mm.SAFETY_MARGIN) <= free
        previous = rank
    assert previous[0] == 0, "the sweep should end in the fastest mode"


def test_offload_is_the_smallest_that_fits():
    shape = dict(height=576, width=1024, decode_chunk=None, rife_batch=None)
    free = mm.card_free_vram(8 * GIB)
    chosen = mm.choose_mode(free, **shape)
    mode = chosen.mode
    assert mode.offload and 0 < mode.offload_bytes < mm.unet_weight_bytes("fp16")
    budget = free / (1 + mm.SAFETY_MARGIN)
    run = mm.RunShape(**shape)
    assert mm.estimate(run, mode) == chosen and chosen.peak <= budget
    less = replace(mode, offload_bytes=mode.offload_bytes - mm.MIB)
    assert mm.estimate(run, less).peak > budget
    # What core is asked to keep free leaves room for exactly the resident weights.
    assert chosen.unet_resident == mm.unet_weight_bytes("fp16") - mode.offload_bytes
    assert chosen.unet_resident <= budget - chosen.working < chosen.unet_resident + mm.MIB


def test_largest_decode_chunk_is_the_largest_that_fits():
    free = mm.card_free_vram(8 * GIB)
    budget = free / (1 + mm.SAFETY_MARGIN)
    for (height, width), vae, expected in (((512, 512), "bf16", 8), ((512, 512), "fp32", 6), ((576, 1024), "bf16", 5)):
        chunk = mm.largest_decode_chunk(free, height, width, vae)
        assert chunk == expected
        assert mm.vae_decode_bytes(height, width, chunk, vae) <= budget
        if chunk < mm.DEFAULT_DECODE_CHUNK:
            assert mm.vae_decode_bytes(height, width, chunk + 1, vae) > budget
    assert mm.largest_decode_chunk(GIB, 2048, 2048, "fp32") == 0


def test_nothing_fits_names_what_to_lower():
    with pytest.raises(mm.DoesNotFit, match="Lower the resolution or the window"):
        mm.choose_mode(2 * GIB, 1024, 1024)
    with pytest.raises(mm.DoesNotFit, match="lower decode_chunk_size"):
        mm.choose_mode(mm.card_free_vram(8 * GIB), 768, 768, weight_dtype="fp8_e4m3fn")
    with pytest.raises(ValueError, match="compute dtype"):
        mm.choose_mode(8 * GIB, 512, 512, dtype="fp8_e4m3fn")


def test_the_table_ends_with_the_512_auto_lines_within_8_gib_for_10_s_and_10_minutes(capsys):
    bench.table()
    short, long = capsys.readouterr().out.strip().splitlines()[-2:]
    found = re.fullmatch(r"512x512 auto: (\d+\.\d\d) GiB peak \((.+)\)", short)
    found_long = re.fullmatch(r"512x512 auto 600 s: (\d+\.\d\d) GiB peak \((.+)\)", long)
    assert found and found_long, (short, long)
    for line in (found, found_long):
        assert float(line.group(1)) <= 8
        assert any(line.group(2).startswith(mode.name) for mode in mm.MODES)
    # Ten minutes add only core's two start copies on the GPU: 7500 frames × 2 × 64 KiB.
    grown = float(found_long.group(1)) - float(found.group(1))
    assert abs(grown - mm.clip_state_bytes(7500 - 125, 64 * 64) / GIB) < 0.011, grown


def test_gpu_clip_state_is_two_latents_per_frame_and_the_rest_is_host_ram():
    tokens = 64 * 64
    assert mm.clip_state_bytes(7500, tokens) == 2 * 7500 * 4 * tokens * 4  # 0.92 GiB at 10 min, 512²
    assert mm.clip_state_bytes(7500, tokens) < 1 * GIB
    host = mm.host_state_bytes(7500, tokens)
    assert host == mm.HOST_LATENT_BUFFERS * mm.latent_bytes(7500, tokens) + 7500 * 32 * 1024 * 4


def test_the_gpu_calibration_runs_the_sampling_path_and_orders_the_modes():
    """benchmarks/vram_calibrate.py's measurement on the CPU with the tiny UNet: batched guidance holds the most."""
    from benchmarks.vram_calibrate import sampling_rows
    from tools.tiny_models import TINY_UNET_CONFIG

    rows = sampling_rows(torch.device("cpu"), [(64, 64)], 3, TINY_UNET_CONFIG)
    assert [row.what.split(", ")[1] for row in rows] == [str(mode) for mode in mm.MODES[:3]]
    weights = sum(p.nbytes for p in bench.meta_unet(TINY_UNET_CONFIG, torch.float32).parameters())
    batched, per_row, sliced = (row.measured for row in rows)
    assert batched > per_row >= sliced > weights
