"""Chunked decode with core's VAE, RIFE across chunk borders, and the streaming save node (file, audio, Cancel)."""
from __future__ import annotations

import math
from pathlib import Path

import av
import pytest
import torch

from sonic_fakes import prepared_node
from tools.comfy_runtime import import_pack

import_pack()
import comfy.model_management as mm  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.utils  # noqa: E402
import folder_paths  # noqa: E402
from comfy.ldm.models.autoencoder import AutoencodingEngine  # noqa: E402
from sonic_pack.nodes import decode as decode_mod  # noqa: E402
from sonic_pack.nodes.decode import SonicDecode, decode_latents  # noqa: E402
from sonic_pack.nodes.sonic_types import SonicImageEmbeds  # noqa: E402
from sonic_pack.nodes.video import RIFE_MISSING, SonicInterpolate, SonicSaveVideo  # noqa: E402
from sonic_model.video.video_pipeline import stream_frames  # noqa: E402
from sonic_model.video.rife import interpolate_x2, load_rife  # noqa: E402
from tools.parity_checks.common import read_golden  # noqa: E402



def _core_svd_vae() -> comfy.sd.VAE:
    """Core's own SVD VAE (temporal decoder) from a random full-size state dict: ~98 M params, a few seconds."""
    enc = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
           "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    with torch.device("meta"):
        skeleton = AutoencodingEngine(
            regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
            encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": enc},
            decoder_config={"target": "comfy.ldm.modules.temporal_ae.VideoDecoder",
                            "params": dict(enc, video_kernel_size=[3, 1, 1], alpha=0.0)})
    g = torch.Generator().manual_seed(7)
    state = {}
    for key, value in skeleton.state_dict().items():
        shape = value.shape
        if key.endswith("mix_factor"):
            state[key] = torch.randn(shape, generator=g)  # spatial/temporal blend varies per block
        elif key.endswith("bias"):
            state[key] = 0.02 * torch.randn(shape, generator=g)
        elif len(shape) == 1:
            state[key] = torch.ones(shape)
        else:
            state[key] = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
    vae = comfy.sd.VAE(sd=state)
    assert type(vae.first_stage_model.decoder).__name__ == "VideoDecoder"  # detected by decoder.mid.block_1.mix_factor
    return vae


@pytest.fixture(scope="module")
def core_vae() -> comfy.sd.VAE:
    return _core_svd_vae()


@pytest.fixture(scope="module")
def rife(reference_dir: Path):
    return load_rife(read_golden(reference_dir / "golden" / "rife.json").weights("weights."))


@pytest.fixture()
def vae(core_vae, monkeypatch):
    """Core's VAE that records the frames of each decoder call (`vae.calls`)."""
    real, calls = core_vae.first_stage_model.decode, []

    def counted(z, **kwargs):
        calls.append(z.shape[0])
        return real(z, **kwargs)

    monkeypatch.setattr(core_vae.first_stage_model, "decode", counted)
    monkeypatch.setattr(core_vae, "calls", calls, raising=False)
    return core_vae


class Models:
    """The part of the Sonic bundle these nodes read: RIFE and its core patcher."""

    def __init__(self, rife) -> None:
        from sonic_pack.nodes.model_patchers import core_patcher

        self.rife = rife
        self.rife_patcher = None if rife is None else core_patcher(rife)


@pytest.fixture()
def output_dir(tmp_path):
    old = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path))
    yield tmp_path
    folder_paths.set_output_directory(old)


def _latents(n: int, h: int = 2, w: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 4, h, w, generator=torch.Generator().manual_seed(seed))


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# --- decode -----------------------------------------------------------------------------------------------------


def test_chunked_decode_equals_each_slice_decoded_on_its_own(core_vae):
    latents = _latents(7)
    with torch.inference_mode():
        chunked = decode_latents(core_vae, latents, chunk_size=3)
        slices = torch.cat([core_vae.decode(latents[s:s + 3]) for s in range(0, 7, 3)])
        one_pass = core_vae.decode(latents)
    assert chunked.shape == (7, 16, 16, 3) and chunked.device == mm.intermediate_device()
    assert float(chunked.min()) >= 0 and float(chunked.max()) <= 1
    assert torch.equal(chunked, slices)
    # The temporal decoder mixes the frames of a chunk: one pass differs, and only through that mixing.
    assert (chunked - one_pass).abs().max() > 1e-3


