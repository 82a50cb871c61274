"""Several GPUs for one video (Sonic Devices), on the stand-in accelerator's two devices, cuda:0 and cuda:1, which
refuse each other's tensors as two GPUs do: a run on both equals the one-device run bit for bit, every window runs
on the device it was given (and a tensor left on the other device fails the run), Cancel, progress, CFG++ and an
out-of-memory error on one device behave as on one."""
from __future__ import annotations

import copy
import threading

import pytest
import torch

from reliability_runtime import UseFolders, make_folders, node_id_of, run_prompt, shipped_workflow, write_run_inputs
from sonic_fakes import RecordingUNet, make_conditioning, node_inputs
from tools.comfy_runtime import import_pack

import_pack()
import comfy.model_management as mm  # noqa: E402
import comfy.utils  # noqa: E402
from comfy_extras import nodes_custom_sampler as custom  # noqa: E402
from sonic_pack.nodes import devices as sonic_devices  # noqa: E402
from sonic_pack.nodes import sampling  # noqa: E402
from sonic_pack.nodes.native_model import SonicDiffusionModel, sonic_model_patcher  # noqa: E402
from sonic_model.sampling import shift_fusion  # noqa: E402
from sonic_model.sampling.window_devices import assign_windows  # noqa: E402
from stand_in_device import STAND_INS, ops_on  # noqa: E402

pytestmark = pytest.mark.device

CUDA0, CUDA1 = STAND_INS
FRAMES, WINDOW = 23, 5  # 5 windows per step: 3 on cuda:0, 2 on cuda:1
RUN = dict(seed=3, steps=3, cfg_image=2.0, cfg_audio=7.5, shift=2, window=WINDOW, sampler_name="euler",
           scheduler="karras", denoise=1.0)


def _model():
    """A Sonic MODEL around a recording UNet, copyable to another device as the loader's are (a deep copy here)."""
    unet = RecordingUNet()
    patcher = sonic_model_patcher(unet)
    patcher.model.rebuild = lambda device: sonic_model_patcher(copy.deepcopy(unet), load_device=device)
    return patcher


@pytest.fixture
def calls(monkeypatch):
    """(device of the window's latents, device of the weights, host thread) of every UNet call."""
    seen: list[tuple[torch.device, torch.device, str]] = []
    forward = SonicDiffusionModel.forward

    def recording(self, x, *args, **kwargs):
        seen.append((x.device, self.unet.weight.device, threading.current_thread().name))
        return forward(self, x, *args, **kwargs)

    monkeypatch.setattr(SonicDiffusionModel, "forward", recording)
    return seen


@pytest.fixture
def windows(monkeypatch):
    """(step, window, device) of every window as the progress bar hears of it."""
    seen: list[tuple[int, int, torch.device]] = []
    tick = sampling.WindowProgress.__call__

    def recording(self, event):
        seen.append((event.step, event.window, event.device))
        return tick(self, event)

    monkeypatch.setattr(sampling.WindowProgress, "__call__", recording)
    return seen


def _sample(model, **changes) -> torch.Tensor:
    audio, image, motion = node_inputs(make_conditioning(FRAMES))
    return sampling.run_sonic_sampler(model, audio, image, motion, **{**RUN, **changes})


def test_windows_are_shared_by_count_in_a_fixed_order():
    assert assign_windows(5, [CUDA0, CUDA1]) == [CUDA0] * 3 + [CUDA1] * 2  # the main device takes the larger share
    assert assign_windows(4, [CUDA0, CUDA1]) == [CUDA0] * 2 + [CUDA1] * 2
    assert assign_windows(1, [CUDA0, CUDA1]) == [CUDA0]
    assert assign_windows(7, [CUDA1, CUDA0]) == assign_windows(7, [CUDA1, CUDA0])
    with pytest.raises(ValueError):
        assign_windows(3, [])


