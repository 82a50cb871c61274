"""RIFE IFNet (HDv3 layout, as used by Sonic) with the key names of the official `flownet.pkl` minus `module.`.

Behaviour per `docs/official-behaviour.md` §6: three coarse-to-fine IFBlocks at scales (4, 2, 1), each run in
both temporal directions and averaged, backward warping with a border-padded, corner-aligned `grid_sample`.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

def _base_grid(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(1, 2, H, W) base sampling grid in [-1, 1], made per call: a cache would keep device memory after core
    unloads RIFE, and two linspaces cost nothing beside the grid_sample that uses them."""
    xs = torch.linspace(-1.0, 1.0, width, device=device, dtype=dtype).view(1, 1, 1, width)
    ys = torch.linspace(-1.0, 1.0, height, device=device, dtype=dtype).view(1, 1, height, 1)
    return torch.cat((xs.expand(1, 1, height, width), ys.expand(1, 1, height, width)), dim=1)


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward warp: sample `image` (B,C,H,W) at (x + flow_x, y + flow_y), flow (B,2,H,W) in pixels."""
    height, width = image.shape[-2:]
    normalised = torch.cat(
        (flow[:, 0:1] / ((width - 1.0) / 2.0), flow[:, 1:2] / ((height - 1.0) / 2.0)), dim=1
    )
    grid = (_base_grid(height, width, flow.device, flow.dtype) + normalised).permute(0, 2, 3, 1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3×3 conv + PReLU; the Sequential nesting gives the `<i>.0.weight` / `<i>.1.weight` key layout."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=True), nn.PReLU(cout))


def _head(c: int, out_channels: int) -> nn.Sequential:
    """Two 4×4 stride-2 transposed convs with a PReLU between: ×4 upsampling back to the block's input size."""
    return nn.Sequential(
        nn.ConvTranspose2d(c, c // 2, 4, 2, 1),
        nn.PReLU(c // 2),
        nn.ConvTranspose2d(c // 2, out_channels, 4, 2, 1),
    )


def _resize(x: torch.Tensor, factor: float) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False, recompute_scale_factor=False)


class IFBlock(nn.Module):
    """One flow/mask estimator working at 1/(4·scale) of the frame size."""

    def __init__(self, in_planes: int, c: int = 90) -> None:
        super().__init__()
        self.conv0 = nn.Sequential(_conv(in_planes, c // 2, 2), _conv(c // 2, c, 2))
        self.convblock0 = nn.Sequential(_conv(c, c), _conv(c, c))
        self.convblock1 = nn.Sequential(_conv(c, c), _conv(c, c))
        self.convblock2 = nn.Sequential(_conv(c, c), _conv(c, c))
        self.convblock3 = nn.Sequential(_conv(c, c), _conv(c, c))
        self.conv1 = _head(c, 4)  # flow: (x, y) towards img0, (x, y) towards img1
        self.conv2 = _head(c, 1)  # blend-mask logit

    def forward(self, x: torch.Tensor, flow: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        x = _resize(x, 1.0 / scale)
        flow = _resize(flow, 1.0 / scale) / scale  # flow is in pixels: shrink it with the image
        feat = self.conv0(torch.cat((x, flow), dim=1))
        for unit in (self.convblock0, self.convblock1, self.convblock2, self.convblock3):
            feat = unit(feat) + feat
        flow_out = _resize(self.conv1(feat), scale) * scale
        mask_out = _resize(self.conv2(feat), scale)
        return flow_out, mask_out


class IFNetOutput(NamedTuple):
    middle: torch.Tensor  # (B,3,H,W) blended frame of the finest level, not clamped
    flow: torch.Tensor  # (B,4,H,W) final flow in pixels: 0-1 warp img0, 2-3 warp img1
    mask: torch.Tensor  # (B,1,H,W) blend weight of warp(img0), after the sigmoid


def _swap_halves(flow: torch.Tensor) -> torch.Tensor:
    return torch.cat((flow[:, 2:4], flow[:, 0:2]), dim=1)


class IFNet(nn.Module):
    """RIFE HDv3 IFNet. `block_tea` (the training teacher) is never run but is part of the checkpoint."""

    def __init__(self) -> None:
        super().__init__()
        self.block0 = IFBlock(7 + 4, c=90)
        self.block1 = IFBlock(7 + 4, c=90)
        self.block2 = IFBlock(7 + 4, c=90)
        self.block_tea = IFBlock(7 + 4 + 3, c=90)

    def forward(
        self, img0: torch.Tensor, img1: torch.Tensor, scale_list: Sequence[float] = (4.0, 2.0, 1.0)
    ) -> IFNetOutput:
        """Midpoint (t = 0.5) of img0, img1 (B,3,H,W). Sides must be multiples of 4·max(scale_list)."""
        batch, _, height, width = img0.shape
        flow = img0.new_zeros(batch, 4, height, width)
        mask = img0.new_zeros(batch, 1, height, width)
        warped0, warped1 = img0, img1
        blocks = (self.block0, self.block1, self.block2)
        if len(scale_list) != len(blocks):
            raise ValueError(f"scale_list needs {len(blocks)} entries, got {list(scale_list)}")
        for block, scale in zip(blocks, scale_list):
            # Both temporal directions in one batched call: forward sees (I0, I1, m), backward (I1, I0, -m) with the
            # flow halves exchanged; the backward result is mapped back and the two are averaged.
            x = torch.cat(
                (torch.cat((warped0, warped1, mask), dim=1), torch.cat((warped1, warped0, -mask), dim=1)), dim=0
            )
            flow_in = torch.cat((flow, _swap_halves(flow)), dim=0)
            d_flow, d_mask = block(x, flow_in, scale)
            flow = flow + (d_flow[:batch] + _swap_halves(d_flow[batch:])) / 2
            mask = mask + (d_mask[:batch] - d_mask[batch:]) / 2
            warped0 = warp(img0, flow[:, 0:2])
            warped1 = warp(img1, flow[:, 2:4])
        weight = torch.sigmoid(mask)
        middle = warped0 * weight + warped1 * (1 - weight)
        return IFNetOutput(middle, flow, weight)
