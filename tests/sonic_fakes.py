"""Small stand-ins shared by the node tests: a recording UNet, matching conditioning, and a node class prepared as
the executor prepares it."""
from __future__ import annotations

import inspect

import torch


class RecordingUNet(torch.nn.Module):
    """Same call signature as SonicUNet; a cheap deterministic function of every input, recording each call."""

    def __init__(self, dim: int = 8):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(0.3))
        self.calls: list[dict] = []
        self.dim = dim

    def forward(self, sample, timestep, added_time_ids, clip_states, audio_tokens, face_mask=None):
        b, f = sample.shape[:2]
        self.calls.append({"batch": b, "frames": f, "sample_shape": tuple(sample.shape),
                           "time_ids": added_time_ids.detach().clone()})
        clip = clip_states.reshape(b, f, -1).mean(-1)[..., None, None, None]
        audio = audio_tokens.reshape(b, f, -1).mean(-1)[..., None, None, None]
        ids = added_time_ids.reshape(b, 1, 3, 1, 1).mean(2, keepdim=True) / 40
        v = self.weight * sample[:, :, :4] + 0.1 * sample[:, :, 4:] + clip + 0.5 * audio + ids
        return v * torch.cos(timestep.float()).reshape(-1, 1, 1, 1, 1)  # timestep: 0-d or one per row


def make_conditioning(n: int, h: int = 4, w: int = 4, d: int = 8, t: int = 2, seed: int = 0):
    from sonic_model.sampling.shift_fusion import SonicConditioning

    g = torch.Generator().manual_seed(seed)
    return SonicConditioning(
        concat_latent=torch.randn(1, 4, h, w, generator=g),
        image_embeds=torch.randn(1, d, generator=g),
        audio_tokens=torch.randn(n, t, d, generator=g),
        null_audio_tokens=torch.randn(t, d, generator=g),
        motion_buckets=16 + 16 * torch.rand(n, 2, generator=g),
        face_mask=torch.ones(1, 1, h * 8, w * 8),
    )


def node_inputs(cond):
    """The Sonic nodes' types (audio, image, motion) carrying `cond`, as the sampler nodes receive them."""
    from sonic_pack.nodes.sonic_types import SonicAudioEmbeds, SonicImageEmbeds, SonicMotionBuckets

    n = cond.num_frames
    audio = SonicAudioEmbeds(tokens=cond.audio_tokens, null_tokens=cond.null_audio_tokens,
                             bucket_windows=torch.zeros(n, 50, 1, 8), num_frames=n)
    image = SonicImageEmbeds(concat_latent=cond.concat_latent, image_embeds=cond.image_embeds,
                             face_mask=cond.face_mask, image=torch.zeros(1, 32, 32, 3))
    motion = SonicMotionBuckets(buckets=cond.motion_buckets, predicted=cond.motion_buckets)
    return audio, image, motion


def load_tiny_sonic(models_dir):
    """(SonicModels, UNet MODEL) from a tools/tiny_models.py folder, as the loader builds them (fp32, no detector)."""
    from sonic_pack.nodes.loaders import load_sonic_models

    sonic = models_dir / "sonic"
    return load_sonic_models(unet=sonic / "unet.pth", audio2token=sonic / "audio2token.pth",
                             audio2bucket=sonic / "audio2bucket.pth", whisper=sonic / "whisper-tiny",
                             face_detector=None, rife=sonic / "RIFE" / "flownet.pkl", dtype=torch.float32,
                             low_vram=False)


def prepared_node(cls, unique_id: str = "7", **hidden):
    """The V3 node class as the executor prepares it, with its hidden inputs: 0.3.75 and older take them as a dict,
    later cores take the executor's V3 data with the dict under "hidden_inputs"."""
    values = {"UNIQUE_ID": unique_id, **hidden}
    if "v3_data" in inspect.signature(cls.PREPARE_CLASS_CLONE).parameters:
        values = {"hidden_inputs": values}
    return cls.PREPARE_CLASS_CLONE(values)