def test_the_devices_setting(stand_in_gpu):
    assert sonic_devices.parse_devices("auto", CUDA0) == [CUDA0, CUDA1]
    assert sonic_devices.parse_devices("cuda:1, cuda:0", CUDA0) == [CUDA0, CUDA1]  # the main device first
    assert sonic_devices.parse_devices("0", CUDA0) == [CUDA0]
    assert sonic_devices.parse_devices("auto", torch.device("cpu")) == [torch.device("cpu")]
    for setting, fix in (("cuda:2", "is not a device of this machine"), ("cuda:1", "must include cuda:0"),
                         ("cuda:0, 0", "named twice"), ("gpu please", "is not a device")):
        with pytest.raises(ValueError, match=fix):
            sonic_devices.parse_devices(setting, CUDA0)
    one = sonic_devices.spread_model(_model(), "cuda:0")
    assert sonic_devices.device_copies(one) == []  # one device: the MODEL as it was
    two = sonic_devices.spread_model(_model(), "auto")
    assert [c.load_device for c in sonic_devices.device_copies(two)] == [CUDA1]


def test_two_devices_equal_one_bit_for_bit_and_each_window_runs_where_it_was_given(stand_in_gpu, calls, windows):
    one = _sample(_model())
    assert {(x, w) for x, w, _ in calls} == {(CUDA0, CUDA0)} and {d for *_, d in windows} == {CUDA0}
    calls.clear(), windows.clear(), ops_on[1].clear()
    two = _sample(sonic_devices.spread_model(_model(), "auto"))
    assert two.dtype == one.dtype and torch.equal(two, one)
    owners = assign_windows(5, [CUDA0, CUDA1])
    assert windows == [(s, w, owners[w]) for s in range(RUN["steps"]) for w in range(5)]  # fused in window order
    assert all(x == weights for x, weights, _ in calls)  # each window's latents on its own copy's device
    on_cuda1 = [thread for x, _, thread in calls if x == CUDA1]
    assert len(on_cuda1) == RUN["steps"] * 2 and set(on_cuda1) == {f"sonic-{CUDA1}"}
    assert ops_on[1]["mul"] > 0  # the UNet's arithmetic ran on cuda:1
    assert not [t for t in threading.enumerate() if t.name.startswith("sonic-")]  # the run's threads ended


def test_a_tensor_left_on_the_other_device_fails_the_run(stand_in_gpu, monkeypatch):
    """The proof can fail: a window's latents slipped onto cuda:0 while its UNet copy is on cuda:1."""
    to_device = shift_fusion.to_device
    monkeypatch.setattr(shift_fusion, "to_device", lambda tensor, device: to_device(tensor, CUDA0))
    assert torch.isfinite(_sample(_model())).all()  # on one device the slip is no slip
    with pytest.raises(RuntimeError, match="found at least two devices, cuda:[01] and cuda:[01]"):
        _sample(sonic_devices.spread_model(_model(), "auto"))


def test_cfg_pp_and_a_two_evaluation_sampler_equal_one_device(stand_in_gpu):
    for name in ("res_multistep_cfg_pp", "heun"):
        one = _sample(_model(), sampler_name=name)
        assert torch.equal(_sample(sonic_devices.spread_model(_model(), "auto"), sampler_name=name), one), name


def test_sampler_custom_advanced_with_the_guider_equals_one_device(stand_in_gpu):
    audio, image, motion = node_inputs(make_conditioning(FRAMES))
    sigmas = torch.tensor([700.0, 10.0, 0.5, 0.0])
    results = []
    for model in (_model(), sonic_devices.spread_model(_model(), "auto")):
        guider, latent = sampling.SonicGuiderNode.execute(model, audio, image, motion, 2.0, 7.5, 2, WINDOW, 0).result
        noise = custom.Noise_RandomNoise(3).generate_noise(latent)
        sampler = comfy.samplers.sampler_object("dpmpp_2m")
        results.append(guider.sample(noise, latent["samples"], sampler, sigmas, seed=3))
    assert torch.equal(results[0], results[1])


def test_cancel_stops_both_devices_and_the_next_run_is_whole(stand_in_gpu, windows, calls):
    tick = sampling.WindowProgress.__call__

    def cancel_at_the_seventh(self, event):
        tick(self, event)
        if len(windows) == 7:
            mm.interrupt_current_processing(True)

    model = sonic_devices.spread_model(_model(), "auto")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sampling.WindowProgress, "__call__", cancel_at_the_seventh)
        with pytest.raises(mm.InterruptProcessingException):
            _sample(model)
    assert len(windows) == 7 and len(calls) <= 10  # stopped in step 2: at most step 2's own windows ran
    assert not [t for t in threading.enumerate() if t.name.startswith("sonic-")]
    windows.clear()
    assert torch.equal(_sample(model), _sample(_model())) and len(windows) == 2 * 15


