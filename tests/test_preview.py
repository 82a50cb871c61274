"""Progress-bar previews: decoded frames and latents share one resizing rule and one float → uint8 rule."""
import torch

from tools.comfy_runtime import import_pack

import_pack()
from sonic_pack.nodes.preview import PREVIEW_SIDE, preview_image  # noqa: E402
from sonic_pack.nodes.sampling import latent_preview  # noqa: E402


def test_a_preview_keeps_the_aspect_with_its_longer_side_fixed():
    frame = torch.zeros(64, 96, 3)
    frame[..., 0] = 1.0
    image = preview_image(frame)
    assert PREVIEW_SIDE == 256 and image.size == (256, 171) and image.getpixel((10, 10)) == (255, 0, 0)
    assert preview_image(torch.rand(300, 20, 3)).size == (17, 256)
    assert preview_image(torch.rand(1000, 2, 3)).size == (1, 256)  # never a zero-wide picture


def test_a_latent_preview_goes_through_the_same_rules():
    image = latent_preview(torch.zeros(4, 8, 12))
    assert image.size == (256, 171)
    assert image.getpixel((5, 5)) == (128, 128, 128)  # a zero latent is mid-grey, 127.5 rounded (not truncated)
