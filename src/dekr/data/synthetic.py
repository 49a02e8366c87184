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

Any other keypoint layout (``keypoints=`` a :class:`~dekr.keypoints.KeypointSpec`, a mapping or a
built-in name) gets figures of its :func:`body_plan`, built deterministically from the layout's
names, flip pairs and skeleton: limbs along the skeleton (closed under the flip), left keypoints
mirror images of their right partners with unpaired ones on the axis, one saturated colour and
marker shape per keypoint (shared by flip partners), keypoints without limbs on a filled outline.
The COCO layout keeps the figures above, image for image.

Annotations follow COCO: ``v = 2`` visible, ``v = 1`` inside the image but covered by a figure
drawn later, ``v = 0`` (and ``x = y = 0``) outside the image; ``segmentation`` is the figure's
visible silhouette as compressed RLE, ``area`` its pixel count, ``bbox`` its box.

Everything is a pure function of ``(seed, split, index)``; :func:`generate_synthetic` skips the
work when ``root`` already holds a generation with the same parameters.
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from dekr.keypoints import COCO, KeypointSpec, build_keypoint_spec

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


# ---------------------------------------------------------------------------------------------
# Any keypoint layout: a body plan derived from the spec, deterministic per layout
# ---------------------------------------------------------------------------------------------
PLAN_VERSION = 1  # of the layout-generic figures (the COCO figures above are GENERATOR_VERSION)
_SHAPES = 3  # marker shapes: disc, square, diamond (all mirror-symmetric)
_BODY_COLOR = (185, 110, 70)  # outline of keypoints without limbs


def is_coco_layout(spec: KeypointSpec) -> bool:
    """True when ``spec`` has COCO's names, flip pairs and skeleton: drawn by the original figures."""
    return spec.names == COCO.names and spec.flip_pairs == COCO.flip_pairs and spec.skeleton == COCO.skeleton


@dataclass(frozen=True)
class BodyPlan:
    """Rest pose and drawing style of one layout's figures (figure frame: ``x`` = the figure's left,
    ``y`` down, unit = figure height).

    With flip pairs the plan is mirror-symmetric: ``rest[flip] == rest * (-1, 1)``, every unpaired
    keypoint on the axis ``x = 0``, the kinematic tree mirrored (``parent[flip] == flip[parent]``)
    and colours, shapes and limbs the same on both sides, so a flipped figure with swapped labels is
    again a figure of the plan. Without flip pairs nothing is mirrored.

    Attributes:
        rest: ``[K, 2]`` rest positions.
        flip: ``[K]`` flip partner of each keypoint (itself when unpaired or without symmetry).
        parent: ``[K]`` kinematic parent (``-1``: placed rigidly from the figure centre).
        order: keypoint indices, parents before children.
        limbs: drawn limbs ``(a, b)``, the skeleton closed under the flip, proximal first.
        mirror_limb: index in ``limbs`` of each limb's mirror image.
        colors, limb_colors: RGB per keypoint (shared by flip partners) and per limb.
        shapes: marker shape per keypoint (0 disc, 1 square, 2 diamond).
        marker: marker radius, limb: limb thickness (figure heights).
        hull: keypoints without limbs, drawn on a filled body outline.
        bend: standard deviation (degrees) of each limb's bend from the rest pose.
    """

    rest: np.ndarray
    flip: np.ndarray
    parent: np.ndarray
    order: tuple[int, ...]
    limbs: tuple[tuple[int, int], ...]
    mirror_limb: tuple[int, ...]
    colors: tuple[tuple[int, int, int], ...]
    limb_colors: tuple[tuple[int, int, int], ...]
    shapes: tuple[int, ...]
    marker: float
    limb: float
    hull: tuple[int, ...]
    bend: float


def _layout_seed(spec: KeypointSpec) -> list[int]:
    """Seed words from the layout's names, flip pairs and skeleton (never from Python's ``hash``)."""
    text = json.dumps([list(spec.names), [list(p) for p in spec.flip_pairs], [list(e) for e in spec.skeleton]])
    digest = hashlib.sha256(text.encode()).digest()
    return [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]