def test_one_progress_bar_for_all_devices(stand_in_gpu, monkeypatch):
    bars = []

    class Bar:
        def __init__(self, total, node_id=None):
            self.updates, self.total = [], total
            bars.append(self)

        def update_absolute(self, value, total=None, preview=None):
            self.updates.append(value)

    monkeypatch.setattr(comfy.utils, "ProgressBar", Bar)
    _sample(sonic_devices.spread_model(_model(), "auto"))
    assert len(bars) == 1 and bars[0].total == 15
    assert bars[0].updates == list(range(1, 16))  # one tick per window, in order, whichever device finished first


def test_out_of_memory_on_device_1_names_it(stand_in_gpu, monkeypatch):
    forward = SonicDiffusionModel.forward

    def full_on_cuda1(self, x, *args, **kwargs):
        if x.device == CUDA1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(self, x, *args, **kwargs)

    monkeypatch.setattr(SonicDiffusionModel, "forward", full_on_cuda1)
    with pytest.raises(torch.OutOfMemoryError, match=r"cuda:1 ran out of memory in window 4 of 5 \(step 1\)"):
        _sample(sonic_devices.spread_model(_model(), "auto"))
    assert not [t for t in threading.enumerate() if t.name.startswith("sonic-")]


# ---- the shipped workflows' sampling, through ComfyUI, on the random weights in the real formats ---------------


@pytest.fixture
def folders(tiny_models_dir, tmp_path):
    folders = make_folders(tmp_path / "comfy", tiny_models_dir)
    write_run_inputs(folders, 0.5)
    return folders


def _sampled_latent(folders, name: str, sampler_type: str, devices: str | None) -> torch.Tensor:
    """The shipped workflow up to its sampler, whose latents core's SaveLatent writes; `devices`: a Sonic Devices
    node between the loader and the sampling nodes."""
    import safetensors.torch

    prompt = shipped_workflow(name)
    prompt = {k: v for k, v in prompt.items()
              if v["class_type"] not in ("SonicDecode", "SonicInterpolate", "CreateVideo", "SaveVideo")}
    loader, sampler = node_id_of(prompt, "SonicLoader"), node_id_of(prompt, sampler_type)
    for node in prompt.values():
        if node["class_type"] in ("SonicGuider", "SonicSampler"):
            node["inputs"]["window"] = 2  # 6 frames: 3 windows a step, 2 on cuda:0 and 1 on cuda:1
    if devices is not None:
        prompt["80"] = {"class_type": "SonicDevices", "inputs": {"model": [loader, 3], "devices": devices}}
        for node in prompt.values():
            if node["inputs"].get("model") == [loader, 3] and node is not prompt["80"]:
                node["inputs"]["model"] = ["80", 0]
    prompt["81"] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler, 0], "filename_prefix": f"{devices}"}}
    before = set(folders.output_files())
    run_prompt(prompt)
    written = [p for p in folders.output_files() if p not in before and p.suffix == ".latent"]
    assert len(written) == 1, written
    return safetensors.torch.load_file(str(written[0]))["latent_tensor"]


@pytest.mark.parametrize("name, sampler_type", [("sonic_custom_sampler", "SamplerCustomAdvanced"),
                                                ("sonic_basic", "SonicSampler")])
def test_shipped_workflow_on_two_devices_equals_one(stand_in_gpu, folders, name, sampler_type):
    with UseFolders(folders):
        one = _sampled_latent(folders, name, sampler_type, None)
        ops_on[1].clear()
        two = _sampled_latent(folders, name, sampler_type, "auto")
    assert ops_on[1]["convolution"] > 0, ops_on[1].most_common(8)  # the real UNet ran on cuda:1 too
    assert two.dtype == one.dtype and torch.equal(two, one)
