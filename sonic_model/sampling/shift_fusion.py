"""Time-aware shift fusion with Sonic's three-way guidance: one denoising evaluation of the whole clip.

Per window it asks a denoiser (core's model call in ComfyUI, `edm_rows_denoiser` alone) for the x0 of the three
guidance rows [uncond, image-only, full], combines them as u + r_i·(i − u) + r_a·(c − i) and averages x0 over the
windows covering each frame. The combination is affine with weights summing to 1, so guiding x0 equals guiding the
v-prediction and converting once (EDM's x0 is affine in v for a fixed x and σ). Because an Euler step is affine in x0
and every window starts from the same x, averaging x0 and stepping once equals the official "step every window, then
average" (`docs/official-behaviour.md` §4).

Where things live: the clip-long state (the noisy latents, the fused x0, the audio tokens and motion buckets) stays
on the device of the noisy latents, ComfyUI's intermediate device (host RAM) when sampling; each window's slices go
to the compute device for its model call and its x0 comes back. So the GPU holds one window's work, whatever the
length of the audio. Without a compute device everything runs where the latents are (the library used alone).
The copies queue behind the GPU's work (sonic_model/sampling/transfers.py): a window's x0 is fused while the next window's
UNet call runs, so the host never makes the card wait between windows. With several devices (a WindowSpread,
sonic_model/sampling/window_devices.py) each runs its share of the step's windows on its own host thread and the host fuses
them in window order, exactly as one device would.
"""
from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from .shift_windows import num_windows, shifted_windows
from .transfers import Pending, to_device

if TYPE_CHECKING:
    from .window_devices import WindowSpread

SVD_FPS_ID = 12.5  # the official time id: the generation frame rate as is, not fps − 1
GUIDANCE_ROWS = 3  # [uncond, image-only, full]


@dataclass
class SonicConditioning:
    """Everything the UNet is conditioned on, for the whole clip (frames on the first axis)."""

    concat_latent: torch.Tensor      # (1, 4, h, w) unscaled VAE latent of the reference image
    image_embeds: torch.Tensor       # (1, D) CLIP image embedding
    audio_tokens: torch.Tensor       # (N, T, D) per-frame audio tokens
    null_audio_tokens: torch.Tensor  # (T, D) or (N, T, D): audio2token of a zero window
    motion_buckets: torch.Tensor     # (N, 2) per-frame [head motion, expression], already ×16+16 and scaled
    face_mask: torch.Tensor | None = None  # (1, 1, H, W) pixel-resolution mask for the spatial audio branch
    fps: float = SVD_FPS_ID

    @property
    def num_frames(self) -> int:
        return int(self.audio_tokens.shape[0])

    def to(self, device: torch.device | str) -> SonicConditioning:
        """A copy with every tensor on `device` (dtypes kept; the model call casts to its own dtype)."""
        move = (lambda t: None if t is None else t.to(device))
        return SonicConditioning(move(self.concat_latent), move(self.image_embeds), move(self.audio_tokens),
                                 move(self.null_audio_tokens), move(self.motion_buckets), move(self.face_mask),
                                 self.fps)


@dataclass
class GuidanceRows:
    """One UNet evaluation: R guidance rows × f frames of one window, rows outermost (index row·f + frame)."""

    x: torch.Tensor          # (R·f, 4, h, w) noisy latents (the same window repeated per row)
    sigma: torch.Tensor      # (R·f,) σ per latent, float32
    concat: torch.Tensor     # (R·f, 4, h, w) unscaled reference latent (zeros in the uncond row)
    clip: torch.Tensor       # (R·f, 1, D) CLIP embedding (zeros in the uncond row)
    audio: torch.Tensor      # (R·f, T, D) audio tokens (null tokens in the uncond and image-only rows)
    time_ids: torch.Tensor   # (R, 3) [fps, window-mean bucket 0, window-mean bucket 1], float32
    face_mask: torch.Tensor | None
    frames: int

    @property
    def rows(self) -> int:
        return self.x.shape[0] // self.frames

    def row(self, r: int) -> GuidanceRows:
        part = slice(r * self.frames, (r + 1) * self.frames)
        return GuidanceRows(self.x[part], self.sigma[part], self.concat[part], self.clip[part], self.audio[part],
                            self.time_ids[r:r + 1], self.face_mask, self.frames)


