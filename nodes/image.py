"""Sonic Reference Image: find the face, optionally crop around it, resize, build the face mask, and encode the
VAE latent and CLIP embedding with core's VAE and CLIP vision."""
from __future__ import annotations

import logging

import numpy as np
import torch

import comfy.model_management as mm
from comfy_api.latest import io

from ..sonic_model.image.face_detect import FaceBox, faces_by_size, select_face
from ..sonic_model.pixels import to_uint8
from ..sonic_model.image.reference_image import CLIP_SIZE, NO_FACE_WHOLE, check_image_size, clip_pixels_224, \
    no_detector_message, prepare_reference
from . import menu
from .sonic_types import SonicImage, SonicImageEmbeds, SonicModel, SonicModels

NO_FACE_OPTIONS = ["error", "whole image"]
DETECTOR_WHERE = " from models/sonic (or the loader's face_detector is 'none')"  # where ComfyUI looks for it
DETECTOR_MISSING = no_detector_message(DETECTOR_WHERE)


def first_rgb_uint8(image: torch.Tensor) -> np.ndarray:
    """IMAGE (B, H, W, C) → the first image as (H, W, 3) uint8: alpha dropped, greyscale expanded."""
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[0] == 0:
        raise ValueError(f"The image input must be an IMAGE (B, H, W, C); got shape {tuple(image.shape)}.")
    if image.shape[0] > 1:
        logging.warning("Sonic Reference Image: the image input is a batch of %d; using the first image only.",
                        image.shape[0])
    first, channels = image[0], image.shape[-1]
    if channels in (3, 4):
        first = first[..., :3]  # RGBA: the alpha is not part of the picture Sonic animates
    elif channels in (1, 2):
        first = first[..., :1].expand(-1, -1, 3)  # greyscale (+ alpha)
    else:
        raise ValueError(f"The image has {channels} channels; Sonic needs an RGB picture (3 channels).")
    return to_uint8(first).cpu().numpy()


def first_mask(mask: torch.Tensor | None) -> np.ndarray | None:
    """MASK (B, H, W) or (H, W) → (H, W) float32 of the first mask."""
    if mask is None:
        return None
    if mask.ndim == 3:
        mask = mask[0]
    if mask.ndim != 2:
        raise ValueError(f"The mask input must be a MASK (B, H, W); got shape {tuple(mask.shape)}.")
    return mask.float().cpu().numpy()


def detect_faces(models: SonicModels, rgb: np.ndarray, no_face: str) -> list[FaceBox] | None:
    """The detector's faces, or None when there is no detector and whole-image mode allows it."""
    detector = models.face_detector
    if detector is None:
        if no_face.replace(" ", "_") == NO_FACE_WHOLE:
            return None
        raise ValueError(DETECTOR_MISSING)
    return detector.detect(rgb)


def size_rank(faces: list[FaceBox], face_index: int) -> int:
    """Where the animated face stands by size (0 = the largest), for the readout."""
    return faces_by_size(faces).index(select_face(faces, face_index))


@torch.no_grad()
def prepare_sonic_image(models: SonicModels, vae, clip_vision, image: torch.Tensor, resolution: int = 512,
                        crop: bool = False, expand_ratio: float = 0.5, no_face: str = "error",
                        face_index: int = -1, mask: torch.Tensor | None = None,
                        known_faces: list[FaceBox] | None = None) -> SonicImageEmbeds:
    """Everything the node does, without the ComfyUI node wrapper. `known_faces` replaces the detection on the
    whole picture (Sonic Speakers passes the one face it chose, or none for a mask)."""
    rgb = first_rgb_uint8(image)
    check_image_size(rgb.shape[1], rgb.shape[0])
    faces = known_faces if known_faces is not None else detect_faces(models, rgb, no_face)
    detector = models.face_detector
    prepared = prepare_reference(rgb, faces, crop=crop, expand_ratio=expand_ratio, short_side=int(resolution),
                                 no_face=no_face, user_mask=first_mask(mask),
                                 face_index=face_index,
                                 redetect=detector.detect if detector is not None else None)
    if faces:
        logging.info("Sonic Reference Image: %d face(s) found; animating the face at %s.", len(faces),
                     tuple(round(v) for v in prepared.face) if prepared.face else None)

    latent = vae.encode(prepared.image[:, :, :, :3])  # unscaled; core applies x·2−1 and takes the mode
    if latent.ndim != 4 or latent.shape[0] != 1:
        raise ValueError(f"The VAE returned a latent of shape {tuple(latent.shape)}; Sonic needs the SVD VAE "
                         "(one 4-channel image latent).")
    # Squash to the CLIP's own input size with Lanczos, so core skips its bicubic resize and centre crop (parity).
    clip_size = int(getattr(clip_vision, "image_size", CLIP_SIZE) or CLIP_SIZE)
    embeds = clip_vision.encode_image(clip_pixels_224(prepared.pixels, clip_size), crop=False)["image_embeds"]
    device = mm.intermediate_device()
    original = torch.from_numpy(rgb.astype(np.float32) / 255)[None]
    report = {"batch": int(image.shape[0]) if image.ndim == 4 else 1,
              "faces": None if faces is None else len(faces),
              "face": size_rank(faces, face_index) if prepared.face is not None and faces else None,
              "size": [int(prepared.image.shape[2]), int(prepared.image.shape[1])],
              "crop": prepared.crop_box is not None}
    return SonicImageEmbeds(concat_latent=latent.float().to(device),
                            image_embeds=embeds.float().reshape(1, -1).to(device),
                            face_mask=prepared.mask, image=prepared.image, original=original,
                            crop_box=prepared.crop_box, report=report)