def body_plan(spec: KeypointSpec) -> BodyPlan:
    """The figure plan of ``spec``, a pure function of its names, flip pairs and skeleton."""
    return _body_plan(spec.names, spec.flip_pairs, spec.skeleton)


@functools.lru_cache(maxsize=32)
def _body_plan(
    names: tuple[str, ...], flip_pairs: tuple[tuple[int, int], ...], skeleton: tuple[tuple[int, int], ...]
) -> BodyPlan:
    spec = KeypointSpec(name="plan", names=names, flip_pairs=flip_pairs, skeleton=skeleton)
    rng = np.random.default_rng(_layout_seed(spec))
    k = spec.num_keypoints
    flip = spec.flip_index()
    sym = spec.can_flip
    left = np.zeros(k, bool)  # the first keypoint of each pair sits on the figure's left (x > 0)
    for a, _ in flip_pairs:
        left[a] = True
    fixed = flip == np.arange(k)  # unpaired (on the axis when the layout is symmetric)

    edges: set[tuple[int, int]] = set()
    for a, b in skeleton:
        for u, v in ((a, b), (int(flip[a]), int(flip[b]))):
            if u != v:
                edges.add((min(u, v), max(u, v)))
    adj: list[list[int]] = [[] for _ in range(k)]
    for u, v in sorted(edges):
        adj[u].append(v)
        adj[v].append(u)

    min_d = 0.45  # limb length ~1 while building; normalised at the end
    pos = np.zeros((k, 2))
    placed = np.zeros(k, bool)
    parent = np.full(k, -1, dtype=np.int64)
    order: list[int] = []

    def mirror(p: np.ndarray) -> np.ndarray:
        return np.array([-p[0], p[1]])

    def fit(p: np.ndarray, orbit: tuple[int, ...]) -> float:
        others = pos[placed & ~np.isin(np.arange(k), orbit)]
        d = np.linalg.norm(others - p, axis=1).min() if len(others) else np.inf
        if sym and not fixed[orbit[0]]:
            d = min(d, 2 * abs(p[0]))  # the partner's mirror image
        return float(d)

    def place(n: int, propose: Any) -> None:
        """Place ``n`` (and its flip partner) at the best of several proposals."""
        m = int(flip[n]) if sym else n
        orbit = (n,) if m == n else (n, m)
        best, best_d = None, -1.0
        for attempt in range(40):
            p = np.asarray(propose(1.0 + 0.03 * attempt), dtype=float)
            if sym and fixed[n]:
                p[0] = 0.0
            elif sym and p[0] < min_d / 2:  # the left keypoint stays on the left, apart from its partner
                p[0] = min_d - p[0]
            d = fit(p, orbit)
            if d > best_d:
                best, best_d = p, d
            if d >= min_d:
                break
        pos[n] = best
        placed[n] = True
        order.append(n)
        if m != n:
            pos[m] = mirror(best)
            placed[m] = True
            parent[m] = flip[parent[n]] if parent[n] >= 0 else -1
            order.append(m)

    def unit(v: np.ndarray) -> np.ndarray:
        norm = np.linalg.norm(v)
        return v / norm if norm > 1e-9 else np.array([0.0, 1.0])

    box = 0.5 * max(1.0, 0.45 * np.sqrt(k))  # scattered keypoints fill a box of about this half-size
    while not placed.all():
        queue = list(order)
        while queue:
            u = queue.pop(0)
            for v in adj[u]:
                if placed[v]:
                    continue
                if sym and not left[v] and not fixed[v]:  # build the left keypoint, mirror the right
                    v, u_from = int(flip[v]), int(flip[u])
                else:
                    u_from = u
                if sym and fixed[v]:
                    axis = [w for w in adj[v] if placed[w] and fixed[w]]
                    if axis:  # hangs from an axis keypoint: a spine, continued in its direction
                        q = axis[0]
                        parent[v] = q
                        up = pos[q][1] - pos[parent[q]][1] if parent[q] >= 0 else rng.choice([-1.0, 1.0])
                        sign = 1.0 if up > 0 else -1.0

                        def propose(g: float, b: np.ndarray = pos[q], s: float = sign) -> np.ndarray:
                            s = s if g < 1.3 else rng.choice([-1.0, 1.0])  # crowded: either way
                            return b + [0.0, s * g * rng.uniform(0.7, 1.1)]

                        place(v, propose)
                    else:  # on the axis between side keypoints: rigid from the centre
                        base = pos[u_from]
                        place(v, lambda g, b=base: [0.0, b[1] + g * rng.uniform(-0.8, 0.8)])
                else:
                    parent[v] = u_from
                    base = pos[u_from]
                    if sym and (fixed[u_from] or parent[u_from] < 0):
                        heading, spread = 0.0, np.deg2rad(60)  # outwards, to the figure's left
                    elif parent[u_from] >= 0:  # onwards, like the next segment of a limb
                        heading = float(np.arctan2(*unit(base - pos[parent[u_from]])[::-1]))
                        spread = np.deg2rad(45)
                    else:
                        heading, spread = rng.uniform(-np.pi, np.pi), np.pi

                    def propose(g: float, b: np.ndarray = base, h: float = heading, s: float = spread) -> np.ndarray:
                        a = h + rng.uniform(-s, s)
                        return b + g * rng.uniform(0.7, 1.1) * np.array([np.cos(a), np.sin(a)])

                    place(v, propose)
                queue.append(v)
                if sym and not fixed[v]:
                    queue.append(int(flip[v]))
        if placed.all():
            break
        # a new component (or a keypoint without limbs): placed rigidly somewhere on the body
        rest = np.flatnonzero(~placed)
        degree = np.array([len(adj[n]) for n in rest])
        n = int(rest[np.argmax(degree + (fixed[rest] if sym else 0))])
        if sym and not left[n] and not fixed[n]:
            n = int(flip[n])
        place(n, lambda g: [rng.uniform(-box, box) * g, rng.uniform(-1.6, 1.6) * box * g])

    # normalise: unit height (or width, if wider), axis at x = 0 (centred box without symmetry)
    lo, hi = pos.min(0), pos.max(0)
    centre = (lo + hi) / 2
    if sym:
        centre[0] = 0.0
    extent = max(float((hi - lo).max()), 1e-6)
    rest = (pos - centre) / extent
    pair_d = np.linalg.norm(rest[:, None] - rest[None], axis=-1) + np.eye(k) * 1e9
    marker = float(np.clip(0.4 * pair_d.min(), 0.012, 0.035)) if k > 1 else 0.035

    # colours and marker shapes: one per flip orbit, shuffled (saturated hues; the background is grey)
    orbits = sorted({min(n, int(flip[n])) for n in range(k)})
    n_hues = int(np.ceil(len(orbits) / (1 if len(orbits) <= 12 else _SHAPES)))
    codes = rng.permutation(len(orbits))
    orbit_color, orbit_shape = {}, {}
    for o, code in zip(orbits, codes, strict=True):
        hue, shape = code % n_hues, code // n_hues
        rgb = colorsys.hsv_to_rgb(hue / n_hues, 0.9, 1.0 if shape != 1 else 0.8)
        orbit_color[o] = tuple(int(round(255 * c)) for c in rgb)
        orbit_shape[o] = int(shape)
    colors = tuple(orbit_color[min(n, int(flip[n]))] for n in range(k))
    shapes = tuple(orbit_shape[min(n, int(flip[n]))] for n in range(k))

    rank = {n: i for i, n in enumerate(order)}
    limbs = sorted(edges, key=lambda e: (min(rank[e[0]], rank[e[1]]), max(rank[e[0]], rank[e[1]])))
    index = {e: i for i, e in enumerate(limbs)}
    mirror_limb = []
    for a, b in limbs:
        fa, fb = int(flip[a]), int(flip[b])
        mirror_limb.append(index[(min(fa, fb), max(fa, fb))])
    limb_colors = []
    for a, b in limbs:
        mean = (np.asarray(colors[a], float) + np.asarray(colors[b], float)) / 510.0
        h, _, _ = colorsys.rgb_to_hsv(*mean)
        limb_colors.append(tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(h, 0.65, 0.7)))
    hull = tuple(n for n in range(k) if not adj[n])
    for array in (rest, flip, parent):
        array.setflags(write=False)  # the plan is cached and shared
    depth = max(1, int(np.ceil(np.log2(k + 1))))
    return BodyPlan(
        rest=rest,
        flip=flip if sym else np.arange(k),
        parent=parent,
        order=tuple(order),
        limbs=tuple(limbs),
        mirror_limb=tuple(mirror_limb),
        colors=colors,
        limb_colors=tuple(limb_colors),
        shapes=shapes,
        marker=marker,
        limb=min(0.04, 1.2 * marker),
        hull=hull,
        bend=float(30.0 / np.sqrt(depth)),
    )


