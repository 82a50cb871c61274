"""Sonic Reference Image: face detection, optional crop, resolution, face mask, VAE latent and CLIP embedding."""
from __future__ import annotations

import logging

import numpy as np
import torch

import comfy.model_management as mm
from comfy_api.latest import io

from ..sonic_model.face_detector import select_face
from ..sonic_model.portrait import clip_pixels, prepare_portrait
from .sonic_types import SonicImage, SonicImageEmbeds, SonicModel, SonicModels

NO_FACE_ERROR, NO_FACE_WHOLE = "error", "whole image"
NO_FACE_MESSAGE = ("No face found in the reference image. Use a clearer, frontal portrait, or set no_face to "
                   "'whole image' to animate the whole picture (optionally connect a mask of the face).")
NO_DETECTOR_MESSAGE = ("The face detector is not loaded (face_detector is 'none' in the loader, or yoloface_v5m.pt "
                       "is missing from models/sonic). Add it, or set no_face to 'whole image'.")


def first_rgb(image: torch.Tensor) -> np.ndarray:
    """IMAGE (B, H, W, C) → (H, W, 3) uint8 of the first image; alpha dropped, greyscale expanded."""
    if image.ndim != 4 or image.shape[0] == 0:
        raise ValueError(f"The image input must be an IMAGE batch (B, H, W, C); got shape {tuple(image.shape)}.")
    if image.shape[0] > 1:
        logging.warning("Sonic Reference Image: the IMAGE input holds %d images; using the first.", image.shape[0])
    first = image[0, :, :, :3] if image.shape[-1] >= 3 else image[0, :, :, :1].expand(-1, -1, 3)
    return (first.float().clamp(0, 1) * 255).round().byte().cpu().numpy()


def find_face(models: SonicModels, rgb: np.ndarray, no_face: str, face_index: int):
    if models.face_detector is None:
        if no_face == NO_FACE_WHOLE:
            return None
        raise ValueError(NO_DETECTOR_MESSAGE)
    face = select_face(models.face_detector.detect(rgb), face_index)
    if face is None and no_face != NO_FACE_WHOLE:
        raise ValueError(NO_FACE_MESSAGE)
    return face


@torch.no_grad()
def prepare_reference(models: SonicModels, vae, clip_vision, image: torch.Tensor, resolution: int, crop: bool,
                      expand_ratio: float, no_face: str, face_index: int,
                      mask: torch.Tensor | None = None) -> SonicImageEmbeds:
    rgb = first_rgb(image)
    face = find_face(models, rgb, no_face, face_index)
    user_mask = None
    if mask is not None:
        user_mask = mask[0].float().cpu().numpy()
        if user_mask.shape != rgb.shape[:2]:
            raise ValueError(f"The mask is {user_mask.shape[1]}×{user_mask.shape[0]} but the image is "
                             f"{rgb.shape[1]}×{rgb.shape[0]}: give a mask of the same size.")
    box = None if face is None else (face.x1, face.y1, face.x2, face.y2)
    prepared = prepare_portrait(rgb, box, crop=crop, expand_ratio=expand_ratio, short_side=resolution,
                                user_mask=user_mask)
    pixels = torch.from_numpy(prepared.image.copy()).float().div(255)[None]        # (1, H, W, 3)
    latent = vae.encode(pixels)                                                    # unscaled (SVD VAE: the mode)
    embeds = clip_vision.encode_image(clip_pixels(prepared.image), crop=False)["image_embeds"]
    original = torch.from_numpy(rgb.copy()).float().div(255)[None]
    return SonicImageEmbeds(concat_latent=latent.float().to(mm.intermediate_device()),
                            image_embeds=embeds.float().reshape(1, -1).to(mm.intermediate_device()),
                            face_mask=torch.from_numpy(prepared.mask)[None, None], image=pixels,
                            original=original, crop_box=prepared.crop_box)


class SonicReferenceImage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SonicReferenceImage",
            display_name="Sonic Reference Image",
            category="Sonic",
            description="Prepares the portrait as the official Sonic does: finds the largest face, optionally crops "
                        "around it, resizes (short side, multiples of 64), builds the face mask, and encodes the "
                        "VAE latent and CLIP embedding.",
            inputs=[
                SonicModel.Input("sonic_model", tooltip="From 'Load SVD + Sonic weights' (its face detector)."),
                io.Vae.Input("vae", tooltip="SVD's VAE, from the loader."),
                io.ClipVision.Input("clip_vision", tooltip="SVD's CLIP vision, from the loader."),
                io.Image.Input("image", tooltip="The portrait. A batch uses its first image; alpha is ignored."),
                io.Int.Input("resolution", default=512, min=64, max=2048, step=64,
                             tooltip="Short side of the generated video in pixels (multiple of 64; official 512). "
                                     "Larger needs much more VRAM."),
                io.Boolean.Input("crop", default=False,
                                 tooltip="Crop a square around the face before animating (recommended for wide or "
                                         "full-body shots; paste-back puts it back into the picture)."),
                io.Float.Input("expand_ratio", default=0.5, min=0.0, max=3.0, step=0.05,
                               tooltip="With crop: how much room around the face, as a share of the face size "
                                       "(official 0.5)."),
                io.Combo.Input("no_face", options=[NO_FACE_ERROR, NO_FACE_WHOLE], default=NO_FACE_ERROR,
                               tooltip="When no face is found: stop with a message, or animate the whole picture "
                                       "(with the mask input as the face area if connected)."),
                io.Int.Input("face_index", default=-1, min=-1, max=64,
                             tooltip="Which face when there are several: -1 or 0 = the largest, 1 = the next "
                                     "largest, …"),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional face mask (same size as the image): where the audio drives the "
                                      "face. Replaces the detected face box."),
            ],
            outputs=[
                SonicImage.Output(display_name="sonic_image",
                                  tooltip="Latent, CLIP embedding and face mask for the Sonic nodes, plus what "
                                          "paste-back needs."),
                io.Image.Output(display_name="image", tooltip="The prepared (cropped, resized) reference."),
                io.Mask.Output(display_name="face_mask", tooltip="The face mask the audio attention uses."),
            ],
        )

    @classmethod
    def execute(cls, sonic_model, vae, clip_vision, image, resolution, crop, expand_ratio, no_face, face_index,
                mask=None) -> io.NodeOutput:
        embeds = prepare_reference(sonic_model, vae, clip_vision, image, resolution, crop, expand_ratio, no_face,
                                   face_index, mask)
        return io.NodeOutput(embeds, embeds.image, embeds.face_mask[:, 0])
