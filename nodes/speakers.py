"""Several speakers in one picture: Sonic Speakers (faces ↔ tracks, per-face conditioning, the mixed sound), Sonic
Speakers KSampler (the faces one after another) and Sonic Speakers Save Video (every face pasted into one video)."""
from __future__ import annotations

import dataclasses

import torch

import comfy.samplers
from comfy_api.latest import io

from ..sonic_model.image.reference_image import check_image_size, mask_bounding_box, no_detector_message
from ..sonic_model.speakers.speakers import FACE_ORDERS, LEFT_TO_RIGHT, box_centre, features_cut, mix_tracks, \
    padded_track, pair_tracks_with_faces, seconds_of, speakers_preview
from ..sonic_model.video.video_pipeline import PasteFaces
from ..sonic_model.audio.whisper_features import predict_buckets
from . import menu
from .audio import encode_sonic_audio, trimmed_audio
from .decode import DEFAULT_CHUNK
from .image import DETECTOR_WHERE, detect_faces, first_mask, first_rgb_uint8, prepare_sonic_image
from .motion import AUTO, CUSTOM, DEFAULT_PRESET, PRESETS, dynamic_scale, motion_buckets
from .sampling import _guidance_inputs, run_sonic_sampler
from .sonic_types import SonicModel, SonicModels, SonicSpeakers, SonicSpeakersBundle, Speaker
from .video import INTERPOLATE_TOOLTIP, rife_patcher, save_sonic_video, saved_video_output, saved_video_schema, \
    video_metadata, writer_inputs

MAX_SPEAKERS = 4


def speaker_masks(masks: list, width: int, height: int) -> list:
    """Each track's mask as (H, W) numpy or None, checked against the picture."""
    checked = []
    for track, mask in enumerate(masks, start=1):
        array = first_mask(mask)
        if array is not None and array.shape != (height, width):
            raise ValueError(f"mask_{track} is {array.shape[1]}×{array.shape[0]} but the image is {width}×{height}: "
                             "connect a mask of the same size as the image.")
        if array is not None and mask_bounding_box(array) is None:
            raise ValueError(f"mask_{track} is empty: paint the face of speaker {track}, or disconnect it.")
        checked.append(array)
    return checked


def speaker_faces(models: SonicModels, rgb, masks: list, face_order: str, faces: str) -> tuple[list, list, int | None]:
    """The library's pairing of tracks with faces, with the bundle's face detector (run only if a track has no mask)."""
    detect = None if models.face_detector is None else (lambda: detect_faces(models, rgb, "error"))
    return pair_tracks_with_faces(masks, detect, face_order, faces,
                                  no_detector_message(DETECTOR_WHERE, "connect a mask for every speaker"))


@torch.no_grad()
def prepare_speakers(models: SonicModels, vae, clip_vision, image: torch.Tensor, tracks: list[dict], masks: list,
                     face_order: str = LEFT_TO_RIGHT, faces: str = "", resolution: int = 512,
                     expand_ratio: float = 0.5, motion_preset: str = DEFAULT_PRESET, beta: float = 1.0,
                     node_id: str | None = None) -> tuple[SonicSpeakersBundle, dict, torch.Tensor, dict]:
    """Everything Sonic Speakers does: (speakers, mixed audio, preview IMAGE, readout)."""
    rgb = first_rgb_uint8(image)
    height, width = rgb.shape[:2]
    check_image_size(width, height)
    masks = speaker_masks(masks, width, height)
    chosen, labels, found = speaker_faces(models, rgb, masks, face_order, faces)
    scale = dynamic_scale(motion_preset, beta)
    longest = max(seconds_of(track) for track in tracks)
    prepared = []
    for track, mask, face in zip(tracks, masks, chosen):
        if mask is None:  # the official crop around the chosen face (re-detected on the crop for the mask)
            embeds = prepare_sonic_image(models, vae, clip_vision, image, resolution, True, expand_ratio, "error",
                                         0, None, known_faces=[face])
        else:  # the mask is the face: crop around its bounding box, the mask drives the audio attention
            embeds = prepare_sonic_image(models, vae, clip_vision, image, resolution, True, expand_ratio,
                                         "whole image", -1, torch.from_numpy(mask), known_faces=[])
        audio, _ = encode_sonic_audio(models, padded_track(track, longest), node_id=node_id)
        prepared.append((embeds, audio, face if mask is not None else face.box))
    frames = min(audio.num_frames for _, audio, _ in prepared)  # a track at another rate may round to one more
    speakers = []
    for embeds, audio, box in prepared:
        audio = features_cut(audio, frames)
        raw = predict_buckets(models.audio2bucket, audio, embeds.image_embeds).float().cpu()
        speakers.append(Speaker(image=embeds, audio=audio, motion=motion_buckets(raw, scale, AUTO, AUTO),
                                face=tuple(float(v) for v in box)))
    mix, rate = mix_tracks([(t["waveform"], t["sample_rate"]) for t in tracks])
    mixed = trimmed_audio({"waveform": mix[None], "sample_rate": rate}, frames)
    readout = {"faces": found, "frames": frames,
               "tracks": [{"track": i, "face": label} for i, label in enumerate(labels, start=1)]}
    bundle = SonicSpeakersBundle(speakers, speakers[0].image.original)
    return bundle, mixed, speakers_preview(rgb, [s.face for s in speakers]), readout


class SonicSpeakersNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        track = "The voice of speaker {n} (e.g. from Load Audio). Tracks of different lengths are padded with " \
                "silence to the longest; silence drives the face as Sonic drives silence."
        mask = "Optional: a mask painting speaker {n}'s face, same size as the image. Replaces face detection for " \
               "this speaker (its bounding box is the face)."
        return io.Schema(
            node_id="SonicSpeakers",
            display_name="Sonic Speakers",
            category=menu.SPEAKERS,
            description="Several speakers in one picture (2–4 faces, one audio track each, e.g. a dialogue): crops "
                        "each face as the official Sonic does, prepares its reference, audio tokens and motion "
                        "buckets, and mixes the tracks into the video's sound. Faces are found by the detector "
                        "(or given as masks) and paired with the tracks in order.",
            inputs=[
                SonicModel.Input("sonic_model", tooltip="From 'Load SVD + Sonic weights' (face detector, Whisper, "
                                                        "audio adapters)."),
                io.Vae.Input("vae", tooltip="SVD's VAE (from 'Load SVD + Sonic weights')."),
                io.ClipVision.Input("clip_vision", tooltip="SVD's CLIP vision (from 'Load SVD + Sonic weights')."),
                io.Image.Input("image", tooltip="The picture with 2–4 faces. A batch uses its first image."),
                io.Audio.Input("audio_1", tooltip=track.format(n=1)),
                io.Audio.Input("audio_2", tooltip=track.format(n=2)),
                io.Combo.Input("face_order", options=FACE_ORDERS, default=LEFT_TO_RIGHT,
                               tooltip="How the found faces are numbered for `faces`: from the left edge of the "
                                       "picture, or from the largest face."),
                io.String.Input("faces", default="",
                                tooltip="Which face each track drives, as face numbers in face_order (0 = first), "
                                        "e.g. \"1, 0\" to swap two speakers. One number per track without a mask. "
                                        "Empty = the first faces in order."),
                io.Int.Input("resolution", default=512, min=64, max=2048, step=64,
                             tooltip="Side of each face's square crop as Sonic animates it (official 512). Larger "
                                     "needs much more VRAM."),
                io.Float.Input("expand_ratio", default=0.5, min=0.0, max=5.0, step=0.05,
                               tooltip="Room around each face on each side, as a share of the face's width/height "
                                       "(official crop: 0.5)."),
                io.Combo.Input("motion_preset", options=[*PRESETS, CUSTOM], default=DEFAULT_PRESET,
                               tooltip="Dynamic scale β for every face: mild 0.5, moderate 1.0 (official), intense "
                                       "2.0, or custom (the beta slider)."),
                io.Float.Input("beta", default=1.0, min=0.0, max=4.0, step=0.05, round=0.01,
                               display_mode=io.NumberDisplay.slider,
                               tooltip="β used when motion_preset is 'custom'."),
                io.Audio.Input("audio_3", optional=True, tooltip=track.format(n=3)),
                io.Audio.Input("audio_4", optional=True, tooltip=track.format(n=4)),
                *[io.Mask.Input(f"mask_{n}", optional=True, tooltip=mask.format(n=n))
                  for n in range(1, MAX_SPEAKERS + 1)],
            ],
            outputs=[
                SonicSpeakers.Output(display_name="speakers",
                                     tooltip="Every speaker's reference, audio tokens and motion, plus the picture: "
                                             "for Sonic Speakers KSampler."),
                io.Audio.Output(display_name="audio",
                                tooltip="Every track mixed (at the highest rate among them, scaled down only if it "
                                        "would clip), trimmed to the video's frames: mux this one into the video."),
                io.Int.Output(display_name="num_frames", tooltip="Frames Sonic will generate (12.5 per second), "
                                                                 "as long as the longest track."),
                io.Image.Output(display_name="preview",
                                tooltip="The picture with each chosen face outlined and numbered by its track."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, sonic_model, vae, clip_vision, image, audio_1, audio_2, face_order, faces, resolution,
                expand_ratio, motion_preset, beta, audio_3=None, audio_4=None, mask_1=None, mask_2=None,
                mask_3=None, mask_4=None) -> io.NodeOutput:
        given = [(a, m) for a, m in zip((audio_1, audio_2, audio_3, audio_4), (mask_1, mask_2, mask_3, mask_4))
                 if a is not None]
        bundle, mixed, preview, readout = prepare_speakers(
            sonic_model, vae, clip_vision, image, [a for a, _ in given], [m for _, m in given], face_order, faces,
            resolution, expand_ratio, motion_preset, beta, node_id=cls.hidden.unique_id)
        return io.NodeOutput(bundle, mixed, readout["frames"], preview, ui={"sonic_speakers": [readout]})


def sample_speakers(model, bundle: SonicSpeakersBundle, seed: int, steps: int, cfg_image: float, cfg_audio: float,
                    shift: int, window: int, sampler_name: str, scheduler: str, denoise: float,
                    node_id: str | None = None) -> SonicSpeakersBundle:
    """Every face sampled in turn (one guider alive at a time), latents kept on the intermediate device."""
    sampled = []
    for index, speaker in enumerate(bundle.speakers):
        latents = run_sonic_sampler(model, speaker.audio, speaker.image, speaker.motion, seed, steps, cfg_image,
                                    cfg_audio, shift, window, sampler_name, scheduler, denoise, node_id=node_id,
                                    part=(index, len(bundle.speakers)))
        sampled.append(dataclasses.replace(speaker, latents=latents))  # already on the intermediate device
    return SonicSpeakersBundle(sampled, bundle.original)


class SonicSpeakersSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        guidance = _guidance_inputs()
        return io.Schema(
            node_id="SonicSpeakersSampler",
            display_name="Sonic Speakers KSampler",
            category=menu.SPEAKERS,
            description="Samples every speaker's face with Sonic's shift fusion, one face after another so memory "
                        "stays that of one face. The same settings as Sonic Shift-Fusion KSampler.",
            inputs=[
                guidance[0],
                SonicSpeakers.Input("speakers", tooltip="From 'Sonic Speakers'."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise seed, the same for every face. The same seed and inputs give the same "
                                     "video."),
                io.Int.Input("steps", default=25, min=1, max=200,
                             tooltip="Denoising steps per face (official: 25)."),
                *guidance[4:],
                io.Combo.Input("sampler_name", options=list(comfy.samplers.KSampler.SAMPLERS), default="euler",
                               tooltip="ComfyUI sampler (official: euler)."),
                io.Combo.Input("scheduler", options=list(comfy.samplers.KSampler.SCHEDULERS), default="karras",
                               tooltip="σ schedule over 700 → 0.002 (official: karras)."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="1.0 starts from pure noise (official); lower stays closer to the photo."),
            ],
            outputs=[SonicSpeakers.Output(display_name="speakers",
                                          tooltip="The speakers with each face's sampled latents, for Sonic "
                                                  "Speakers Save Video.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, speakers, seed, steps, cfg_image, cfg_audio, shift, window, sampler_name, scheduler,
                denoise) -> io.NodeOutput:
        return io.NodeOutput(sample_speakers(model, speakers, seed, steps, cfg_image, cfg_audio, shift, window,
                                             sampler_name, scheduler, denoise, node_id=cls.hidden.unique_id))


def speakers_paste(bundle: SonicSpeakersBundle, feather: int) -> PasteFaces:
    """Every face's crop into one copy of the picture; overlaps go to the nearer face centre."""
    if any(s.latents is None for s in bundle.speakers):
        raise ValueError("These speakers are not sampled yet: connect 'Sonic Speakers KSampler' before the video.")
    return PasteFaces(bundle.original, [s.crop_box for s in bundle.speakers],
                      [box_centre(s.face) for s in bundle.speakers], feather)


class SonicSpeakersSaveVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SonicSpeakersSaveVideo",
            display_name="Sonic Speakers Save Video",
            category=menu.SPEAKERS,
            description="Decodes every speaker's face, interpolates (RIFE ×2) and pastes all of them into one copy "
                        "of the picture, chunk by chunk, straight into one mp4 (H.264 + AAC) with the mixed sound. "
                        "Outside the faces' crops the picture stays exactly the original.",
            inputs=[
                io.Vae.Input("vae", tooltip="SVD's VAE (from 'Load SVD + Sonic weights')."),
                SonicSpeakers.Input("speakers", tooltip="From 'Sonic Speakers KSampler'."),
                SonicModel.Input("sonic_model", optional=True,
                                 tooltip="Needed for interpolation: the loaded RIFE model."),
                io.Audio.Input("audio", optional=True, tooltip="The mixed audio from 'Sonic Speakers'."),
                io.Boolean.Input("interpolate", default=True, tooltip=INTERPOLATE_TOOLTIP),
                *writer_inputs("sonic/Sonic_speakers"),
            ],
            **saved_video_schema(),
        )

    @classmethod
    def execute(cls, vae, speakers, interpolate=True, feather=16, decode_chunk_size=DEFAULT_CHUNK,
                filename_prefix="sonic/Sonic_speakers", crf=18, sonic_model=None, audio=None) -> io.NodeOutput:
        paste = speakers_paste(speakers, feather)
        rife = rife_patcher(sonic_model) if interpolate else None  # fail before any decoding
        saved = save_sonic_video(vae, [s.latents for s in speakers.speakers], rife=rife, audio=audio,
                                 chunk_size=decode_chunk_size, filename_prefix=filename_prefix, crf=crf,
                                 metadata=video_metadata(cls.hidden), node_id=cls.hidden.unique_id, faces=paste)
        return saved_video_output(saved)
