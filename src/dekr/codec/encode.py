"""DEKR training targets: keypoint/centre heatmaps and disentangled offsets, fully vectorized.

Frames and shapes
-----------------
All coordinates handled by :class:`TargetEncoder` are **output pixels** (stride 4: output pixel
``j`` is input pixel ``4j``). For ``K`` keypoints and an ``h x w`` output map the reference's
targets are four dense ``float32`` arrays:

* ``heatmaps [K+1, h, w]``: unnormalised ``exp(-d^2 / 2 sigma^2)`` per visible keypoint
  (``sigma``) and per person centre (channel ``K``, ``spec.center_sigma``), merged with max;
* ``heatmap_weights [K+1, h, w]``: 1 inside each drawn Gaussian window, ``bg_weight`` elsewhere,
  times the loss mask (0 on crowds, unlabelled people and outside the image);
* ``offsets [2K, h, w]``: ``pixel - keypoint`` (interleaved ``x0, y0, x1, y1, ...``) at the pixels
  of a small window around each person's centre;
* ``offset_weights [2K, h, w]``: ``1 / sqrt(area)`` where an offset is set, 0 elsewhere.

Only the heatmaps are worth storing densely. :meth:`TargetEncoder.encode_batch` (what the data
loader runs on its batch; :meth:`TargetEncoder.encode` for one image) returns the **compact
targets**, which hold the same information:

* ``heatmaps [K+1, h, w]`` as above;
* for the ``M`` pixels inside any offset window: ``offset_pixel [M]`` int64 ``y * w + x``,
  ``offset_target [M, K, 2]`` float32 ``pixel - keypoint`` and ``offset_weight [M, K]`` float32
  (0 where that keypoint has no offset at that pixel).

The heatmap weights follow from the heatmaps and the loss mask: a pixel lies in a Gaussian window
exactly when its heatmap value is positive (the smallest value drawn in a window, about
``exp(-(3 + 2 / sigma)^2)``, is a positive float32 for ``sigma >= 0.5``, which the encoder
enforces), so ``weight = mask * where(heatmap > 0, 1, bg_weight)`` (:func:`heatmap_weights`; the
loss computes it on the training device). :meth:`TargetEncoder.densify` (and calling the encoder)
rebuilds the four dense arrays; they are what the tests compare with the reference.

Speed: heatmaps are drawn as separable Gaussians, one batched matrix product for all windows that
meet no other window of their channel (most of them) and a max-merge of patches for the rest;
offsets are resolved per pixel, with a short loop over the overlap depth only where windows of
different people overlap. The cost left is mostly writing the dense heatmaps.

Reproduced from the reference (HRNet/DEKR), value for value on the same joints
---------------------------------------------------------------------------------
* Gaussian window ``[floor(x - 3s - 1), ceil(x + 3s + 2))`` clipped to the map; a keypoint (or
  centre) outside ``[0, w) x [0, h)`` or with ``v == 0`` is not drawn at all. Values are the
  product of the two float32-rounded 1-D factors: equal to the reference's to float32 rounding
  (about a third of the non-zero values differ in the last bit, relative difference below 2e-7);
  ``exact_heatmaps=True`` draws them directly in float64, bit-identical and slower.
* Centre = mean of the labelled (``v > 0``) keypoints; COCO people whose annotation ``area`` is
  below ``32^2`` get no centre (their keypoint heatmaps are still drawn). CrowdPose has no such
  rule (``min_center_area=0``) and draws its centre with sigma 2 (the spec's ``center_sigma``).
* ``area_mode="reference"``: the reference's "area" is the squared diagonal of the box spanned by
  all keypoint rows *and the origin* (every unlabelled row and the not-yet-set centre row are
  ``(0, 0)``), i.e. ``max_x^2 + max_y^2`` for non-negative COCO coordinates: it depends on where
  the person stands, not on its size. It weights offsets (``1/sqrt(area)``) and decides overlaps.
* ``window="reference"``: offsets are written on ``[int(cx) - r, int(cx) + r) x [int(cy) - r,
  int(cy) + r)`` (truncation toward zero, ``r`` before and ``r - 1`` after the centre); a centre
  whose truncated position is outside the map writes nothing, so ``-1 < cx < 0`` still counts.
* Overlaps are resolved exactly as the reference's sequential loop does (people in annotation
  order, keypoints in index order, per pixel): a keypoint slot counts as occupied when its stored
  offset is non-zero (an exactly-zero offset looks free); a person may overwrite an occupied slot
  only if the last area stored at that pixel (``float32``) is ``>=`` its own (``float64``) area; the
  stored area is updated by every write. In practice the smaller person wins; the ``float32``
  rounding of the stored area decides ties, as in the reference.
* Offset weights are *not* multiplied by the loss mask (heatmap weights are).

Deviations (each one an option; the defaults are marked)
--------------------------------------------------------
* ``fix_zero_keypoint_center=True`` (**default, a bug fix**): the reference gives a non-crowd
  person with no labelled keypoint (and area >= 32^2, or any CrowdPose person) a *labelled* centre
  at the image origin ``(0, 0)``, which can land in the map under augmentation and train a
  phantom centre. We give such a person no centre. ``False`` reproduces the bug.
* ``area_mode="box"``: squared diagonal of the labelled keypoints' box (true size, in the same
  input-pixel units as the reference after augmentation), floored at 1.
* ``window="symmetric"``: ``(2r+1)^2`` window centred on the *rounded* centre.
* Areas are floored at ``1e-6`` in every mode, so a degenerate person never gets an infinite weight
  (the reference would write ``inf``; this only happens for a person whose labelled keypoints
  all sit at the origin).
* The reference supports only square maps and, through a hard-coded ``idx < 17``, draws the
  centre with the joint sigma whenever ``K < 17`` (CrowdPose) and channels past 16 with the centre
  sigma when ``K > 17``; here any ``h x w`` and any ``K`` work, and the centre sigma comes from the
  :class:`~dekr.keypoints.KeypointSpec` (``center_sigma``: 4 for COCO, 2 for CrowdPose as the
  reference; set it to the joint sigma to mimic the reference on other ``K < 17`` layouts).
* The training-flip 3-px label shift of the reference is an option of the augmentation
  (:class:`dekr.data.transforms.TrainTransform`, ``flip_label_shift``), not of this module.

Verification: ``tests/data/golden_targets.npz`` (written by ``benchmarks/make_golden_targets.py``
from the official code) holds digests of the official generators' output on real, augmented and
fabricated crowded joints, and of whole official training samples; the tests compare against it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

from dekr.codec.config import TargetConfig, default_codec_config
from dekr.keypoints import KeypointSpec

AreaMode = Literal["reference", "box"]
WindowMode = Literal["reference", "symmetric"]

#: people whose COCO annotation area is below this get no centre (reference: 32 x 32).
COCO_MIN_CENTER_AREA = 32.0**2

#: people encoded per vectorized step of :meth:`TargetEncoder.encode_batch` (cache-sized steps)
PEOPLE_PER_STEP = 64

#: smallest heatmap sigma (output px) whose Gaussian stays positive in float32 over its whole window.
MIN_SIGMA = 0.5


def person_centers_and_areas(
    keypoints: np.ndarray,
    ann_areas: np.ndarray | None = None,
    *,
    min_center_area: float = COCO_MIN_CENTER_AREA,
    area_mode: AreaMode = "reference",
    fix_zero_keypoint_center: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Centres and "areas" of people, in original image pixels (the reference's ``get_joints``).

    Args:
        keypoints: ``[P, K, 3]`` ``(x, y, v)`` in original image pixels.
        ann_areas: ``[P]`` annotation areas (COCO ``area``); people below ``min_center_area`` get
            no centre. ``None`` (or ``min_center_area <= 0``) disables the rule.
        min_center_area: see ``ann_areas``; 1024 for COCO, 0 for CrowdPose.
        area_mode: ``"reference"`` (origin-anchored box diagonal squared) or ``"box"``.
        fix_zero_keypoint_center: give people without labelled keypoints no centre (default)
            instead of the reference's labelled centre at ``(0, 0)``.

    Returns:
        ``centers [P, 3]`` float64 ``(x, y, v)`` with ``v`` 1 or 0, and ``areas [P]`` float64 in
        original pixels squared.
    """
    kpts = np.asarray(keypoints, dtype=np.float64)
    p = kpts.shape[0]
    labelled = kpts[:, :, 2] != 0
    count = labelled.sum(1)
    xy_sum = np.where(labelled[:, :, None], kpts[:, :, :2], 0.0).sum(1)
    centers = np.zeros((p, 3), dtype=np.float64)
    has = count > 0
    centers[has, :2] = xy_sum[has] / count[has, None]
    centers[:, 2] = has if fix_zero_keypoint_center else 1.0
    if ann_areas is not None and min_center_area > 0:
        small = np.asarray(ann_areas, dtype=np.float64).reshape(p) < min_center_area
        centers[small, 2] = 0.0

    if area_mode == "reference":
        # box over all K rows plus the (still zero) centre row, i.e. including the origin
        xy = kpts[:, :, :2]
        ext = xy.max(1, initial=0.0) - xy.min(1, initial=0.0)
    elif area_mode == "box":
        xy = kpts[:, :, :2]
        hi = np.where(labelled[:, :, None], xy, -np.inf).max(1, initial=-np.inf)
        lo = np.where(labelled[:, :, None], xy, np.inf).min(1, initial=np.inf)
        ext = np.where(has[:, None], hi - lo, 0.0)
    else:
        raise ValueError(f"area_mode must be 'reference' or 'box', got {area_mode!r}")
    areas = (ext**2).sum(1)
    if area_mode == "box":
        areas = np.maximum(areas, 1.0)
    return centers, areas


