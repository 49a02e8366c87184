"""Pictures of poses and network outputs (numpy/OpenCV; every function returns a new RGB image).

Used by ``src/predict.py``, the training logger callback and the notebooks. Images are RGB
``uint8 [H, W, 3]``; poses are ``[P, K, 3]`` (x, y, score) in that image's pixels; network outputs
are ``[K+1, h, w]`` heatmaps and ``[2K, h, w]`` offsets (stride ``stride``, output pixel ``j`` = image
pixel ``stride * j``).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from dekr.codec import default_codec_config
from dekr.keypoints import KeypointSpec


def _np(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def draw_poses(
    image: np.ndarray,
    poses: np.ndarray | torch.Tensor,
    spec: KeypointSpec,
    scores: np.ndarray | torch.Tensor | None = None,
    joint_threshold: float = 0.0,
    radius: int | None = None,
    thickness: int | None = None,
) -> np.ndarray:
    """Skeletons and keypoints in the spec's colours, with the person score near the head.

    Args:
        image: RGB ``uint8 [H, W, 3]``.
        poses: ``[P, K, 2|3]`` in image pixels; a third column (joint score or visibility) hides
            joints at or below ``joint_threshold``.
        scores: ``[P]`` person scores to print (optional).
    """
    out = np.ascontiguousarray(image.copy())
    poses = _np(poses)
    if poses.size == 0:
        return out
    poses = poses.reshape(-1, spec.num_keypoints, poses.shape[-1])
    size = max(out.shape[:2])
    radius = radius or max(2, size // 250)
    thickness = thickness or max(1, size // 400)
    colors = np.asarray(spec.colors, dtype=np.int64)
    for p, person in enumerate(poses):
        shown = person[:, 2] > joint_threshold if person.shape[1] > 2 else np.ones(len(person), bool)
        pts = np.round(person[:, :2]).astype(np.int64)
        for a, b in spec.skeleton:
            if shown[a] and shown[b]:
                c = tuple(int(v) for v in (colors[a] + colors[b]) // 2)
                cv2.line(out, tuple(map(int, pts[a])), tuple(map(int, pts[b])), c, thickness, cv2.LINE_AA)
        for k in np.flatnonzero(shown):
            cv2.circle(out, tuple(map(int, pts[k])), radius, tuple(int(v) for v in colors[k]), -1, cv2.LINE_AA)
        if scores is not None and shown.any():
            top = pts[shown][np.argmin(pts[shown][:, 1])]
            cv2.putText(
                out,
                f"{float(_np(scores).reshape(-1)[p]):.2f}",
                (int(top[0]), int(top[1]) - 2 * radius),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.4 * max(1, size // 600),
                (255, 255, 255),
                thickness,
                cv2.LINE_AA,
            )
    return out


def render_heatmaps(
    heatmaps: np.ndarray | torch.Tensor,
    image: np.ndarray | None = None,
    channels: list[int] | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """Max over the chosen heatmap channels, colour-mapped (JET), optionally blended over an image.

    Args:
        heatmaps: ``[C, h, w]`` (e.g. K keypoints + centre).
        image: RGB ``uint8 [H, W, 3]``; the map is resized to it (without it: the map's own size).
        channels: channels to show (default all).
    """
    hm = _np(heatmaps)
    hm = hm[channels] if channels is not None else hm
    m = np.clip(hm.max(0), 0.0, 1.0)
    colored = cv2.cvtColor(cv2.applyColorMap((m * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    if image is None:
        return colored
    colored = cv2.resize(colored, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    return cv2.addWeighted(image, 1 - alpha, colored, alpha, 0)


def render_offsets(
    offsets: np.ndarray | torch.Tensor,
    center_heatmap: np.ndarray | torch.Tensor,
    spec: KeypointSpec,
    image: np.ndarray | None = None,
    stride: int | None = None,
    threshold: float = 0.1,
    step: int = 2,
) -> np.ndarray:
    """Offset field as arrows from output pixels (where the centre heat exceeds ``threshold``) to the
    keypoints they regress (``pixel - offset``), in keypoint colours.

    Args:
        offsets: ``[2K, h, w]`` (output px). center_heatmap: ``[h, w]``.
        image: background RGB image of size ``(stride*h, stride*w)`` (black if omitted).
        stride: input px per output px; ``None``: the image's size over the map's, else the codec's.
        step: draw every ``step``-th pixel in x and y.
    """
    off = _np(offsets)
    if stride is None:
        h_map = off.shape[-2]
        stride = image.shape[0] // h_map if image is not None else default_codec_config().stride
    ctr = _np(center_heatmap)
    k = spec.num_keypoints
    h, w = ctr.shape
    out = np.zeros((h * stride, w * stride, 3), np.uint8) if image is None else np.ascontiguousarray(image.copy())
    ys, xs = np.nonzero(ctr > threshold)
    keep = (ys % step == 0) & (xs % step == 0)
    ys, xs = ys[keep], xs[keep]
    vec = off.reshape(k, 2, h, w)[:, :, ys, xs]  # [K, 2, M]
    for j in range(k):  # one colour per keypoint channel
        color = tuple(int(c) for c in spec.colors[j])
        for x, y, dx, dy in zip(xs, ys, vec[j, 0], vec[j, 1]):
            start = (int(x * stride), int(y * stride))
            end = (int(round((x - dx) * stride)), int(round((y - dy) * stride)))
            cv2.arrowedLine(out, start, end, color, 1, cv2.LINE_AA, tipLength=0.05)
    return out


__all__ = ["draw_poses", "render_heatmaps", "render_offsets"]