def random_figure(rng: np.random.Generator, plan: BodyPlan, centre: np.ndarray, height: float) -> dict[str, Any]:
    """Keypoints ``[K, 2]`` (image px) of one figure of ``plan`` around ``centre``, ``height`` px tall.

    Every random choice has a mirror-symmetric distribution (lean, width, per-limb bends and
    lengths, the side drawn first), so flipped figures with swapped labels are as likely as any.
    """
    k = len(plan.order)
    lean = rng.normal(0.0, 12.0)
    width = rng.uniform(0.8, 1.1)
    bend = np.deg2rad(rng.normal(0.0, plan.bend, k))
    stretch = rng.uniform(0.85, 1.05, k)
    jitter = rng.normal(0.0, 0.01, (k, 2))
    right_first = bool(rng.random() < 0.5)
    local = np.zeros((k, 2))
    angle = np.zeros(k)
    for n in plan.order:
        p = plan.parent[n]
        if p < 0:
            local[n] = plan.rest[n] + jitter[n]
        else:
            angle[n] = angle[p] + bend[n]
            c, s = np.cos(angle[n]), np.sin(angle[n])
            d = (plan.rest[n] - plan.rest[p]) * stretch[n]
            local[n] = local[p] + [c * d[0] - s * d[1], s * d[0] + c * d[1]]
    local[:, 0] *= width
    r = np.deg2rad(lean)
    c, s = np.cos(r), np.sin(r)
    # figure frame -> image: the figure's left (+x) is the image's +x (figures face the camera)
    k_img = centre + height * np.stack([c * local[:, 0] - s * local[:, 1], s * local[:, 0] + c * local[:, 1]], 1)
    return {"keypoints": k_img, "height": float(height), "lean": float(lean), "right_first": right_first}