# x0 of every row of a GuidanceRows, (R·f, 4, h, w) float32.
RowsDenoiser = Callable[[GuidanceRows], torch.Tensor]


@dataclass
class FusedPrediction:
    """The clip's x0 after fusion: guided, and the uncond and full rows' own (what post-CFG hooks read; None when
    the caller did not ask for them, which saves two clip-long buffers)."""

    guided: torch.Tensor
    uncond: torch.Tensor | None
    full: torch.Tensor | None


@dataclass
class WindowEvent:
    """Reported after every UNet window, for progress bars, previews, cancellation and parity checks."""

    step: int
    window: int
    windows_per_step: int
    frame_indices: list[int]
    sigma: float
    x: torch.Tensor         # (f, 4, h, w) the window's noisy latents, where the clip's latents are
    denoised: torch.Tensor  # (f, 4, h, w) its guided x0, there too
    device: torch.device | None = None  # where its model call ran


def combine_guidance(u: torch.Tensor, i: torch.Tensor, c: torch.Tensor, cfg_image: float,
                     cfg_audio: float) -> torch.Tensor:
    """Sonic's three-way classifier-free guidance (official `noise_pred` combination)."""
    return u + cfg_image * (i - u) + cfg_audio * (c - i)


class ShiftFusion:
    """One evaluation of the whole clip at σ: the step's shifted windows, guided, fused per frame."""

    def __init__(self, cond: SonicConditioning, *, window: int = 25, shift: int = 7, stride: int | None = None,
                 cfg_image: float = 2.0, cfg_audio: float = 7.5, batched_cfg: bool = True,
                 on_window: Callable[[WindowEvent], None] | None = None):
        if window < 1:
            raise ValueError(f"window must be at least 1 frame (got {window})")
        self.cond = cond
        self.window = window
        self.shift = shift
        self.stride = stride or window
        self.cfg_image = cfg_image
        self.cfg_audio = cfg_audio
        self.batched_cfg = batched_cfg
        self.on_window = on_window
        self.unet_calls = 0
        self._calls_lock = threading.Lock()  # several devices' threads count their calls
        self._on_host: SonicConditioning | None = None
        self._per_run: dict[torch.device, dict] = {}

    @property
    def windows_per_step(self) -> int:
        return num_windows(self.cond.num_frames, self.window, self.stride)

    def _cond_on(self, device: torch.device) -> SonicConditioning:
        """The conditioning beside the clip's latents, moved once per run (and again only if their device changes)."""
        if self._on_host is None or self._on_host.audio_tokens.device != device:
            self._on_host = self.cond.to(device)
        return self._on_host

    def release(self) -> None:
        """Drop the per-run copies (a guider outlives its run in ComfyUI's cache: its copies must not hold VRAM)."""
        self._on_host = None
        self._per_run = {}

    def _per_run_on(self, cond: SonicConditioning, device: torch.device) -> dict:
        """What every window uses whole (reference latent, CLIP embedding, face mask, a shared null token set), on
        the compute device: moved once per run (and device), not per window."""
        if device not in self._per_run:  # each device's thread adds its own entry
            null = cond.null_audio_tokens
            move = (lambda t: None if t is None else to_device(t, device))  # noqa: E731
            self._per_run[device] = {
                "concat": move(cond.concat_latent), "embeds": move(cond.image_embeds), "mask": move(cond.face_mask),
                "null": None if null.dim() == 3 else move(null)}
        return self._per_run[device]

    def _rows(self, cond: SonicConditioning, x: torch.Tensor, sigma: torch.Tensor, idx: torch.Tensor,
              device: torch.device) -> GuidanceRows:
        """One window's three guidance rows on `device`, from the clip's latents and conditioning where they are."""
        f = len(idx)
        whole = self._per_run_on(cond, device)
        xw = to_device(x[idx], device)
        z = whole["concat"].to(x.dtype).expand(f, -1, -1, -1)
        e = whole["embeds"].reshape(1, 1, -1).expand(f, 1, -1)
        null = to_device(cond.null_audio_tokens[idx], device) if whole["null"] is None \
            else whole["null"].unsqueeze(0).expand(f, -1, -1)
        buckets = cond.motion_buckets[idx].float().mean(dim=0)  # window mean, fp32
        ids = torch.cat([torch.full((1,), cond.fps, dtype=torch.float32, device=buckets.device), buckets])
        return GuidanceRows(
            x=xw.repeat(GUIDANCE_ROWS, 1, 1, 1),
            sigma=to_device(sigma, device).expand(GUIDANCE_ROWS * f),
            concat=torch.cat([torch.zeros_like(z), z, z]),
            clip=torch.cat([torch.zeros_like(e), e, e]),
            audio=torch.cat([null, null, to_device(cond.audio_tokens[idx], device)]),
            time_ids=to_device(ids, device).unsqueeze(0).expand(GUIDANCE_ROWS, -1),
            face_mask=whole["mask"], frames=f)

    def _count_call(self) -> None:
        with self._calls_lock:
            self.unet_calls += 1

    def _denoise_rows(self, rows: GuidanceRows, denoise: RowsDenoiser) -> torch.Tensor:
        if self.batched_cfg:
            self._count_call()
            return denoise(rows)
        parts = []
        for r in range(rows.rows):  # low VRAM: one guidance row per UNet call
            self._count_call()
            parts.append(denoise(rows.row(r)))
        return torch.cat(parts)

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, sigma: float, step: int, denoise: RowsDenoiser, *,
                device: torch.device | None = None, with_rows: bool = True,
                spread: WindowSpread | None = None) -> FusedPrediction:
        """x: (N, 4, h, w) noisy latents at `sigma`, `step` counted over the whole schedule; returns fused x0 where
        x is. `device`: where the model calls run (None: where x is). `with_rows`: also fuse the uncond and full
        rows' x0 (post-CFG hooks read them). `spread`: several devices share the windows (then `denoise` and
        `device` are unused: each device has its own)."""
        n = x.shape[0]
        if n != self.cond.num_frames:
            raise ValueError(f"latents have {n} frames but the audio conditioning has {self.cond.num_frames}")
        host = x.device
        device = host if device is None else torch.device(device)
        cond = self._cond_on(host)
        x32 = x.float()
        sigma_t = torch.full((1,), float(sigma), dtype=torch.float32, device=host)
        guided = torch.zeros_like(x32)
        uncond = torch.zeros_like(x32) if with_rows else None
        full = torch.zeros_like(x32) if with_rows else None
        count = torch.zeros(n, device=host, dtype=torch.float32)
        windows = shifted_windows(n, self.window, self.shift, step, self.stride)

        def run_window(frames: list[int], on: torch.device, rows_denoiser: RowsDenoiser) -> tuple:
            """One window's model call on `on`; its x0 (and rows) on the way back to the host."""
            idx = torch.tensor(frames, device=host)
            rows = self._rows(cond, x32, sigma_t, idx, on)
            u, i, c = self._denoise_rows(rows, rows_denoiser).float().reshape(GUIDANCE_ROWS, len(frames),
                                                                               *x.shape[1:])
            x0 = combine_guidance(u, i, c, self.cfg_image, self.cfg_audio)
            return (idx, Pending(x0, host), Pending(u, host) if with_rows else None,
                    Pending(c, host) if with_rows else None, on)

        def fuse(w: int, frames: list[int], idx: torch.Tensor, x0: Pending, u: Pending | None,
                 c: Pending | None, on: torch.device) -> None:
            x0 = x0.result()
            guided.index_add_(0, idx, x0)
            if with_rows:
                uncond.index_add_(0, idx, u.result())
                full.index_add_(0, idx, c.result())
            count.index_add_(0, idx, torch.ones(len(frames), device=host))
            if self.on_window is not None:
                self.on_window(WindowEvent(step, w, len(windows), frames, float(sigma), x32[idx], x0, on))

        if spread is not None and len(spread.devices) > 1:
            self._spread_windows(spread, windows, step, run_window, fuse)
        else:
            waiting = None  # the previous window's x0, on its way back while this window's UNet call is queued
            for w, frames in enumerate(windows):
                # run_window returns before the next window's rows exist: one window's work on the device, not two
                queued = (w, frames, *run_window(frames, device, denoise))
                if waiting is not None:
                    fuse(*waiting)
                waiting = queued
            fuse(*waiting)
        count = count.view(-1, 1, 1, 1)
        return FusedPrediction(guided.div_(count), uncond.div_(count) if with_rows else None,
                               full.div_(count) if with_rows else None)


    @staticmethod
    def _spread_windows(spread: WindowSpread, windows: list[list[int]], step: int, run_window: Callable,
                        fuse: Callable) -> None:
        """Each device's share queued on its own thread; the host fuses window by window in index order, so
        neither the sums nor the progress events depend on which device finishes first."""
        from .window_devices import assign_windows, out_of_memory_on

        owners = assign_windows(len(windows), spread.devices)
        stop = threading.Event()  # set when the host stops early (Cancel, an error): the queued windows are skipped
        owed: Counter = Counter()

        def on_device(w: int, frames: list[int], device: torch.device):
            if stop.is_set():
                return None
            try:
                with torch.no_grad():  # grad mode is per thread
                    return run_window(frames, device, spread.denoisers[device])
            except torch.OutOfMemoryError as error:
                raise out_of_memory_on(device, w, len(windows), step, error) from None

        for w, (frames, device) in enumerate(zip(windows, owners)):
            spread.pool.submit(device, on_device, w, frames, device)
            owed[device] += 1
        try:
            for w, (frames, device) in enumerate(zip(windows, owners)):
                result, error = spread.pool.get_result(device)
                owed[device] -= 1
                if error is not None:
                    raise error
                spread.ran.append((step, w, device))
                fuse(w, frames, *result)
        finally:  # a pool outlives this step (core's lasts the run): leave none of this step's results in it
            stop.set()
            for device, left in owed.items():
                for _ in range(left):
                    spread.pool.get_result(device)


