"""Paste-back: the original outside the crop box bit for bit, the feather ramp, resizing, the node's pass-through."""
from __future__ import annotations

import pytest
import torch

from sonic_model.video.paste_back import feather_mask, paste_back, resize_frames


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def _outside(box, height: int, width: int) -> torch.Tensor:
    x1, y1, x2, y2 = box
    inside = torch.zeros(height, width, dtype=torch.bool)
    inside[max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)] = True
    return ~inside


@pytest.mark.parametrize("box", [(10, 6, 42, 38), (0, 0, 20, 20), (30, 20, 70, 60), (-8, -4, 24, 28)])
def test_outside_the_box_is_exactly_the_original(box):
    original = _rand(1, 48, 64, 3, seed=1)
    frames = _rand(3, 32, 32, 3, seed=2)
    out = paste_back(frames, original, box, feather=6)
    assert out.shape == (3, 48, 64, 3) and out.dtype == torch.float32
    mask = _outside(box, 48, 64)
    assert torch.equal(out[:, mask], original[0][mask].expand(3, -1, -1))  # exact, every frame
    # Inside, the frames are really there (the test would pass trivially if nothing were pasted).
    assert not torch.equal(out[:, ~mask], original[0][~mask].expand(3, -1, -1))


def test_feather_is_a_linear_ramp_inside_the_box_edge():
    feather = 4
    box = (10, 8, 40, 30)
    out = paste_back(torch.ones(1, 22, 30, 3), torch.zeros(1, 40, 50, 3), box, feather=feather)
    row = out[0, 19, :, 0]  # a row through the middle of the box
    expected_ramp = torch.tensor([(d + 1) / (feather + 1) for d in range(feather)])
    torch.testing.assert_close(row[10:10 + feather], expected_ramp)
    torch.testing.assert_close(row[40 - feather:40], expected_ramp.flip(0))
    assert bool((row[10 + feather:40 - feather] == 1).all())
    assert bool((row[:10] == 0).all()) and bool((row[40:] == 0).all())
    column = out[0, :, 25, 0]
    torch.testing.assert_close(column[8:8 + feather], expected_ramp)
    # Corners take the nearer edge.
    assert out[0, 8, 10, 0].item() == pytest.approx(1 / (feather + 1))


def test_no_feather_along_the_picture_border():
    mask = feather_mask((0, 0, 20, 16), (16, 40), feather=5)  # touches left, top and bottom of a 40×16 picture
    assert bool((mask[:, :-5] == 1).all())  # left, top and bottom rows/columns are not ramped
    torch.testing.assert_close(mask[8, -5:], torch.tensor([5, 4, 3, 2, 1]) / 6)
    assert bool((feather_mask((3, 3, 9, 9), (20, 20), 0) == 1).all())


def test_same_size_box_places_the_frame_unresampled():
    frames = _rand(2, 12, 16, 3, seed=3)
    out = paste_back(frames, _rand(1, 30, 40, 3, seed=4), (5, 7, 21, 19), feather=0)
    assert torch.equal(out[:, 7:19, 5:21], frames)  # also catches a transposed or shifted paste


def test_resize_to_the_box_keeps_flat_colours_and_orientation():
    frames = torch.zeros(1, 32, 32, 3)
    frames[:, :, :16, 0] = 1.0  # left half red
    resized = resize_frames(frames, 20, 20)
    assert resized.shape == (1, 20, 20, 3)
    assert bool((resized[0, :, :8, 0] > 0.99).all()) and bool((resized[0, :, 12:, 0] < 0.01).all())
    assert float(resized.min()) >= 0 and float(resized.max()) <= 1
    upscaled = paste_back(torch.full((1, 8, 8, 3), 0.25), torch.zeros(1, 30, 30, 3), (2, 2, 27, 27), feather=0)
    torch.testing.assert_close(upscaled[0, 2:27, 2:27], torch.full((25, 25, 3), 0.25))


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="empty crop box"):
        paste_back(torch.zeros(1, 4, 4, 3), torch.zeros(1, 8, 8, 3), (4, 4, 4, 8))
    with pytest.raises(ValueError, match="one original"):
        paste_back(torch.zeros(1, 4, 4, 3), torch.zeros(2, 8, 8, 3), (0, 0, 4, 4))


def test_node_passes_frames_through_without_a_crop_and_pastes_with_one():
    from tools.comfy_runtime import import_pack

    import_pack()
    from sonic_pack.nodes.sonic_types import SonicImageEmbeds
    from sonic_pack.nodes.video import SonicPasteBack

    frames = _rand(4, 16, 16, 3, seed=5)
    embeds = SonicImageEmbeds(concat_latent=torch.zeros(1, 4, 2, 2), image_embeds=torch.zeros(1, 8),
                              face_mask=torch.ones(1, 1, 16, 16), image=torch.zeros(1, 16, 16, 3))
    assert SonicPasteBack.execute(frames, embeds, 8).args[0] is frames
    original = _rand(1, 40, 30, 3, seed=6)
    embeds.original, embeds.crop_box = original, (4, 10, 24, 30)
    pasted = SonicPasteBack.execute(frames, embeds, 3).args[0]
    assert pasted.shape == (4, 40, 30, 3)
    torch.testing.assert_close(pasted, paste_back(frames, original, (4, 10, 24, 30), 3), rtol=0, atol=0)
    schema = SonicPasteBack.GET_SCHEMA()
    assert all(i.tooltip for i in schema.inputs) and all(o.tooltip for o in schema.outputs)
    assert "unchanged" in schema.description
