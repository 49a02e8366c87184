"""Network outputs without a network, for round-trip tests and benchmarks.

* :func:`outputs_from_ground_truth`: the codec's own targets for ground-truth people, encoded at the
  test geometry, as a perfect network would output them (the encode → decode round trip).
* :func:`fabricate_outputs`: noisy outputs of a random scene (below).

A scene is a set of people (joints in output px); the outputs look like a trained DEKR's: Gaussian
keypoint and centre peaks plus uniform noise, and an offset field that points, in each pixel, to the
joints of the person whose centre is nearest (plus noise). The flip pass is the same scene mirrored
(``x -> w - 1 - x``, left/right swapped) with its own noise, as a network would see the flipped input.
Generated with ``numpy.random.RandomState`` (a frozen stream), so a seed gives the same outputs on
every machine.
"""

from __future__ import annotations

import numpy as np
import torch

from dekr.codec.config import CodecConfig
from dekr.codec.decode import ScaleOutput
from dekr.codec.encode import TargetEncoder
from dekr.codec.geometry import input_geometry
from dekr.keypoints import KeypointSpec


def outputs_from_ground_truth(
    keypoints: np.ndarray,
    ann_areas: np.ndarray,
    image_hw: tuple[int, int],
    spec: KeypointSpec,
    cfg: CodecConfig,
    input_size: int,
    flip: bool = False,
    min_center_area: float = 0.0,
) -> ScaleOutput:
    """Targets of ground-truth people at the test geometry, as outputs of scale 1.

    Args:
        keypoints: ``[P, K, 3]`` in original image pixels; ann_areas: ``[P]`` annotation areas.
        image_hw: original image ``(h, w)``; input_size: test short side (multiple of 64).
        flip: also give the flip pass (the targets of the mirrored people, left/right swapped).
        min_center_area: the dataset's small-person rule (1024 for COCO).

    Returns:
        a :class:`ScaleOutput` with ``[1, K+1, h, w]`` heatmaps and ``[1, 2K, h, w]`` offsets.
    """
    g = input_geometry(image_hw[0], image_hw[1], input_size)
    h_out, w_out = g.size[1] // cfg.stride, g.size[0] // cfg.stride
    enc = TargetEncoder(spec, (h_out, w_out), cfg.targets, min_center_area=min_center_area)
    centers, areas = enc.centers_and_areas(keypoints, ann_areas)
    mat = g.matrix()
    kp = np.asarray(keypoints, np.float64).copy()
    kp[..., :2] = (kp[..., :2] @ mat[:, :2].T + mat[:, 2]) / cfg.stride
    ct = centers.copy()
    ct[:, :2] = (ct[:, :2] @ mat[:, :2].T + mat[:, 2]) / cfg.stride
    areas = areas * g.k**2
    t = enc(kp, ct, areas)
    out = ScaleOutput(1.0, torch.from_numpy(t["heatmaps"])[None], torch.from_numpy(t["offsets"])[None])
    if flip:
        kf = kp[:, spec.flip_index()].copy()
        kf[..., 0] = w_out - 1 - kf[..., 0]
        cf = ct.copy()
        cf[:, 0] = w_out - 1 - cf[:, 0]
        tf = enc(kf, cf, areas)
        out.heatmaps_flip = torch.from_numpy(tf["heatmaps"])[None]
        out.offsets_flip = torch.from_numpy(tf["offsets"])[None]
    return out


def fabricate_scene(
    spec: KeypointSpec,
    num_people: int,
    h: int,
    w: int,
    rng: np.random.RandomState,
    size: tuple[float, float] = (6.0, 16.0),
) -> tuple[np.ndarray, np.ndarray]:
    """Random people inside an ``h x w`` map.

    Returns:
        joints float64 ``[P, K, 2]`` (output px) and centre confidences ``[P]`` in ``[0.3, 1]``.
    """
    k = spec.num_keypoints
    radius = rng.uniform(*size, size=(num_people, 1, 1))
    shape = rng.uniform(-1.0, 1.0, size=(num_people, k, 2))
    margin = size[1] + 2
    centers = np.stack(
        [
            rng.uniform(margin, max(w - margin, margin + 1), num_people),
            rng.uniform(margin, max(h - margin, margin + 1), num_people),
        ],
        axis=-1,
    )
    joints = centers[:, None, :] + radius * shape
    return joints, rng.uniform(0.3, 1.0, num_people)


def render_outputs(
    spec: KeypointSpec,
    joints: np.ndarray,
    conf: np.ndarray,
    h: int,
    w: int,
    rng: np.random.RandomState,
    noise: float = 0.02,
    offset_noise: float = 0.3,
) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps ``[K+1, h, w]`` and offsets ``[2K, h, w]`` (float32) of a scene (joints in output px)."""
    k = spec.num_keypoints
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    centers = joints.mean(1)  # [P, 2]
    hm = np.zeros((k + 1, h, w))
    for p in range(len(joints)):  # fabrication only; P is small
        d2 = (xs[None] - joints[p, :, 0, None, None]) ** 2 + (ys[None] - joints[p, :, 1, None, None]) ** 2
        hm[:k] = np.maximum(hm[:k], np.exp(-d2 / 8.0) * rng.uniform(0.5, 1.0, (k, 1, 1)))
        dc = (xs - centers[p, 0]) ** 2 + (ys - centers[p, 1]) ** 2
        hm[k] = np.maximum(hm[k], conf[p] * np.exp(-dc / 32.0))
    hm += rng.uniform(0.0, noise, hm.shape)
    dist = (xs[None] - centers[:, 0, None, None]) ** 2 + (ys[None] - centers[:, 1, None, None]) ** 2
    owner = dist.argmin(0)  # [h, w]
    target = joints[owner]  # [h, w, K, 2]
    off = np.stack((xs, ys), -1)[:, :, None, :] - target
    off += rng.normal(0.0, offset_noise, off.shape)
    off = off.reshape(h, w, 2 * k).transpose(2, 0, 1)
    return hm.astype(np.float32), off.astype(np.float32)


def fabricate_outputs(
    spec: KeypointSpec,
    num_people: int,
    h: int,
    w: int,
    seed: int = 0,
    flip: bool = True,
) -> dict[str, torch.Tensor]:
    """Fabricated outputs of one image at one scale.

    Returns:
        dict with ``heatmaps [1, K+1, h, w]``, ``offsets [1, 2K, h, w]``, ``joints [P, K, 2]`` (the
        scene, output px) and, with ``flip``, ``heatmaps_flip``/``offsets_flip`` of the mirrored scene.
    """
    rng = np.random.RandomState(seed)
    joints, conf = fabricate_scene(spec, num_people, h, w, rng)
    hm, off = render_outputs(spec, joints, conf, h, w, rng)
    out = {
        "heatmaps": torch.from_numpy(hm)[None],
        "offsets": torch.from_numpy(off)[None],
        "joints": torch.from_numpy(joints),
    }
    if flip and spec.can_flip:
        mirrored = joints[:, spec.flip_index()].copy()
        mirrored[..., 0] = w - 1 - mirrored[..., 0]
        hm_f, off_f = render_outputs(spec, mirrored, conf, h, w, rng)
        out["heatmaps_flip"] = torch.from_numpy(hm_f)[None]
        out["offsets_flip"] = torch.from_numpy(off_f)[None]
    return out


__all__ = ["fabricate_outputs", "fabricate_scene", "outputs_from_ground_truth", "render_outputs"]