def test_core_would_split_a_chunk_on_low_memory_but_ours_stays_whole(core_vae, monkeypatch):
    latents = _latents(4, seed=1)
    with torch.inference_mode():
        whole = core_vae.decode(latents)
        per_frame = torch.cat([core_vae.decode(latents[i:i + 1]) for i in range(4)])
        # Free memory for one frame only: core's VAE.decode falls back to one-frame batches.
        frame_bytes = core_vae.memory_used_decode(latents.shape, core_vae.vae_dtype)
        monkeypatch.setattr(mm, "get_free_memory", lambda *a, **k: frame_bytes * 1.5)
        split_by_core = core_vae.decode(latents)
        ours = decode_latents(core_vae, latents, chunk_size=4)
    assert torch.equal(split_by_core, per_frame) and not torch.equal(split_by_core, whole)
    assert torch.equal(ours, whole)


def test_decode_node_output_and_schema(core_vae):
    latents = _latents(5, seed=2)
    out = prepared_node(SonicDecode).execute(core_vae, {"samples": latents}, 2).args[0]
    with torch.inference_mode():
        expected = torch.cat([core_vae.decode(latents[s:s + 2]) for s in range(0, 5, 2)])
    assert torch.equal(out, expected)
    schema = SonicDecode.GET_SCHEMA()
    assert schema.display_name == "Sonic Decode (chunked)" and schema.category == "Sonic/video"
    assert [i.id for i in schema.inputs] == ["vae", "latent", "chunk_size"] and schema.inputs[2].default == 8
    assert all(i.tooltip for i in schema.inputs) and all(o.tooltip for o in schema.outputs)
    with pytest.raises(ValueError, match="frames, 4, h, w"):
        SonicDecode.execute(core_vae, {"samples": torch.zeros(1, 4, 3, 2, 2)}, 8)


def test_decode_progress_once_per_chunk_and_cancel(vae):
    events = []
    previous = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: events.append((value, total)))
    try:
        frames = decode_latents(vae, _latents(10), chunk_size=4)
        assert vae.calls == [4, 4, 2] and frames.shape == (10, 16, 16, 3)
        assert events == [(1, 3), (2, 3), (3, 3)]
    finally:
        comfy.utils.set_progress_bar_global_hook(previous)


def test_out_of_memory_retries_once_then_explains(core_vae, monkeypatch):
    real = core_vae.first_stage_model.decode
    failures = []

    def flaky(z, **kwargs):
        if len(failures) < budget:
            failures.append(z.shape[0])
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(z, **kwargs)

    monkeypatch.setattr(core_vae.first_stage_model, "decode", flaky)
    latents = _latents(3, seed=3)
    budget = 1
    with torch.inference_mode():
        retried = decode_latents(core_vae, latents, chunk_size=3)
        expected = core_vae.decode(latents)
    assert failures == [3] and torch.equal(retried, expected)  # retried whole, never split or tiled
    failures.clear()
    budget = 2
    with pytest.raises(torch.OutOfMemoryError, match="lower decode_chunk_size"):
        decode_latents(core_vae, latents, chunk_size=3)
    assert failures == [3, 3]


# --- RIFE -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk, batch", [(3, 2), (4, 4), (1, 3)])
def test_interpolation_across_chunk_borders_equals_the_whole_clip(rife, chunk, batch):
    frames = torch.rand(7, 16, 24, 3, generator=torch.Generator().manual_seed(3))
    chunks = (frames[s:s + chunk] for s in range(0, 7, chunk))
    streamed = torch.cat(list(stream_frames(chunks, rife, batch, group_size=5)))
    assert torch.equal(streamed, interpolate_x2(frames, rife, batch))
    held = torch.cat(list(stream_frames(iter([frames]), rife, batch, hold_last=True)))
    assert held.shape[0] == 14 and torch.equal(held[:13], streamed) and torch.equal(held[13], frames[-1])


def test_interpolate_node(rife):
    frames = torch.rand(4, 16, 16, 3, generator=torch.Generator().manual_seed(4))
    images, fps = prepared_node(SonicInterpolate).execute(Models(rife), frames, 3).args
    assert images.shape == (7, 16, 16, 3) and fps == 25.0 and images.device == mm.intermediate_device()
    assert torch.equal(images, interpolate_x2(frames, rife, 3))
    assert next(rife.parameters()).device == mm.unet_offload_device()
    with pytest.raises(ValueError, match="RIFE/flownet.pkl is not loaded"):
        SonicInterpolate.execute(Models(None), frames, 3)
    schema = SonicInterpolate.GET_SCHEMA()
    assert [i.id for i in schema.inputs] == ["sonic_model", "images", "batch_size"]
    assert all(i.tooltip for i in schema.inputs) and all(o.tooltip for o in schema.outputs)


# --- streaming save ---------------------------------------------------------------------------------------------


