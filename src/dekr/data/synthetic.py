"""Procedural synthetic people in COCO format: the zero-download default data and a test fixture.

Each image shows 1-6 articulated, front-facing stick-and-blob figures with the 17 COCO keypoints,
plausible limb proportions, random poses (torso lean, arm and leg swings, elbow/knee bends,
foreshortening, head turn), body heights from about 30 to 300 px, overlapping and occluding each
other, on a textured background (gradients, low-frequency colour noise, muted shapes, grain).
Some images contain a crowd region (many tiny figures, one ``iscrowd`` annotation) and some
small people are annotated without keypoints, so the ignore mask is exercised as on COCO.

Figures are made learnable: every body part has its own saturated colour, identical on the left
and right side (a horizontal flip keeps the colour code valid), joints carry contrasting markers,
figures always face the camera so left and right follow from geometry. The background stays
desaturated.

Annotations follow COCO: ``v = 2`` visible, ``v = 1`` inside the image but covered by a figure
drawn later, ``v = 0`` (and ``x = y = 0``) outside the image; ``segmentation`` is the figure's
visible silhouette as compressed RLE, ``area`` its pixel count, ``bbox`` its box.

Everything is a pure function of ``(seed, split, index)``; :func:`generate_synthetic` skips the
work when ``root`` already holds a generation with the same parameters.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from dekr.keypoints import COCO

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
META_FILE = "synthetic_meta.json"

# body-part colours (RGB), the same on both sides
_COLORS = {
    "torso": (220, 40, 40),
    "upper_arm": (250, 150, 20),
    "forearm": (240, 230, 30),
    "thigh": (30, 90, 230),
    "shin": (20, 200, 220),
    "head": (230, 190, 160),
    "hand": (250, 120, 200),
    "foot": (120, 40, 160),
    "joint": (255, 255, 255),
    "eye": (20, 20, 20),
    "ear": (170, 110, 80),
    "nose": (200, 0, 90),
}
# COCO indices
NOSE, L_EYE, R_EYE, L_EAR, R_EAR = 0, 1, 2, 3, 4
L_SH, R_SH, L_EL, R_EL, L_WR, R_WR = 5, 6, 7, 8, 9, 10
L_HIP, R_HIP, L_KN, R_KN, L_AN, R_AN = 11, 12, 13, 14, 15, 16


def _rot(v: np.ndarray, deg: float) -> np.ndarray:
    """Rotate 2-vector ``v`` by ``deg`` degrees (image frame, y down: positive = clockwise)."""
    r = np.deg2rad(deg)
    c, s = np.cos(r), np.sin(r)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def random_pose(rng: np.random.Generator, pelvis: np.ndarray, height: float) -> dict[str, Any]:
    """Keypoints ``[17, 2]`` (image px) and drawing geometry of one front-facing figure.

    ``height`` is roughly the ankle-to-head-top extent of an upright figure.
    """
    lean = rng.normal(0.0, 12.0)
    up = _rot(np.array([0.0, -1.0]), lean)
    side = _rot(np.array([1.0, 0.0]), lean)  # the person's left (they face the camera)
    width = rng.uniform(0.75, 1.1)
    yaw = rng.uniform(-1.0, 1.0)
    H = height
    k = np.zeros((17, 2))
    neck = pelvis + up * 0.30 * H * rng.uniform(0.9, 1.05)
    k[L_SH] = neck + side * 0.11 * H * width - up * 0.02 * H
    k[R_SH] = neck - side * 0.11 * H * width - up * 0.02 * H
    k[L_HIP] = pelvis + side * 0.075 * H * width
    k[R_HIP] = pelvis - side * 0.075 * H * width
    head = neck + up * 0.11 * H
    k[NOSE] = head - up * 0.01 * H + side * 0.025 * H * yaw
    k[L_EYE] = head + up * 0.02 * H + side * (0.025 + 0.015 * yaw) * H
    k[R_EYE] = head + up * 0.02 * H - side * (0.025 - 0.015 * yaw) * H
    k[L_EAR] = head + side * 0.055 * H * (1 - 0.3 * yaw)
    k[R_EAR] = head - side * 0.055 * H * (1 + 0.3 * yaw)
    down = -up
    for sign, sh, el, wr in ((1, L_SH, L_EL, L_WR), (-1, R_SH, R_EL, R_WR)):
        swing = rng.uniform(-25, 160) * sign  # away from the body, towards +side for the left arm
        upper = _rot(down, -swing) * 0.17 * H * rng.uniform(0.6, 1.0)
        bend = rng.uniform(-20, 140) * rng.choice([-1, 1])
        fore = _rot(upper / np.linalg.norm(upper), bend) * 0.15 * H * rng.uniform(0.6, 1.0)
        k[el] = k[sh] + upper
        k[wr] = k[el] + fore
    for sign, hip, kn, an in ((1, L_HIP, L_KN, L_AN), (-1, R_HIP, R_KN, R_AN)):
        swing = rng.uniform(-15, 50) * sign
        thigh = _rot(down, -swing) * 0.24 * H * rng.uniform(0.7, 1.0)
        bend = rng.uniform(0, 90) * rng.choice([-1, 1])
        shin = _rot(thigh / np.linalg.norm(thigh), bend) * 0.23 * H * rng.uniform(0.7, 1.0)
        k[kn] = k[hip] + thigh
        k[an] = k[kn] + shin
    return {"keypoints": k, "head": head, "head_radius": 0.075 * H, "height": H, "up": up}


def _draw_figure(canvas: np.ndarray, labels: np.ndarray | None, label: int, fig: dict[str, Any]) -> None:
    """Draw one figure on ``canvas`` (RGB uint8) and its silhouette with value ``label``."""
    k, H = fig["keypoints"], fig["height"]
    sh = 4  # fixed-point bits for sub-pixel drawing

    def P(p: np.ndarray) -> tuple[int, int]:
        return int(round(p[0] * (1 << sh))), int(round(p[1] * (1 << sh)))

    def line(a: np.ndarray, b: np.ndarray, color: tuple[int, int, int], thick: float) -> None:
        t = max(int(round(thick)), 1)
        cv2.line(canvas, P(a), P(b), color, t, cv2.LINE_AA, sh)
        if labels is not None:
            cv2.line(labels, P(a), P(b), label, t, cv2.LINE_8, sh)

    def disc(c: np.ndarray, r: float, color: tuple[int, int, int], silhouette: bool = True) -> None:
        rr = max(int(round(r * (1 << sh))), 1 << sh)
        cv2.circle(canvas, P(c), rr, color, -1, cv2.LINE_AA, sh)
        if labels is not None and silhouette:
            cv2.circle(labels, P(c), rr, label, -1, cv2.LINE_8, sh)

    limb_t, leg_t = 0.045 * H, 0.06 * H
    for hip, kn, an in ((L_HIP, L_KN, L_AN), (R_HIP, R_KN, R_AN)):
        line(k[hip], k[kn], _COLORS["thigh"], leg_t)
        line(k[kn], k[an], _COLORS["shin"], leg_t * 0.85)
        disc(k[an], leg_t * 0.6, _COLORS["foot"])
        disc(k[kn], leg_t * 0.3, _COLORS["joint"], silhouette=False)
    torso = np.stack([k[L_SH], k[R_SH], k[R_HIP], k[L_HIP]])
    pts = np.round(torso * (1 << sh)).astype(np.int32)
    cv2.fillConvexPoly(canvas, pts, _COLORS["torso"], cv2.LINE_AA, sh)
    if labels is not None:
        cv2.fillConvexPoly(labels, pts, label, cv2.LINE_8, sh)
    neck = (k[L_SH] + k[R_SH]) / 2
    line(neck, fig["head"], _COLORS["head"], limb_t * 0.9)
    for sh_i, el, wr in ((L_SH, L_EL, L_WR), (R_SH, R_EL, R_WR)):
        line(k[sh_i], k[el], _COLORS["upper_arm"], limb_t)
        line(k[el], k[wr], _COLORS["forearm"], limb_t * 0.85)
        disc(k[wr], limb_t * 0.65, _COLORS["hand"])
        disc(k[el], limb_t * 0.3, _COLORS["joint"], silhouette=False)
        disc(k[sh_i], limb_t * 0.3, _COLORS["joint"], silhouette=False)
    for hip in (L_HIP, R_HIP):
        disc(k[hip], leg_t * 0.3, _COLORS["joint"], silhouette=False)
    disc(k[L_EAR], 0.022 * H, _COLORS["ear"])
    disc(k[R_EAR], 0.022 * H, _COLORS["ear"])
    disc(fig["head"], fig["head_radius"], _COLORS["head"])
    disc(k[L_EYE], max(0.012 * H, 0.6), _COLORS["eye"], silhouette=False)
    disc(k[R_EYE], max(0.012 * H, 0.6), _COLORS["eye"], silhouette=False)
    disc(k[NOSE], max(0.012 * H, 0.6), _COLORS["nose"], silhouette=False)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Desaturated textured background, uint8 ``[size, size, 3]``."""
    gray = rng.uniform(60, 200, 2)
    tint = rng.normal(0, 12, (2, 3))
    c0, c1 = gray[0] + tint[0], gray[1] + tint[1]
    ramp = np.linspace(0, 1, size)
    angle = rng.uniform(0, 2 * np.pi)
    t = np.clip(0.5 + (np.cos(angle) * (ramp[None, :] - 0.5) + np.sin(angle) * (ramp[:, None] - 0.5)), 0, 1)
    img = c0 + (c1 - c0) * t[:, :, None]
    cells = int(rng.integers(3, 9))
    noise = rng.normal(0, 18, (cells, cells, 1)) + rng.normal(0, 6, (cells, cells, 3))
    img += cv2.resize(noise.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(4, 14))):
        g = float(rng.uniform(40, 220))
        color = tuple(float(np.clip(g + rng.normal(0, 15), 0, 255)) for _ in range(3))
        x0, y0 = (int(v) for v in rng.integers(0, size, 2))
        kind = rng.integers(0, 3)
        if kind == 0:
            x1, y1 = (int(v) for v in rng.integers(0, size, 2))
            cv2.rectangle(img, (x0, y0), (x1, y1), color, -1)
        elif kind == 1:
            axes = (int(rng.integers(4, size // 3)), int(rng.integers(4, size // 3)))
            cv2.ellipse(img, (x0, y0), axes, float(rng.uniform(0, 180)), 0, 360, color, -1, cv2.LINE_AA)
        else:
            x1, y1 = (int(v) for v in rng.integers(0, size, 2))
            cv2.line(img, (x0, y0), (x1, y1), color, int(rng.integers(1, 6)), cv2.LINE_AA)
    grain = rng.normal(0, 4, img.shape)
    return np.clip(img + grain, 0, 255).astype(np.uint8)


def _rle(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def render_image(
    seed: int, split: str, index: int, size: int, max_people: int = 6,
    heights: tuple[float, float] = (30.0, 300.0),
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One synthetic image (uint8 RGB ``[size, size, 3]``) and its annotations (no ids yet).

    ``max_people`` caps the labelled figures per image (1..6); ``heights`` is the range of figure
    heights in pixels (log-uniform, capped at ``1.2 * size``)."""
    split_code = {"train": 0, "val": 1, "test": 2}.get(split, 3)
    rng = np.random.default_rng([seed, split_code, index])
    img = _background(rng, size)
    labels = np.zeros((size, size), dtype=np.uint16)
    anns: list[dict[str, Any]] = []

    crowd_label = 1
    if rng.random() < 0.25:  # a crowd region of tiny figures, behind everything
        cw, ch = (int(v) for v in rng.uniform(0.2, 0.4, 2) * size)
        x0, y0 = int(rng.integers(0, size - cw)), int(rng.integers(0, size - ch))
        for _ in range(int(rng.integers(6, 16))):
            h = float(rng.uniform(12, 30))
            pelvis = np.array([rng.uniform(x0, x0 + cw), rng.uniform(y0 + h * 0.5, y0 + ch)])
            _draw_figure(img, labels, crowd_label, random_pose(rng, pelvis, h))

    n_people = min(int(rng.choice([1, 2, 3, 4, 5, 6], p=[0.15, 0.25, 0.25, 0.15, 0.1, 0.1])), max_people)
    min_h, max_h = float(heights[0]), min(float(heights[1]), 1.2 * size)
    heights = np.exp(rng.uniform(np.log(min_h), np.log(max(max_h, min_h)), n_people))
    heights.sort()  # bigger (closer) figures are drawn last, in front
    figures = []
    for i, h in enumerate(heights):
        pelvis = np.array([rng.uniform(0.05, 0.95) * size, rng.uniform(0.1, 1.0) * size + 0.05 * h])
        fig = random_pose(rng, pelvis, float(h))
        _draw_figure(img, labels, i + 2, fig)
        figures.append(fig)

    crowd_mask = labels == crowd_label
    if crowd_mask.any():
        anns.append(
            {
                "iscrowd": 1,
                "num_keypoints": 0,
                "keypoints": [0] * 51,
                "segmentation": _rle(crowd_mask),
                "area": float(crowd_mask.sum()),
                "bbox": _bbox(crowd_mask),
            }
        )
    for i, fig in enumerate(figures):
        visible = labels == i + 2
        if not visible.any():
            continue
        k = fig["keypoints"]
        inside = (k[:, 0] >= 0) & (k[:, 1] >= 0) & (k[:, 0] <= size - 1) & (k[:, 1] <= size - 1)
        xi = np.clip(np.round(k[:, 0]).astype(int), 0, size - 1)
        yi = np.clip(np.round(k[:, 1]).astype(int), 0, size - 1)
        covered = labels[yi, xi] > i + 2
        v = np.where(inside, np.where(covered, 1, 2), 0)
        kp = np.where(inside[:, None], np.round(k, 2), 0.0)
        unlabelled = fig["height"] < 60 and rng.random() < 0.1
        if unlabelled:
            v[:] = 0
            kp[:] = 0
        anns.append(
            {
                "iscrowd": 0,
                "num_keypoints": int((v > 0).sum()),
                "keypoints": [float(c) for row in np.concatenate([kp, v[:, None]], 1) for c in row],
                "segmentation": _rle(visible),
                "area": float(visible.sum()),
                "bbox": _bbox(visible),
            }
        )
    return img, anns


def _params(num_train: int, num_val: int, image_size: int, seed: int, max_people: int = 6,
            heights: tuple[float, float] = (30.0, 300.0)) -> dict[str, Any]:
    params: dict[str, Any] = {
        "version": GENERATOR_VERSION,
        "num_train": int(num_train),
        "num_val": int(num_val),
        "image_size": int(image_size),
        "seed": int(seed),
    }
    if max_people != 6 or tuple(heights) != (30.0, 300.0):  # non-default layouts (older metas stay valid)
        params.update({"max_people": int(max_people), "heights": [float(h) for h in heights]})
    return params


def _split_files(root: Path, split: str) -> tuple[Path, Path]:
    return root / "annotations" / f"person_keypoints_{split}.json", root / "images" / split


def _foreign_files(root: Path) -> list[str]:
    """Entries of ``root`` that the generator would not have written (its layout: the meta file,
    ``annotations/person_keypoints_{train,val}.json`` and ``images/{train,val}/``)."""
    if not root.is_dir():
        return []
    own = {
        ".": {META_FILE, "annotations", "images"},
        "annotations": {f"person_keypoints_{split}.json" for split in ("train", "val")},
        "images": {"train", "val"},
    }
    foreign = []
    for folder, names in own.items():
        where = root / folder
        if where.is_dir():
            foreign += [str(Path(folder, e.name)) for e in sorted(where.iterdir()) if e.name not in names]
    for folder in ("annotations", "images"):
        if (root / folder).exists() and not (root / folder).is_dir():
            foreign.append(folder)
    return foreign


def _iter_split(root: Path, split: str, num: int, size: int, seed: int, max_people: int = 6,
                heights: tuple[float, float] = (30.0, 300.0)) -> Iterator[tuple[dict, list[dict]]]:
    image_dir = _split_files(root, split)[1]
    image_dir.mkdir(parents=True, exist_ok=True)
    for index in range(num):
        img, anns = render_image(seed, split, index, size, max_people, heights)
        image_id = index + 1
        name = f"{image_id:012d}.jpg"
        cv2.imwrite(str(image_dir / name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        yield {"id": image_id, "file_name": name, "width": size, "height": size}, anns


def generate_synthetic(
    root: str | os.PathLike,
    num_train: int = 2000,
    num_val: int = 200,
    image_size: int = 256,
    seed: int = 0,
    max_people: int = 6,
    heights: tuple[float, float] | list[float] = (30.0, 300.0),
) -> Path:
    """Write a synthetic COCO-format keypoint dataset under ``root``; idempotent.

    ``max_people`` (1..6) and ``heights`` (figure height range, px) shape the scenes: the quickstart
    uses fewer, larger people than the default so that a tiny CPU model learns them in minutes.

    Layout: ``root/annotations/person_keypoints_{train,val}.json``, ``root/images/{train,val}/``
    and ``root/synthetic_meta.json`` (the parameters). When the meta file matches the arguments
    and every file exists, nothing is written.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.
    """
    root = Path(root)
    if not 1 <= int(max_people) <= 6 or not 0 < float(heights[0]) <= float(heights[1]):
        raise ValueError(f"synthetic: max_people must be in 1..6 and heights an increasing positive range, "
                         f"got {max_people}, {list(heights)}")
    heights = (float(heights[0]), float(heights[1]))
    params = _params(num_train, num_val, image_size, seed, max_people, heights)
    meta = root / META_FILE
    if meta.is_file() and all(p.exists() for s in ("train", "val") for p in _split_files(root, s)):
        try:
            if json.loads(meta.read_text()) == params:
                return root
        except json.JSONDecodeError:
            pass
    foreign = _foreign_files(root)
    if foreign:
        raise FileExistsError(
            f"refusing to generate synthetic people in {root}: it holds other files ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}). Point data.root at an empty or synthetic-only folder, or "
            "remove data.synthetic from the config when the folder is a real dataset."
        )
    log.info("generating synthetic people in %s (%s)", root, params)
    root.mkdir(parents=True, exist_ok=True)
    meta.unlink(missing_ok=True)
    category = {
        "id": 1,
        "name": "person",
        "supercategory": "person",
        "keypoints": list(COCO.names),
        "skeleton": [[a + 1, b + 1] for a, b in COCO.skeleton],
    }
    for split, num in (("train", num_train), ("val", num_val)):
        images, annotations = [], []
        for info, anns in _iter_split(root, split, num, image_size, seed, max_people, heights):
            images.append(info)
            for ann in anns:
                annotations.append({**ann, "id": len(annotations) + 1, "image_id": info["id"], "category_id": 1})
        ann_file = _split_files(root, split)[0]
        ann_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = ann_file.with_suffix(".json.tmp")
        tmp.write_text(
            json.dumps(
                {
                    "info": {"description": "DEKR synthetic people", **params},
                    "images": images,
                    "annotations": annotations,
                    "categories": [category],
                }
            )
        )
        tmp.replace(ann_file)
    meta.write_text(json.dumps(params))
    return root


__all__ = ["generate_synthetic", "random_pose", "render_image"]