class SonicReferenceImage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SonicReferenceImage",
            display_name="Sonic Reference Image",
            category=menu.CONDITIONING,
            description="Prepares the portrait as the official Sonic does: finds the largest face, optionally crops "
                        "a square around it, resizes (short side = resolution, sides multiples of 64), builds the "
                        "face mask, and encodes the VAE latent and CLIP embedding.",
            inputs=[
                SonicModel.Input("sonic_model", tooltip="From the Sonic loader: its face detector finds the face."),
                io.Vae.Input("vae", tooltip="SVD's VAE (e.g. from Image Only Checkpoint Loader with svd_xt)."),
                io.ClipVision.Input("clip_vision", tooltip="SVD's CLIP vision (ViT-H), e.g. from Image Only "
                                                           "Checkpoint Loader."),
                io.Image.Input("image", tooltip="The portrait to animate. A batch uses its first image; alpha is "
                                                "ignored."),
                io.Int.Input("resolution", default=512, min=64, max=2048, step=64,
                             tooltip="Short side of the video in pixels (multiple of 64; official 512). The long "
                                     "side follows the picture's aspect. Larger needs much more VRAM."),
                io.Boolean.Input("crop", default=False,
                                 tooltip="Crop a square around the face before animating (recommended for wide or "
                                         "full-body shots, which otherwise animate the whole picture at high "
                                         "cost). Paste-back can put the crop back into the picture."),
                io.Float.Input("expand_ratio", default=0.5, min=0.0, max=5.0, step=0.05,
                               tooltip="With crop: room around the face on each side, as a share of the face's "
                                       "width/height (official 0.5)."),
                io.Combo.Input("no_face", options=NO_FACE_OPTIONS, default="error",
                               tooltip="When no face is found (cartoons, profiles, tiny faces): stop with a "
                                       "message, or animate the whole picture (the mask input, if connected, marks "
                                       "where the face is)."),
                io.Int.Input("face_index", default=-1, min=-1, max=99,
                             tooltip="Which face when there are several: -1 = the largest; 0, 1, 2 … = the "
                                     "first, second, third … face in the detector's order (most confident "
                                     "first). The readout says which face by size was animated."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional face mask, same size as the image: where the audio drives the "
                                      "face. Replaces the detected face box; needed to point at the face when no "
                                      "face can be detected."),
            ],
            outputs=[
                SonicImage.Output(display_name="sonic_image",
                                  tooltip="Latent, CLIP embedding and face mask for the Sonic nodes, plus the "
                                          "original and crop box for paste-back."),
                io.Image.Output(display_name="image",
                                tooltip="The prepared reference (cropped and resized): what Sonic animates."),
                io.Mask.Output(display_name="face_mask",
                               tooltip="The face mask the audio attention uses, at the prepared image's size."),
            ],
        )

    @classmethod
    def execute(cls, sonic_model, vae, clip_vision, image, resolution, crop, expand_ratio, no_face, face_index,
                mask=None) -> io.NodeOutput:
        embeds = prepare_sonic_image(sonic_model, vae, clip_vision, image, resolution, crop, expand_ratio,
                                     no_face, face_index, mask)
        # The readout says what was found: faces (None: no detector), the face used by size rank, the batch.
        return io.NodeOutput(embeds, embeds.image, embeds.face_mask[:, 0], ui={"sonic_image": [embeds.report]})