def _draw_generic(
    canvas: np.ndarray, labels: np.ndarray | None, label: int, fig: dict[str, Any], plan: BodyPlan
) -> None:
    """Draw one figure of ``plan``: body outline, limbs along the skeleton, a marker per keypoint."""
    k, H = fig["keypoints"], fig["height"]
    sh = 4

    def P(p: np.ndarray) -> tuple[int, int]:
        return int(round(p[0] * (1 << sh))), int(round(p[1] * (1 << sh)))

    def poly(pts: np.ndarray, color: tuple[int, int, int]) -> None:
        q = np.round(pts * (1 << sh)).astype(np.int32)
        cv2.fillConvexPoly(canvas, q, color, cv2.LINE_AA, sh)
        if labels is not None:
            cv2.fillConvexPoly(labels, q, label, cv2.LINE_8, sh)

    if len(plan.hull) >= 3:  # keypoints without limbs sit on a filled outline of themselves
        pts = k[list(plan.hull)].astype(np.float32)
        hull = cv2.convexHull(pts)[:, 0].astype(float)
        mid = hull.mean(0)
        out = hull - mid
        out += 2.5 * plan.marker * H * out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)
        poly(mid + out, _BODY_COLOR)
    elif len(plan.hull) == 2:
        a, b = k[list(plan.hull)]
        t = max(int(round(plan.marker * 3 * H)), 1)
        cv2.line(canvas, P(a), P(b), _BODY_COLOR, t, cv2.LINE_AA, sh)
        if labels is not None:
            cv2.line(labels, P(a), P(b), label, t, cv2.LINE_8, sh)

    order = list(range(len(plan.limbs)))
    if fig["right_first"]:
        order = [plan.mirror_limb[i] for i in order]
    t = max(int(round(plan.limb * H)), 1)
    for i in order:
        a, b = plan.limbs[i]
        cv2.line(canvas, P(k[a]), P(k[b]), plan.limb_colors[i], t, cv2.LINE_AA, sh)
        if labels is not None:
            cv2.line(labels, P(k[a]), P(k[b]), label, t, cv2.LINE_8, sh)

    r = max(plan.marker * H, 1.0)
    lean = np.deg2rad(fig["lean"])
    c, s = np.cos(lean), np.sin(lean)
    corners = {
        1: np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]]) * 0.85,
        2: np.array([[0, 1.2], [-1.2, 0], [0, -1.2], [1.2, 0]]),
    }
    points = [int(plan.flip[n]) for n in plan.order] if fig["right_first"] else plan.order
    for n in points:
        color = plan.colors[n]
        rim = (20, 20, 20) if sum(color) > 380 else (235, 235, 235)
        shape = plan.shapes[n]
        for radius, col in ((r * 1.3, rim), (r, color)):
            if shape == 0:
                rr = max(int(round(radius * (1 << sh))), 1 << sh)
                cv2.circle(canvas, P(k[n]), rr, col, -1, cv2.LINE_AA, sh)
                if labels is not None:
                    cv2.circle(labels, P(k[n]), rr, label, -1, cv2.LINE_8, sh)
            else:
                q = corners[shape] * radius
                q = np.stack([c * q[:, 0] - s * q[:, 1], s * q[:, 0] + c * q[:, 1]], 1) + k[n]
                poly(q, col)


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
    seed: int,
    split: str,
    index: int,
    size: int,
    max_people: int = 6,
    heights: tuple[float, float] = (30.0, 300.0),
    keypoints: KeypointSpec | Mapping | str = COCO,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One synthetic image (uint8 RGB ``[size, size, 3]``) and its annotations (no ids yet).

    ``max_people`` caps the labelled figures per image (1..6); ``heights`` is the range of figure
    heights in pixels (log-uniform, capped at ``1.2 * size``). ``keypoints`` is the layout (see
    :func:`dekr.keypoints.build_keypoint_spec`): COCO's is drawn by :func:`random_pose` and
    :func:`_draw_figure` (unchanged images), any other by its :func:`body_plan`."""
    spec = build_keypoint_spec(keypoints)
    if is_coco_layout(spec):
        make_figure, draw_figure = random_pose, _draw_figure
    else:
        plan = body_plan(spec)

        def make_figure(rng: np.random.Generator, centre: np.ndarray, height: float) -> dict[str, Any]:
            return random_figure(rng, plan, centre, height)

        def draw_figure(canvas: np.ndarray, labels: np.ndarray | None, label: int, fig: dict[str, Any]) -> None:
            _draw_generic(canvas, labels, label, fig, plan)

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
            draw_figure(img, labels, crowd_label, make_figure(rng, pelvis, h))

    n_people = min(int(rng.choice([1, 2, 3, 4, 5, 6], p=[0.15, 0.25, 0.25, 0.15, 0.1, 0.1])), max_people)
    min_h, max_h = float(heights[0]), min(float(heights[1]), 1.2 * size)
    heights = np.exp(rng.uniform(np.log(min_h), np.log(max(max_h, min_h)), n_people))
    heights.sort()  # bigger (closer) figures are drawn last, in front
    figures = []
    for i, h in enumerate(heights):
        pelvis = np.array([rng.uniform(0.05, 0.95) * size, rng.uniform(0.1, 1.0) * size + 0.05 * h])
        fig = make_figure(rng, pelvis, float(h))
        draw_figure(img, labels, i + 2, fig)
        figures.append(fig)

    crowd_mask = labels == crowd_label
    if crowd_mask.any():
        anns.append(
            {
                "iscrowd": 1,
                "num_keypoints": 0,
                "keypoints": [0] * (3 * spec.num_keypoints),
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


def _params(
    num_train: int,
    num_val: int,
    image_size: int,
    seed: int,
    max_people: int = 6,
    heights: tuple[float, float] = (30.0, 300.0),
    spec: KeypointSpec = COCO,
) -> dict[str, Any]:
    params: dict[str, Any] = {
        "version": GENERATOR_VERSION,
        "num_train": int(num_train),
        "num_val": int(num_val),
        "image_size": int(image_size),
        "seed": int(seed),
    }
    if max_people != 6 or tuple(heights) != (30.0, 300.0):  # non-default layouts (older metas stay valid)
        params.update({"max_people": int(max_people), "heights": [float(h) for h in heights]})
    if not is_coco_layout(spec):  # the layout decides the figures (COCO metas stay as they were)
        params["keypoints"] = {
            "name": spec.name,
            "names": list(spec.names),
            "flip_pairs": [list(p) for p in spec.flip_pairs],
            "skeleton": [list(e) for e in spec.skeleton],
            "plan": PLAN_VERSION,
        }
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


def _iter_split(
    root: Path,
    split: str,
    num: int,
    size: int,
    seed: int,
    max_people: int = 6,
    heights: tuple[float, float] = (30.0, 300.0),
    spec: KeypointSpec = COCO,
) -> Iterator[tuple[dict, list[dict]]]:
    image_dir = _split_files(root, split)[1]
    image_dir.mkdir(parents=True, exist_ok=True)
    for index in range(num):
        img, anns = render_image(seed, split, index, size, max_people, heights, spec)
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
    keypoints: KeypointSpec | Mapping | str = COCO,
) -> Path:
    """Write a synthetic COCO-format keypoint dataset under ``root``; idempotent.

    ``max_people`` (1..6) and ``heights`` (figure height range, px) shape the scenes: the quickstart
    uses fewer, larger people than the default so that a tiny CPU model learns them in minutes.
    ``keypoints`` is the layout (a :class:`~dekr.keypoints.KeypointSpec`, a built-in name or a
    mapping, see :func:`~dekr.keypoints.build_keypoint_spec`): COCO gives the people above, any
    other layout figures of its :func:`body_plan` (limbs along its skeleton, flip-symmetric, one
    colour and marker per keypoint and flip pair). The category lists the layout's keypoint names
    and 1-based skeleton. A different layout counts as different parameters: it regenerates.

    Layout: ``root/annotations/person_keypoints_{train,val}.json``, ``root/images/{train,val}/``
    and ``root/synthetic_meta.json`` (the parameters). When the meta file matches the arguments
    and every file exists, nothing is written.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.
    """
    root = Path(root)
    if not 1 <= int(max_people) <= 6 or not 0 < float(heights[0]) <= float(heights[1]):
        raise ValueError(
            f"synthetic: max_people must be in 1..6 and heights an increasing positive range, "
            f"got {max_people}, {list(heights)}"
        )
    heights = (float(heights[0]), float(heights[1]))
    spec = build_keypoint_spec(keypoints)
    params = _params(num_train, num_val, image_size, seed, max_people, heights, spec)
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
    coco = is_coco_layout(spec)
    category = {
        "id": 1,
        "name": "person" if coco else spec.name,
        "supercategory": "person" if coco else spec.name,
        "keypoints": list(spec.names),
        "skeleton": [[a + 1, b + 1] for a, b in spec.skeleton],
    }
    description = "DEKR synthetic people" if coco else f"DEKR synthetic figures ({spec.name})"
    for split, num in (("train", num_train), ("val", num_val)):
        images, annotations = [], []
        for info, anns in _iter_split(root, split, num, image_size, seed, max_people, heights, spec):
            images.append(info)
            for ann in anns:
                annotations.append({**ann, "id": len(annotations) + 1, "image_id": info["id"], "category_id": 1})
        ann_file = _split_files(root, split)[0]
        ann_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = ann_file.with_suffix(".json.tmp")
        tmp.write_text(
            json.dumps(
                {
                    "info": {"description": description, **params},
                    "images": images,
                    "annotations": annotations,
                    "categories": [category],
                }
            )
        )
        tmp.replace(ann_file)
    meta.write_text(json.dumps(params))
    return root


__all__ = [
    "BodyPlan",
    "body_plan",
    "generate_synthetic",
    "is_coco_layout",
    "random_figure",
    "random_pose",
    "render_image",
]