def edm_rows_denoiser(unet: torch.nn.Module) -> RowsDenoiser:
    """The rows denoiser for using the library without ComfyUI: SVD's EDM v-prediction around a Sonic UNet.

    Input x/√(σ²+1) with the reference latent appended, timestep 0.25·ln σ kept in fp32 (as upstream), x0 =
    x/(σ²+1) − v·σ/√(σ²+1). In ComfyUI the same arithmetic is core's (BaseModel.apply_model); a test pins the two equal.
    """
    def denoise(rows: GuidanceRows) -> torch.Tensor:
        param = next(unet.parameters())
        sigma = rows.sigma.float().view(-1, 1, 1, 1)
        c_in = 1.0 / torch.sqrt(sigma * sigma + 1.0)
        sample = torch.cat([rows.x * c_in, rows.concat.to(rows.x.dtype)], dim=1).to(param.dtype)
        r, f = rows.rows, rows.frames
        timestep = (0.25 * rows.sigma.float().log()).reshape(r, f)[:, 0]
        mask = None if rows.face_mask is None else rows.face_mask.to(param.device, param.dtype)
        v = unet(sample.reshape(r, f, *sample.shape[1:]), timestep, added_time_ids=rows.time_ids.to(param.dtype),
                 clip_states=rows.clip.to(param.dtype), audio_tokens=rows.audio.to(param.dtype),
                 face_mask=mask).flatten(0, 1).float()
        return rows.x.float() / (sigma * sigma + 1.0) - v * (sigma * c_in)

    return denoise