class TargetEncoder:
    """Encode people (output pixels) into DEKR heatmap and offset targets; no Python loops.

    Args:
        spec: keypoint layout (``K`` and the centre sigma).
        output_size: ``int`` (square) or ``(h, w)`` of the output map.
        config: the codec's :class:`~dekr.codec.config.TargetConfig` (``sigma`` at least 0.5 output
            px, offset ``radius``, ``bg_weight`` used by :meth:`densify`, ``window``, ``area_mode``,
            ``fix_zero_keypoint_center``, ``exact_heatmaps``); ``None``: the codec group's defaults.
        min_center_area: people whose annotation area is below this get no centre (a dataset rule:
            1024 for COCO, 0 for CrowdPose).
        center_sigma: sigma of the centre heatmap; ``None`` takes ``spec.center_sigma``.
        **overrides: single :class:`TargetConfig` fields replaced, e.g. ``window="symmetric"``.
    """

    def __init__(
        self,
        spec: KeypointSpec,
        output_size: int | tuple[int, int],
        config: TargetConfig | None = None,
        *,
        min_center_area: float = COCO_MIN_CENTER_AREA,
        center_sigma: float | None = None,
        **overrides: Any,
    ) -> None:
        config = config or default_codec_config().targets
        if overrides:
            config = _replace_checked(config, overrides)
        self.spec = spec
        self.config = config
        self.output_size: tuple[int, int] = (
            (int(output_size), int(output_size))
            if isinstance(output_size, int)
            else (int(output_size[0]), int(output_size[1]))
        )
        self.sigma = float(config.sigma)
        self.center_sigma = float(spec.center_sigma if center_sigma is None else center_sigma)
        self.radius = int(config.radius)
        self.bg_weight = float(config.bg_weight)
        self.window: WindowMode = config.window
        self.area_mode: AreaMode = config.area_mode
        self.min_center_area = float(min_center_area)
        self.fix_zero_keypoint_center = bool(config.fix_zero_keypoint_center)
        self.exact_heatmaps = bool(config.exact_heatmaps)
        if self.window not in ("reference", "symmetric"):
            raise ValueError(f"window must be 'reference' or 'symmetric', got {self.window!r}")
        if self.area_mode not in ("reference", "box"):
            raise ValueError(f"area_mode must be 'reference' or 'box', got {self.area_mode!r}")
        if min(self.sigma, self.center_sigma) < MIN_SIGMA:
            raise ValueError(
                f"heatmap sigmas must be at least {MIN_SIGMA} output px (got sigma={self.sigma}, "
                f"center_sigma={self.center_sigma}): smaller Gaussians underflow float32 inside their window"
            )
        if self.radius < 1:
            raise ValueError(f"radius must be a positive number of output pixels, got {self.radius}")

    @property
    def num_keypoints(self) -> int:
        """K."""
        return self.spec.num_keypoints

    def centers_and_areas(
        self, keypoints: np.ndarray, ann_areas: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """:func:`person_centers_and_areas` with this encoder's options (original pixels)."""
        return person_centers_and_areas(
            keypoints,
            ann_areas,
            min_center_area=self.min_center_area,
            area_mode=self.area_mode,
            fix_zero_keypoint_center=self.fix_zero_keypoint_center,
        )

    # ------------------------------------------------------------------ public API
    def encode(
        self,
        keypoints: np.ndarray,
        centers: np.ndarray,
        areas: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """Compact targets of one image (see the module docstring).

        Args:
            keypoints: ``[P, K, 3]`` ``(x, y, v)`` in output pixels (any float dtype).
            centers: ``[P, 3]`` ``(x, y, v)`` in output pixels; ``v >= 1`` marks a centre.
            areas: ``[P]`` per-person areas (input px squared, as the reference after augmentation).

        Returns:
            ``heatmaps [K+1, h, w]``, and for the ``M`` pixels that have offsets: ``offset_pixel [M]``
            int64 ``y * w + x`` (ascending), ``offset_target [M, K, 2]`` and ``offset_weight [M, K]``
            (0 where that keypoint has no offset there), all float32.
        """
        out = self.encode_batch([keypoints], [centers], [areas])
        del out["offset_counts"]
        out["heatmaps"] = out["heatmaps"][0]
        return out

    def encode_batch(
        self,
        keypoints: Sequence[np.ndarray],
        centers: Sequence[np.ndarray],
        areas: Sequence[np.ndarray],
        heatmaps_out: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Compact targets of ``B`` images in one vectorized pass (what the data loader runs per batch;
        the per-call cost is shared by the batch).

        Args:
            keypoints, centers, areas: one entry per image, as in :meth:`encode`.
            heatmaps_out: optional C-contiguous float32 ``[B, K+1, h, w]`` array to draw into (e.g. a
                shared-memory batch; its content is overwritten); saves an allocation and a copy.

        Returns:
            ``heatmaps [B, K+1, h, w]``; ``offset_pixel [M]`` int64 ``(b * h + y) * w + x``
            (ascending), ``offset_target [M, K, 2]``, ``offset_weight [M, K]`` as in :meth:`encode`;
            and ``offset_counts [B]``, each image's number of pixels with offsets.
        """
        k = self.num_keypoints
        b = len(keypoints)
        if not len(centers) == len(areas) == b:
            raise ValueError("encode_batch: keypoints, centers and areas need one entry per image")
        counts = np.array([len(kp) for kp in keypoints], dtype=np.int64)
        kpts = np.concatenate([np.asarray(kp, dtype=np.float64).reshape(-1, k, 3) for kp in keypoints])
        ctrs = np.concatenate([np.asarray(c, dtype=np.float64).reshape(-1, 3) for c in centers])
        area = np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1) for a in areas])
        if [len(c) for c in centers] != counts.tolist() or [np.size(a) for a in areas] != counts.tolist():
            raise ValueError(
                f"keypoints ({len(kpts)}), centers ({len(ctrs)}) and areas ({len(area)}) must list the same people"
            )
        heat = self._heatmap_buffer(b, heatmaps_out)
        points = np.concatenate([kpts, ctrs[:, None]], axis=1)
        area = np.maximum(area, 1e-6)
        h, w = self.output_size
        # consecutive groups of images with at most PEOPLE_PER_STEP people (at least one image each)
        # keep the intermediate arrays in cache on crowded batches
        ends = np.cumsum(counts)
        cuts = [0]
        while cuts[-1] < b:
            first = int(ends[cuts[-1] - 1]) if cuts[-1] else 0
            cuts.append(max(cuts[-1] + 1, int(np.searchsorted(ends, first + PEOPLE_PER_STEP, side="right"))))
        parts = []
        for i0, i1 in zip(cuts[:-1], cuts[1:]):
            p0, p1 = (int(ends[i0 - 1]) if i0 else 0), int(ends[i1 - 1])
            image = np.repeat(np.arange(i1 - i0), counts[i0:i1])
            self._draw_heatmaps(points[p0:p1], image, counts[i0:i1], heat[i0:i1])
            pixel, target, weight = self._offsets(kpts[p0:p1], ctrs[p0:p1], area[p0:p1], image)
            parts.append((pixel + i0 * (h * w), target, weight))
        pixel, target, weight = (np.concatenate(arrays) for arrays in zip(*parts))
        return {
            "heatmaps": heat,
            "offset_pixel": pixel,
            "offset_target": target,
            "offset_weight": weight,
            "offset_counts": np.bincount(pixel // (h * w), minlength=b),
        }

    def densify(self, compact: dict[str, np.ndarray], mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The reference's four dense arrays from compact targets (module docstring).

        Args:
            compact: :meth:`encode` output (one image) or :meth:`encode_batch` output (leading ``B``).
            mask: ``[h, w]`` (or ``[B, h, w]``) loss mask, 1 = use, 0 = ignore; ``None``: all ones.

        Returns:
            ``heatmaps``/``heatmap_weights [(B,) K+1, h, w]`` and ``offsets``/``offset_weights
            [(B,) 2K, h, w]``, float32.
        """
        k = self.num_keypoints
        h, w = self.output_size
        heat = compact["heatmaps"]
        lead = heat.shape[:-3]
        if mask is None:
            mask = np.ones((*lead, h, w), np.float32)
        mask = np.asarray(mask, dtype=np.float32)
        if mask.shape != (*lead, h, w):
            raise ValueError(f"mask has shape {mask.shape}, expected {(*lead, h, w)} (the output size)")
        n = int(np.prod(lead, dtype=np.int64))
        pixel = compact["offset_pixel"]
        offsets = np.zeros((n * h * w, k, 2), np.float32)
        weights = np.zeros((n * h * w, k, 2), np.float32)
        offsets[pixel] = compact["offset_target"]
        weights[pixel] = compact["offset_weight"][..., None]

        def channels_first(a: np.ndarray) -> np.ndarray:  # [n*h*w, K, 2] -> [(B,) 2K, h, w]
            return np.ascontiguousarray(a.reshape(n, h * w, 2 * k).transpose(0, 2, 1)).reshape(*lead, 2 * k, h, w)

        return {
            "heatmaps": heat,
            "heatmap_weights": heatmap_weights(heat, mask, self.bg_weight),
            "offsets": channels_first(offsets),
            "offset_weights": channels_first(weights),
        }

    def __call__(
        self,
        keypoints: np.ndarray,
        centers: np.ndarray,
        areas: np.ndarray,
        mask: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Dense targets of one image: :meth:`densify` of :meth:`encode` (arguments as there).

        Returns:
            dict of float32 arrays ``heatmaps``/``heatmap_weights [K+1, h, w]`` and
            ``offsets``/``offset_weights [2K, h, w]``.
        """
        if mask is not None and np.shape(mask) != self.output_size:
            raise ValueError(f"mask has shape {np.shape(mask)}, expected {self.output_size} (the output size)")
        return self.densify(self.encode(keypoints, centers, areas), mask)

    # ------------------------------------------------------------------ heatmaps
    def _heatmap_buffer(self, b: int, out: np.ndarray | None) -> np.ndarray:
        shape = (b, self.num_keypoints + 1, *self.output_size)
        if out is None:
            return np.empty(shape, np.float32)  # every value is written
        if out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ValueError(f"heatmaps_out must be a C-contiguous float32 array of shape {shape}")
        return out

    def _draw_heatmaps(self, points: np.ndarray, image: np.ndarray, counts: np.ndarray, heat: np.ndarray) -> None:
        """Draw ``points [P, K+1, 3]`` (row ``K`` = centre) of images ``image [P]`` into ``heat
        [B, K+1, h, w]``, overwriting every value.

        A Gaussian is separable inside its window, ``g(x, y) = gx(x) * gy(y)`` (both factors rounded
        to float32, so values agree with the reference's float32 ones to rounding). The windows
        that touch no other window of their channel form one batched matrix product,
        ``sum_i gy_i gx_i^T`` per channel (exactly one non-zero term per pixel), written straight into
        ``heat``; windows that meet another one of their channel are max-merged on top, patch by patch.
        """
        b, k1, h, w = heat.shape
        xy = np.ascontiguousarray(points[..., :2])
        v = points[..., 2]
        drawn = (v > 0) & (xy[..., 0] >= 0) & (xy[..., 1] >= 0) & (xy[..., 0] < w) & (xy[..., 1] < h)
        sigma = np.full(k1, float(self.sigma))
        sigma[-1] = float(self.center_sigma)
        reach = 3 * sigma[:, None]
        lo = np.floor(xy - (reach + 1))  # window [lo, hi) per axis, [P, K+1, 2]
        hi = np.ceil(xy + (reach + 2))
        crowded = None if self.exact_heatmaps else self._meeting_windows(lo, hi, drawn, image, counts)
        # per sigma (keypoints, centres): alone (grid, factors, plane), together (grid, patches, plane)
        alone, together = [], []
        for part in (slice(0, k1 - 1), slice(k1 - 1, k1)):
            person, channel = np.nonzero(drawn[:, part])
            if not person.size:
                continue
            channel += part.start
            plane = image[person] * k1 + channel
            grid, d = self._window_grid(xy[person, channel], lo[person, channel], hi[person, channel], sigma[part][0])
            if self.exact_heatmaps:  # every window directly, max-merged into zeros
                together.append((grid, _exact_patches(d, sigma[part][0]), plane))
                continue
            values = _gaussian_factors(d, sigma[part][0])
            if crowded is None:
                alone.append((grid, values, plane))
                continue
            sel = crowded[person, channel]
            alone.append((grid[~sel], values[~sel], plane[~sel]))
            together.append((grid[sel], _factor_patches(values[sel]), plane[sel]))
        if any(plane.size for *_, plane in alone):
            self._draw_alone(heat, alone)
        else:
            heat.fill(0.0)
        for grid, patches, plane in together:
            if plane.size:
                self._splat(heat.reshape(-1), grid, patches, plane)

    @staticmethod
    def _meeting_windows(
        lo: np.ndarray, hi: np.ndarray, drawn: np.ndarray, image: np.ndarray, counts: np.ndarray
    ) -> np.ndarray | None:
        """``[P, K+1]``: drawn windows that intersect another window of the same channel and image
        (``None`` when no image has two people)."""
        most = int(counts.max(initial=0))
        if most < 2:
            return None
        rank = _rank_in_runs(image)
        meets = None
        for axis in (0, 1):  # windows meet when their x ranges and their y ranges intersect
            start = np.full((len(counts), most, lo.shape[1]), np.inf)  # padding and undrawn never meet
            stop = np.full_like(start, -np.inf)
            start[image, rank] = np.where(drawn, lo[..., axis], np.inf)
            stop[image, rank] = np.where(drawn, hi[..., axis], -np.inf)
            both = (start[:, :, None] < stop[:, None]) & (start[:, None] < stop[:, :, None])  # [B, P', P', K+1]
            meets = both if meets is None else meets & both
        meets[:, np.arange(most), np.arange(most)] = False
        return meets.any(2)[image, rank]

    def _window_grid(
        self, xy: np.ndarray, lo: np.ndarray, hi: np.ndarray, sigma: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Pixel positions of ``n`` windows along each axis, ``grid [n, 2, L]`` (int64, from ``lo``), and
        their distances to the point, ``d [n, 2, L]``: ``inf`` outside ``[lo, hi)`` and outside the map,
        so that every Gaussian value computed from them is 0 there."""
        h, w = self.output_size
        span = int(np.ceil(6 * sigma + 3)) + 1  # longest possible window
        grid = lo[:, :, None] + np.arange(span)
        d = grid - xy[:, :, None]
        limit = np.minimum(hi, (w, h))
        d[(grid >= limit[:, :, None]) | (grid < 0)] = np.inf
        return grid.astype(np.int64), d

    def _draw_alone(self, heat: np.ndarray, windows: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        """Write windows ``(grid, values, plane)`` (grid from :meth:`_window_grid`, float32 factors,
        ``plane = b * (K+1) + channel``) that meet no other window of their plane as one batched matrix
        product of their factors, overwriting all of ``heat``."""
        b, k1, h, w = heat.shape
        plane = np.concatenate([p for *_, p in windows])
        # column of each window in its plane's factor matrices: its rank among the plane's windows
        order = np.argsort(plane, kind="stable")
        rank = np.empty_like(plane)
        rank[order] = _rank_in_runs(plane[order])
        cols = max(int(rank.max()) + 1, 2)  # a product over one column takes a slow path
        # factor rows padded by the longest window on both sides: windows crossing the border need
        # no clipping (their values outside the map are zero)
        pad = max(grid.shape[-1] for grid, *_ in windows)
        size = max(h, w) + 2 * pad
        rows = np.zeros((2, b * k1, cols, size), np.float32)
        flat = rows.reshape(-1)
        start = ((np.arange(2) * (b * k1) + plane[:, None]) * cols + rank[:, None]) * size + pad
        first = 0
        for grid, values, part in windows:
            n = part.size
            flat[(start[first : first + n, :, None] + grid).reshape(-1)] = values.reshape(-1)
            first += n
        gx = rows[0, :, :, pad : pad + w]  # [B(K+1), cols, w]
        gy = rows[1, :, :, pad : pad + h].transpose(0, 2, 1)  # [B(K+1), h, cols]
        np.matmul(gy, gx, out=heat.reshape(b * k1, h, w))

    def _splat(
        self, heat: np.ndarray, grid: np.ndarray, patches: Callable[[slice], np.ndarray], plane: np.ndarray
    ) -> None:
        """Max-merge windows into the flat ``heat`` at ``plane [n]``: ``grid`` from :meth:`_window_grid`,
        ``patches(part)`` the float32 values ``[m, L, L]`` of windows ``part``. Positions outside the map
        carry the value 0 and are clamped onto the border, where a max with 0 changes nothing
        (heatmaps are non-negative)."""
        h, w = self.output_size
        x = np.clip(grid[:, 0], 0, w - 1)
        y = np.clip(grid[:, 1], 0, h - 1)
        row = (plane[:, None] * h + y) * w
        chunk = 512  # windows per step: keeps the [n, L, L] temporaries in cache
        for i in range(0, plane.size, chunk):
            part = slice(i, i + chunk)
            index = row[part, :, None] + x[part, None, :]  # [m, L, L]
            np.maximum.at(heat, index.reshape(-1), patches(part).reshape(-1))

    # ------------------------------------------------------------------ offsets
    def _window_pairs(self, ctrs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(person, pixel ``y * w + x``) pairs of every offset window, person-major order."""
        h, w = self.output_size
        r = self.radius
        if self.window == "reference":
            cxy = np.trunc(ctrs[:, :2]).astype(np.int64)
            steps = np.arange(-r, r)
        else:
            cxy = np.floor(ctrs[:, :2] + 0.5).astype(np.int64)
            steps = np.arange(-r, r + 1)
        ok = (ctrs[:, 2] >= 1) & (cxy[:, 0] >= 0) & (cxy[:, 1] >= 0) & (cxy[:, 0] < w) & (cxy[:, 1] < h)
        people = np.flatnonzero(ok)
        x = cxy[people, 0, None] + steps  # [n, L]
        y = cxy[people, 1, None] + steps
        flat = (y[:, :, None] * w + x[:, None, :]).reshape(-1)
        if ((x >= 0) & (x < w)).all() and ((y >= 0) & (y < h)).all():
            return np.repeat(people, steps.size**2), flat
        valid = (((y >= 0) & (y < h))[:, :, None] & ((x >= 0) & (x < w))[:, None, :]).reshape(-1)
        return np.repeat(people, steps.size**2)[valid], flat[valid]

    def _offsets(
        self, kpts: np.ndarray, ctrs: np.ndarray, area: np.ndarray, image: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Compact offsets: every covered pixel ``(b * h + y) * w + x`` once, sorted, with its
        ``[K, 2]`` targets and ``[K]`` weights; overlaps resolved as the reference's loop does.

        A pixel covered by one window takes that person's usable keypoints. At pixels covered by
        several windows the per-pixel sequence of people is processed by overlap depth: step ``d``
        handles, for every such pixel at once, the ``d``-th person (in annotation order) covering it.
        """
        p, k = kpts.shape[:2]
        h, w = self.output_size
        person, pixel = self._window_pairs(ctrs)
        if not person.size:
            return np.zeros(0, np.int64), np.zeros((0, k, 2), np.float32), np.zeros((0, k), np.float32)
        x, y = kpts[..., 0], kpts[..., 1]
        usable = (kpts[..., 2] > 0) & (x >= 0) & (y >= 0) & (x < w) & (y < h)  # [P, K]
        weights = np.where(usable, (1.0 / np.sqrt(area)).astype(np.float32)[:, None], np.float32(0))
        xy = kpts[..., :2].reshape(p, 2 * k)  # copies: x0, y0, x1, y1, ...
        mask = np.repeat(usable, 2, axis=1).astype(np.float32)
        slot = image[person] * (h * w) + pixel  # unique per (image, pixel)
        order = np.argsort(slot, kind="stable")  # annotation order within a pixel
        person, slot, pixel = person[order], slot[order], pixel[order]
        boundary = np.empty(slot.size + 1, dtype=bool)
        boundary[0] = boundary[-1] = True
        np.not_equal(slot[1:], slot[:-1], out=boundary[1:-1])
        starts = np.flatnonzero(boundary[:-1])

        def candidates(pair: np.ndarray, who: np.ndarray) -> np.ndarray:
            """``pixel - keypoint`` of person ``who`` at pixel ``pair``, ``[n, K, 2]`` float32, 0 where
            the keypoint is not usable."""
            d = xy[who]
            d[:, 0::2] -= (pixel[pair] % w)[:, None]
            d[:, 1::2] -= (pixel[pair] // w)[:, None]
            out = np.negative(d).astype(np.float32)
            out *= mask[who]
            return out.reshape(-1, k, 2)

        if starts.size == slot.size:  # no pixel is covered twice
            return slot, candidates(np.arange(slot.size), person), weights[person]
        size = np.diff(np.flatnonzero(boundary))  # people per covered pixel
        target = np.zeros((starts.size, k, 2), np.float32)  # the reference's offset map at those pixels
        weight = np.zeros((starts.size, k), np.float32)
        state = _OverlapState(area, k, starts.size)
        deepest = int(size.max())
        for d in range(deepest):
            live = np.flatnonzero(size > d) if d else np.arange(starts.size)
            pair = starts[live] + d
            who = person[pair]
            if d == 0:
                write = usable[who]
                target[:] = candidates(pair, who)
                weight[:] = weights[who]
            else:
                write = state.resolve(usable[who], target[live], who, live)
                target[live] = np.where(write[..., None], candidates(pair, who), target[live])
                weight[live] = np.where(write, weights[who], weight[live])
            if d + 1 < deepest:
                state.record(write, who, live)
        return slot[starts], target, weight


class _OverlapState:
    """The reference's per-pixel "area map" and its overwrite rule, for overlapping windows."""

    def __init__(self, area: np.ndarray, k: int, num_pixels: int) -> None:
        self.area = area
        self.area32 = area.astype(np.float32)
        self.own_ok = self.area32.astype(np.float64) >= area  # a person's own stored area lets it write
        self.area_map = np.zeros(num_pixels, dtype=np.float32)
        self.joint = np.arange(k)
        self.k = k

    def resolve(self, usable: np.ndarray, current: np.ndarray, person: np.ndarray, pixel: np.ndarray) -> np.ndarray:
        """Which keypoints ``[n, K]`` each person writes at its pixel, given the stored offsets
        ``current [n, K, 2]`` (an exactly-zero offset counts as free).

        Sequentially, a keypoint is skipped when its slot is occupied and the last stored area is
        smaller than the person's; the stored area becomes the person's own after its first write.
        """
        occupied = (current != 0).any(-1)
        prev_ok = self.area_map[pixel].astype(np.float64) >= self.area[person]
        first_ok = usable & (~occupied | prev_ok[:, None])
        first = np.where(first_ok.any(1), first_ok.argmax(1), self.k)
        later = (self.joint > first[:, None]) & usable & (~occupied | self.own_ok[person][:, None])
        return (self.joint == first[:, None]) | later

    def record(self, write: np.ndarray, person: np.ndarray, pixel: np.ndarray) -> None:
        """Store the area of each person that wrote at least one keypoint at its pixel."""
        wrote = write.any(1)
        self.area_map[pixel[wrote]] = self.area32[person[wrote]]


def _gaussian_factors(d: np.ndarray, sigma: float) -> np.ndarray:
    """1-D Gaussian factors ``exp(-d^2 / 2 sigma^2)`` rounded to float32 (0 where ``d`` is ``inf``)."""
    return np.exp(d * d / (-2 * sigma * sigma)).astype(np.float32)


def _factor_patches(values: np.ndarray) -> Callable[[slice], np.ndarray]:
    """Window patches ``gy gx^T`` ``[m, L, L]`` from float32 factors ``values [n, 2 (x, y), L]``."""
    return lambda part: values[part, 1, :, None] * values[part, 0, None, :]


def _exact_patches(d: np.ndarray, sigma: float) -> Callable[[slice], np.ndarray]:
    """Window patches ``exp(-(dx^2 + dy^2) / 2 sigma^2)`` computed in float64, then rounded to float32
    (the reference's values), from the distances ``d [n, 2, L]`` of :meth:`TargetEncoder._window_grid`."""
    d2 = d * d

    def patches(part: slice) -> np.ndarray:
        return np.exp(-(d2[part, 0, None, :] + d2[part, 1, :, None]) / (2 * sigma**2)).astype(np.float32)

    return patches


def _rank_in_runs(keys: np.ndarray) -> np.ndarray:
    """Position of each element within its run of equal consecutive ``keys``."""
    n = keys.size
    new = np.empty(n, dtype=bool)
    new[:1] = True
    np.not_equal(keys[1:], keys[:-1], out=new[1:])
    return np.arange(n) - np.maximum.accumulate(np.where(new, np.arange(n), 0))


def _replace_checked(config: TargetConfig, overrides: dict[str, Any]) -> TargetConfig:
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(TargetConfig)})
    if unknown:
        raise TypeError(
            f"TargetEncoder: unknown option(s) {unknown}; TargetConfig fields are "
            f"{[f.name for f in dataclasses.fields(TargetConfig)]}"
        )
    return dataclasses.replace(config, **overrides)


def heatmap_weights(heatmaps: np.ndarray, mask: np.ndarray, bg_weight: float) -> np.ndarray:
    """Heatmap loss weights ``[..., K+1, h, w]`` float32: ``mask`` (``[..., h, w]``) inside the Gaussian
    windows (where the heatmap is positive), ``bg_weight * mask`` elsewhere."""
    mask = np.asarray(mask, dtype=np.float32)[..., None, :, :]
    return np.where(heatmaps > 0, mask, mask * np.float32(bg_weight)).astype(np.float32)


__all__ = ["COCO_MIN_CENTER_AREA", "MIN_SIGMA", "TargetEncoder", "heatmap_weights", "person_centers_and_areas"]
