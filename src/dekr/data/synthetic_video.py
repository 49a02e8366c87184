"""Synthetic video clips with ground-truth identities, for measuring tracking.

The figures of :mod:`dekr.data.synthetic` (COCO's, or any layout's :func:`~dekr.data.synthetic.body_plan`)
walk across a fixed textured background: each person morphs smoothly between two random poses (a
periodic "gait") while moving along a straight path; in the ``cross`` scenario people start on
alternate sides and walk towards each other, so their paths cross and the nearer (taller, drawn
later) figure occludes the farther one. Everything is a pure function of the arguments.

Ground truth per frame and person: the identity ``id``, keypoints ``[K, 3]`` (``v`` as in the image
generator: 2 visible, 1 covered by a nearer figure, 0 outside the frame), the visible silhouette's
``bbox`` and ``area``, and ``visible`` (visible silhouette / whole silhouette, 0..1).

    from dekr.data.synthetic_video import write_clip
    write_clip("clip.mp4", "clip_gt.json", seed=0, num_frames=120, num_people=3)
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dekr.data.synthetic import (
    _background,
    _bbox,
    _draw_figure,
    _draw_generic,
    body_plan,
    is_coco_layout,
    random_figure,
    random_pose,
)
from dekr.keypoints import COCO, KeypointSpec, build_keypoint_spec


@dataclass(frozen=True)
class _Person:
    pid: int
    a: dict[str, Any]  # pose at phase 0 (pelvis/centre at the origin)
    b: dict[str, Any]  # pose at phase 1
    start: np.ndarray  # [2] position at frame 0
    velocity: np.ndarray  # [2] px per frame
    period: float  # frames per gait cycle
    phase: float


def _people(
    rng: np.random.Generator,
    spec: KeypointSpec,
    width: int,
    height: int,
    num_people: int,
    num_frames: int,
    scenario: str,
    heights: tuple[float, float],
) -> list[_Person]:
    coco = is_coco_layout(spec)
    plan = None if coco else body_plan(spec)
    sizes = np.sort(rng.uniform(heights[0], heights[1], num_people))  # nearer = taller = drawn later
    people = []
    for i, h in enumerate(sizes):
        pose_rng = np.random.default_rng(rng.integers(1 << 31))
        origin = np.zeros(2)
        a, b = (
            (random_pose(pose_rng, origin, float(h)), random_pose(pose_rng, origin, float(h)))
            if coco
            else (random_figure(pose_rng, plan, origin, float(h)), random_figure(pose_rng, plan, origin, float(h)))
        )
        # pelvis height: the whole figure inside the frame (a COCO pelvis sits ~0.45 h below the head top)
        lo, hi = 0.5 * h + 4, max(height - 0.55 * h - 4, 0.5 * h + 5)
        # crossing people walk in one band (their paths overlap); others anywhere
        y = np.clip(rng.normal((lo + hi) / 2, 0.1 * height), lo, hi) if scenario == "cross" else rng.uniform(lo, hi)
        if scenario == "cross":
            left = i % 2 == 0
            x0 = rng.uniform(0.08, 0.22) * width if left else rng.uniform(0.78, 0.92) * width
            x1 = width - x0 + rng.normal(0, 0.05 * width)
            vx = (x1 - x0) / max(num_frames - 1, 1)
            vy = rng.normal(0, 0.1 * abs(vx))
        elif scenario == "static":
            x0, vx, vy = rng.uniform(0.15, 0.85) * width, 0.0, 0.0
        else:  # random walk directions
            x0 = rng.uniform(0.15, 0.85) * width
            speed = rng.uniform(0.2, 0.6) * width / max(num_frames - 1, 1)
            angle = rng.uniform(0, 2 * np.pi)
            vx, vy = speed * np.cos(angle), 0.3 * speed * np.sin(angle)
        people.append(
            _Person(
                i, a, b, np.array([x0, y]), np.array([vx, vy]), float(rng.uniform(16, 32)), float(rng.uniform(0, 1))
            )
        )
    return people


def _at(person: _Person, t: int, width: int, height: int, moving: bool) -> dict[str, Any]:
    """The person's figure (drawing dict) at frame ``t``."""
    w = 0.5 - 0.5 * np.cos(2 * np.pi * (t / person.period + person.phase)) if moving else 0.0
    pos = person.start + person.velocity * t
    pos = np.clip(pos, [0, 0], [width - 1, height - 1])
    fig = dict(person.a)
    fig["keypoints"] = (1 - w) * person.a["keypoints"] + w * person.b["keypoints"] + pos
    if "head" in fig:
        fig["head"] = (1 - w) * person.a["head"] + w * person.b["head"] + pos
    return fig