def _audio(seconds: float, rate: int = 16000, channels: int = 2) -> dict:
    t = torch.arange(round(seconds * rate)) / rate
    return {"waveform": (0.3 * torch.sin(2 * math.pi * 330 * t)).repeat(1, channels, 1), "sample_rate": rate}


def test_save_node_writes_video_with_audio_and_returns_its_path(output_dir, rife, vae):
    n = 11
    node = prepared_node(SonicSaveVideo, PROMPT={"8": {"class_type": "SonicSaveVideo"}})
    out = node.execute(vae=vae, latent={"samples": _latents(n, 3, 2)}, sonic_model=Models(rife),
                       audio=_audio(n / 12.5), decode_chunk_size=4, filename_prefix="sonic/Sonic")
    path = Path(out.args[0])
    assert path == output_dir / "sonic" / "Sonic_00001_.mp4" and path.is_file()
    assert out.ui.as_dict() == {"images": [{"filename": "Sonic_00001_.mp4", "subfolder": "sonic", "type": "output"}],
                                "animated": (True,)}
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.width, video.height, video.frames) == (16, 24, 2 * n)  # 2N−1 and the held last frame
        assert float(video.duration * video.time_base) == pytest.approx(n / 12.5)
        assert float(audio.duration * audio.time_base) == pytest.approx(n / 12.5, abs=1e-3)
        assert audio.channels == 2 and '"SonicSaveVideo"' in container.metadata["prompt"]
    again = node.execute(vae=vae, latent={"samples": _latents(3)}, interpolate=False, audio=None)
    assert Path(again.args[0]).name == "Sonic_00002_.mp4"  # core's numbering
    with av.open(again.args[0]) as container:
        assert container.streams.video[0].frames == 3 and not container.streams.audio
    assert _files(output_dir) == ["sonic/Sonic_00001_.mp4", "sonic/Sonic_00002_.mp4"]


def test_save_node_pastes_back_into_the_original(output_dir, vae):
    original = torch.rand(1, 50, 40, 3, generator=torch.Generator().manual_seed(5))
    image = SonicImageEmbeds(concat_latent=torch.zeros(1, 4, 2, 2), image_embeds=torch.zeros(1, 8),
                             face_mask=torch.ones(1, 1, 16, 16), image=torch.zeros(1, 16, 16, 3),
                             original=original, crop_box=(6, 10, 30, 34))
    out = prepared_node(SonicSaveVideo).execute(vae=vae, latent={"samples": _latents(4)}, image=image,
                                        interpolate=False, feather=4, filename_prefix="pasted")
    with av.open(out.args[0]) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height, stream.frames) == (40, 50, 4)


def test_save_node_refuses_interpolation_without_rife(output_dir, vae):
    with pytest.raises(ValueError, match=RIFE_MISSING.split(" —")[0]):
        prepared_node(SonicSaveVideo).execute(vae=vae, latent={"samples": _latents(3)}, sonic_model=Models(None))
    with pytest.raises(ValueError, match="needs the sonic_model input"):
        prepared_node(SonicSaveVideo).execute(vae=vae, latent={"samples": _latents(3)})
    assert _files(output_dir) == []


def test_cancel_mid_write_leaves_no_file_and_the_next_run_succeeds(output_dir, rife, vae):
    seen = []

    def hook(value, total, preview, node_id=None):
        seen.append(value)
        if value == 4:
            assert list(output_dir.rglob(".*.partial.mp4")), "the file should be open by now"
            mm.interrupt_current_processing()  # what the Cancel button does

    previous = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            prepared_node(SonicSaveVideo).execute(vae=vae, latent={"samples": _latents(20)}, sonic_model=Models(rife),
                                          audio=_audio(1.6), decode_chunk_size=4)
    finally:
        comfy.utils.set_progress_bar_global_hook(previous)
    assert seen == [1, 2, 3, 4] and vae.calls == [4] * 4  # stopped at the 4th of 5 chunks, mid-write
    assert _files(output_dir) == []  # neither the mp4 nor its partial file
    assert not mm.processing_interrupted()
    out = prepared_node(SonicSaveVideo).execute(vae=vae, latent={"samples": _latents(20)}, sonic_model=Models(rife),
                                        audio=_audio(1.6), decode_chunk_size=4)
    assert _files(output_dir) == ["sonic/Sonic_00001_.mp4"] and Path(out.args[0]).is_file()


