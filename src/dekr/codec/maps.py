"""Operations on output maps shared by the decoding stages: peak pooling, flip fusion, and the
reference's upsampling geometry (defined once here, used by scoring and by refinement).

Maps are ``[..., h, w]`` tensors in output px; "input px" are pixels of the network input at one
test scale, ``ratio`` input px per output px (``stride / factor``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pool_kernel(h: int, w: int, thresholds: tuple[float, float]) -> int:
    """Centre max-pool kernel from the map size ``(h + w) / 2``: 7 above ``thresholds[0]``, 5 above
    ``thresholds[1]``, else 3."""
    size = (h + w) / 2.0
    return 7 if size > thresholds[0] else 5 if size > thresholds[1] else 3


def max_filter(maps: torch.Tensor, kernel: int) -> torch.Tensor:
    """``kernel x kernel`` running maximum of ``[..., h, w]`` (same size; borders see only the map).

    Equals ``max_pool2d(stride=1, padding=kernel // 2)``; separable, much faster on CPU.
    """
    r = kernel // 2
    h, w = maps.shape[-2:]
    padded = F.pad(maps, (r, r, r, r), value=-torch.inf)
    rows = padded[..., :, 0:w]
    for dx in range(1, kernel):
        rows = torch.maximum(rows, padded[..., :, dx : dx + w])
    out = rows[..., 0:h, :]
    for dy in range(1, kernel):
        out = torch.maximum(out, rows[..., dy : dy + h, :])
    return out


def fuse_flip_heatmaps(heatmaps: torch.Tensor, heatmaps_flip: torch.Tensor, flip_index: torch.Tensor) -> torch.Tensor:
    """Average plain and flipped-pass heatmaps ``[B, C, h, w]`` (flip back, swap left/right channels)."""
    return (heatmaps + heatmaps_flip.flip(-1)[:, flip_index]) / 2.0


# ------------------------------------------------------------------------------ upsampling geometry
def upsampled_axis(map_len: int, ratio: float) -> tuple[int, int]:
    """The reference's upsampling of one axis of ``map_len`` output px by ``ratio``: ``(size, inner)``.

    The upsampled axis has ``size = int(ratio * map_len)`` samples; the first ``inner = size -
    int(size / map_len) + 1`` are align-corners bilinear over the map, the rest repeat the last one.
    """
    size = int(ratio * map_len)
    return size, size - int(size / map_len) + 1


def map_coordinate(coord: torch.Tensor, map_len: int, ratio: float, floor: bool) -> torch.Tensor:
    """Map coordinate read by input pixel ``coord`` of the upsampled axis (:func:`upsampled_axis`);
    ``floor``: the reference reads the floored pixel."""
    size, inner = upsampled_axis(map_len, ratio)
    step = (map_len - 1) / (inner - 1) if inner > 1 else 0.0
    if floor:
        coord = coord.floor().clamp(0, size - 1)
    return coord.clamp(0, inner - 1) * step


def upsample(heatmaps: torch.Tensor, ratio: float) -> torch.Tensor:
    """Heatmaps ``[B, C, h, w]`` upsampled to input px as :func:`upsampled_axis` describes."""
    (sh, ih), (sw, iw) = upsampled_axis(heatmaps.shape[-2], ratio), upsampled_axis(heatmaps.shape[-1], ratio)
    inner = F.interpolate(heatmaps, size=(ih, iw), mode="bilinear", align_corners=True)
    return F.pad(inner, (0, sw - iw, 0, sh - ih), mode="replicate")


def bilinear(maps: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """Channel ``channels[k]`` of ``maps [B, C, h, w]`` at map coordinates ``gx, gy [B, N, K]``.

    Returns ``[B, N, K]``; reads straight from the flat maps (no channel copies).
    """
    b, _, h, w = maps.shape
    x0, y0 = gx.floor().long(), gy.floor().long()
    x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)
    ax, ay = gx - x0, gy - y0
    flat = maps.reshape(b, -1)
    base = channels.view(1, 1, -1) * (h * w)

    def at(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        return flat.gather(1, (base + yy * w + xx).flatten(1)).view_as(gx)

    top = (1 - ax) * at(y0, x0) + ax * at(y0, x1)
    bottom = (1 - ax) * at(y1, x0) + ax * at(y1, x1)
    return (1 - ay) * top + ay * bottom


__all__ = [
    "bilinear",
    "fuse_flip_heatmaps",
    "map_coordinate",
    "max_filter",
    "pool_kernel",
    "upsample",
    "upsampled_axis",
]
