"""Test-time geometry: resize keeping the aspect ratio, and its inverse.

The reference test pipeline maps an original image (``w x h``) to a network input whose short side
is ``input_size * factor`` and whose long side is the scaled long side rounded *up* to a multiple of
64 (then scaled by ``factor``). The mapping is a similarity (uniform scale ``k``, no rotation) that
sends the integer image centre ``(int(w/2 + 0.5), int(h/2 + 0.5))`` to the input centre
``(W_in/2, H_in/2)``; the padding of the long side is therefore split evenly on both sides.

Frames used in this package:

* *original*: pixels of the image as given (``x`` right, ``y`` down, pixel centres at integers);
* *input*: pixels of the network input at scale factor 1 (``W_in x H_in``);
* *map*: output pixels; output pixel ``j`` is input pixel ``stride * j`` (no half-pixel shift).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch


@dataclass(frozen=True)
class InputGeometry:
    """Where one image sits in the network input at one scale factor.

    Attributes:
        center: ``(cx, cy)`` integer image centre in original pixels.
        scale: ``(sw, sh)``, the source box in units of 200 original pixels (reference convention).
        size: ``(W_in, H_in)`` network input size at this factor, in pixels.
        factor: the multi-scale factor (1.0 for single-scale testing).
    """

    center: tuple[int, int]
    scale: tuple[float, float]
    size: tuple[int, int]
    factor: float = 1.0

    @property
    def k(self) -> float:
        """Original → input zoom (input px per original px)."""
        return self.size[0] / (self.scale[0] * 200.0)

    def matrix(self) -> np.ndarray:
        """Forward affine ``original → input`` as a float64 ``[2, 3]`` matrix."""
        k = self.k
        return np.array(
            [[k, 0.0, self.size[0] / 2.0 - k * self.center[0]], [0.0, k, self.size[1] / 2.0 - k * self.center[1]]],
            dtype=np.float64,
        )


def input_geometry(height: int, width: int, input_size: int = 512, factor: float = 1.0) -> InputGeometry:
    """Input size, centre and scale for an ``height x width`` image at a scale factor.

    The short side becomes ``int(input_size * factor)``; the long side is
    ``int(ceil64(input_size * long / short) * factor)`` where ``ceil64`` rounds up to a multiple of 64.
    ``input_size`` must be a multiple of 64 (as in the reference, where the "minimum scale" is 1).
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"input_geometry: image size must be positive, got {width}x{height}")
    if input_size % 64:
        raise ValueError(f"input_geometry: input_size {input_size} is not a multiple of 64; use e.g. 512")
    center = (int(width / 2.0 + 0.5), int(height / 2.0 + 0.5))
    if width < height:
        w_in = int(input_size * factor)
        h_in = int(int((input_size / width * height + 63) // 64 * 64) * factor)
        scale = (width / 200.0, h_in / w_in * width / 200.0)
    else:
        h_in = int(input_size * factor)
        w_in = int(int((input_size / height * width + 63) // 64 * 64) * factor)
        scale = (w_in / h_in * height / 200.0, height / 200.0)
    return InputGeometry(center=center, scale=scale, size=(w_in, h_in), factor=factor)


def warp_to_input(image: np.ndarray, geometry: InputGeometry) -> np.ndarray:
    """Resample an original image (``uint8 [H, W, 3]``) into the network input frame.

    Bilinear, black border (as ``cv2.warpAffine`` defaults, like the reference).
    """
    return cv2.warpAffine(image, geometry.matrix(), geometry.size, flags=cv2.INTER_LINEAR)


def flip_input(images: torch.Tensor, shift: int) -> torch.Tensor:
    """Horizontally flipped input ``[..., W]`` shifted left by ``shift`` px (last ``shift`` columns
    repeated).

    With ``shift = stride - 1`` output column ``j`` of the flipped pass sees the content of output
    column ``w - 1 - j`` of the plain pass (reference flip test), which the decoder relies on.
    """
    flipped = images.flip(-1)
    if shift <= 0:
        return flipped
    out = flipped.clone()
    out[..., :-shift] = flipped[..., shift:]
    return out


def input_to_original(points: torch.Tensor, geometries: Sequence[InputGeometry]) -> torch.Tensor:
    """Map points from the scale-1 input frame back to original pixels, one geometry per image.

    Args:
        points: float ``[B, ..., 2]`` (x, y) in input pixels of the factor-1 geometry of image b.
        geometries: B geometries; their ``k`` and centre define the inverse similarity.

    Returns:
        float ``[B, ..., 2]`` in original pixels (same dtype/device as ``points``).
    """
    if len(geometries) != points.shape[0]:
        raise ValueError(f"input_to_original: {len(geometries)} geometries for a batch of {points.shape[0]}")
    params = torch.tensor(
        [[g.k, g.size[0] / 2.0, g.size[1] / 2.0, g.center[0], g.center[1]] for g in geometries],
        dtype=torch.float64,
        device=points.device,
    )
    shape = (points.shape[0],) + (1,) * (points.dim() - 2)
    k = params[:, 0].view(shape)
    half = params[:, 1:3].view(*shape, 2)
    ctr = params[:, 3:5].view(*shape, 2)
    return ((points.double() - half) / k.unsqueeze(-1) + ctr).to(points.dtype)


__all__ = ["InputGeometry", "flip_input", "input_geometry", "input_to_original", "warp_to_input"]