def render_clip(
    seed: int = 0,
    num_frames: int = 100,
    num_people: int = 3,
    size: tuple[int, int] = (384, 256),
    scenario: str = "cross",
    heights: tuple[float, float] = (110.0, 180.0),
    keypoints: KeypointSpec | Mapping | str = COCO,
) -> Iterator[tuple[np.ndarray, list[dict[str, Any]]]]:
    """Frames (RGB uint8 ``[H, W, 3]``, ``size = (W, H)``) and their ground truth, one at a time.

    Args:
        scenario: ``cross`` (people walk towards each other and cross), ``walk`` (random directions)
            or ``static`` (nobody moves or changes pose: every frame is the same image).
        heights: range of figure heights (px).
        keypoints: the layout (a spec, a mapping or a built-in name).

    Yields:
        ``(image, people)``: one dict per person whose silhouette shows at all, with ``id``,
        ``keypoints`` (``[K, 3]`` float), ``bbox`` (``x, y, w, h``), ``area`` and ``visible``.
    """
    if scenario not in ("cross", "walk", "static"):
        raise ValueError(f"scenario must be 'cross', 'walk' or 'static', got '{scenario}'")
    spec = build_keypoint_spec(keypoints)
    width, height = int(size[0]), int(size[1])
    rng = np.random.default_rng([seed, 7])
    background = _background(rng, max(width, height))[:height, :width]
    people = _people(rng, spec, width, height, num_people, num_frames, scenario, heights)
    if is_coco_layout(spec):
        draw = _draw_figure
    else:
        plan = body_plan(spec)

        def draw(canvas: np.ndarray, labels: np.ndarray | None, label: int, fig: dict[str, Any]) -> None:
            _draw_generic(canvas, labels, label, fig, plan)

    for t in range(num_frames):
        img = background.copy()
        labels = np.zeros((height, width), np.uint16)
        figs = [_at(p, t, width, height, scenario != "static") for p in people]
        whole = []
        for i, fig in enumerate(figs):
            draw(img, labels, i + 1, fig)
            alone = np.zeros((height, width), np.uint16)
            draw(np.zeros((height, width, 3), np.uint8), alone, 1, fig)
            whole.append(int((alone > 0).sum()))
        out = []
        for i, (p, fig) in enumerate(zip(people, figs)):
            mask = labels == i + 1
            if not mask.any():
                continue
            k = fig["keypoints"]
            inside = (k[:, 0] >= 0) & (k[:, 1] >= 0) & (k[:, 0] <= width - 1) & (k[:, 1] <= height - 1)
            xi = np.clip(np.round(k[:, 0]).astype(int), 0, width - 1)
            yi = np.clip(np.round(k[:, 1]).astype(int), 0, height - 1)
            covered = labels[yi, xi] > i + 1
            v = np.where(inside, np.where(covered, 1, 2), 0)
            out.append(
                {
                    "id": p.pid,
                    "keypoints": np.concatenate([np.where(inside[:, None], k, 0.0), v[:, None]], 1),
                    "bbox": _bbox(mask),
                    "area": float(mask.sum()),
                    "visible": float(mask.sum()) / max(whole[i], 1),
                }
            )
        yield img, out


def write_clip(
    video: str | Path,
    ground_truth: str | Path,
    fps: float = 25.0,
    codec: str = "mp4v",
    **clip: Any,
) -> dict[str, Any]:
    """Write :func:`render_clip` as a video and its ground truth as JSON.

    The JSON holds ``fps``, ``size`` (``[W, H]``), ``keypoints`` (the layout's names), ``scenario``,
    ``seed`` and ``frames``: one ``{"frame": t, "people": [...]}`` per frame, each person with ``id``,
    ``keypoints`` (flat ``3K`` list, ``x, y, v``), ``bbox``, ``area`` and ``visible``. Returns that dict.
    """
    spec = build_keypoint_spec(clip.get("keypoints", COCO))
    size = tuple(clip.get("size", (384, 256)))
    video, ground_truth = Path(video), Path(ground_truth)
    video.parent.mkdir(parents=True, exist_ok=True)
    ground_truth.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*codec), float(fps), size)
    frames = []
    try:
        for t, (img, people) in enumerate(render_clip(**clip)):
            writer.write(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            frames.append(
                {
                    "frame": t,
                    "people": [
                        {**p, "keypoints": [round(float(v), 2) for v in p["keypoints"].reshape(-1)]} for p in people
                    ],
                }
            )
    finally:
        writer.release()
    gt = {
        "fps": float(fps),
        "size": list(size),
        "keypoints": list(spec.names),
        "scenario": clip.get("scenario", "cross"),
        "seed": clip.get("seed", 0),
        "frames": frames,
    }
    ground_truth.write_text(json.dumps(gt))
    return gt


def load_ground_truth(path: str | Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per frame ``(ids [P] int64, keypoints [P, K, 3] float32)`` of a :func:`write_clip` file."""
    gt = json.loads(Path(path).read_text())
    k = len(gt["keypoints"])
    out = []
    for f in gt["frames"]:
        ids = np.array([p["id"] for p in f["people"]], np.int64)
        kp = np.array([p["keypoints"] for p in f["people"]], np.float32).reshape(-1, k, 3)
        out.append((ids, kp))
    return out


__all__ = ["load_ground_truth", "render_clip", "write_clip"]