def test_save_node_schema():
    schema = SonicSaveVideo.GET_SCHEMA()
    assert schema.display_name == "Sonic Decode + Save Video" and schema.is_output_node
    ids = [i.id for i in schema.inputs]
    assert ids == ["vae", "latent", "sonic_model", "image", "audio", "interpolate", "paste_back", "feather",
                   "decode_chunk_size", "filename_prefix", "crf"]
    defaults = {i.id: getattr(i, "default", None) for i in schema.inputs}
    assert defaults["interpolate"] is True and defaults["paste_back"] is True and defaults["decode_chunk_size"] == 8
    assert defaults["filename_prefix"] == "sonic/Sonic" and defaults["crf"] == 18
    assert all(i.tooltip for i in schema.inputs) and all(o.tooltip for o in schema.outputs)
    assert not decode_mod.__name__.startswith("nodes.")  # imported relatively, as part of the pack


# --- each stage says its own message ------------------------------------------------------------------------------


def _out_of_memory(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")


def _save_error(**kwargs) -> BaseException:
    with pytest.raises((torch.OutOfMemoryError, OSError)) as caught:
        prepared_node(SonicSaveVideo).execute(latent={"samples": _latents(10)}, decode_chunk_size=4, audio=_audio(0.8),
                                      **kwargs)
    return caught.value


def test_out_of_memory_in_the_decode_is_the_decodes_message_not_rifes(output_dir, rife, vae, monkeypatch):
    decode = vae.first_stage_model.decode

    def second_chunk_fails(z, **kwargs):  # decodes the first chunk, runs out of memory on the second
        if vae.calls:
            vae.calls.append(z.shape[0])
            _out_of_memory()
        return decode(z, **kwargs)

    monkeypatch.setattr(vae.first_stage_model, "decode", second_chunk_fails)
    error = _save_error(vae=vae, sonic_model=Models(rife))
    assert vae.calls == [4, 4, 4]  # the second chunk whole, and its one retry
    assert type(error) is torch.OutOfMemoryError
    assert str(error) == (
        "Sonic decode ran out of memory on a chunk of 4 frames at 16×16. The temporal decoder must see the whole "
        "chunk, so it is not tiled: lower decode_chunk_size (fewer frames mixed together; pixels change slightly) or "
        "the resolution, or close other models. Sampling is cached, so a re-run only redoes the decode.")
    assert _files(output_dir) == []


def test_out_of_memory_in_rife_is_rifes_message(output_dir, rife, vae, monkeypatch):
    monkeypatch.setattr(rife, "forward", _out_of_memory)
    error = _save_error(vae=vae, sonic_model=Models(rife))
    assert type(error) is torch.OutOfMemoryError
    assert str(error) == (
        "RIFE ran out of memory interpolating 16×16 frames 4 pairs at a time. Lower batch_size (Sonic Interpolate) "
        "or decode_chunk_size (Sonic Save Video), lower the Reference Image resolution, or turn interpolation off.")
    assert next(rife.parameters()).device == mm.unet_offload_device() and _files(output_dir) == []
    with pytest.raises(torch.OutOfMemoryError) as caught:
        prepared_node(SonicInterpolate).execute(Models(rife), torch.rand(3, 16, 32, 3), 2)
    assert str(caught.value).startswith("RIFE ran out of memory interpolating 32×16 frames 2 pairs at a time.")


def test_out_of_memory_in_paste_back_is_paste_backs_message(output_dir, vae, monkeypatch):
    from sonic_model.video import video_pipeline

    monkeypatch.setattr(video_pipeline, "paste_back", _out_of_memory)
    image = SonicImageEmbeds(concat_latent=torch.zeros(1, 4, 2, 2), image_embeds=torch.zeros(1, 8),
                             face_mask=torch.ones(1, 1, 16, 16), image=torch.zeros(1, 16, 16, 3),
                             original=torch.rand(1, 50, 40, 3), crop_box=(6, 10, 30, 34))
    error = _save_error(vae=vae, image=image, interpolate=False)
    assert type(error) is torch.OutOfMemoryError
    assert str(error) == ("Paste-back ran out of memory putting 8 frames into the 40×50 original picture. Lower "
                          "decode_chunk_size, or turn paste_back off (the video is then the cropped face).")
    assert _files(output_dir) == []


def test_a_failed_write_is_the_muxers_message(output_dir, rife, vae, monkeypatch):
    from sonic_model.video.video_writer import StreamingMp4Writer

    def broken_pipe(self, frames):
        raise OSError(32, "Broken pipe")

    monkeypatch.setattr(StreamingMp4Writer, "write_frames", broken_pipe)
    error = _save_error(vae=vae, sonic_model=Models(rife))
    assert type(error) is OSError
    path = output_dir / "sonic" / "Sonic_00001_.mp4"
    assert str(error) == (f"Writing the video {path} failed ([Errno 32] Broken pipe). Check that the output folder "
                          "is writable and the disk has room; no partial file was left.")
    assert _files(output_dir) == []
