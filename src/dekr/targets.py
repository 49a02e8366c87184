"""DEKR training targets: keypoint/centre heatmaps and disentangled offsets, fully vectorized.

Frames and shapes
-----------------
All coordinates handled by :class:`TargetEncoder` are **output pixels** (stride 4: output pixel
``j`` is input pixel ``4j``). For ``K`` keypoints and an ``h x w`` output map it produces
(``float32``):

* ``heatmaps [K+1, h, w]``: unnormalised ``exp(-d^2 / 2 sigma^2)`` per visible keypoint
  (``sigma``) and per person centre (channel ``K``, ``spec.center_sigma``), merged with max;
* ``heatmap_weights [K+1, h, w]``: 1 inside each drawn Gaussian window, ``bg_weight`` elsewhere,
  times the loss mask (0 on crowds, unlabelled people and outside the image);
* ``offsets [2K, h, w]``: ``pixel - keypoint`` (interleaved ``x0, y0, x1, y1, ...``) at the pixels
  of a small window around each person's centre;
* ``offset_weights [2K, h, w]``: ``1 / sqrt(area)`` where an offset is set, 0 elsewhere.

:func:`person_centers_and_areas` computes centres and "areas" in **original image pixels**,
before augmentation, as the reference's ``get_joints`` does; the augmentation then maps centres
with the keypoints and multiplies areas by the squared zoom (see :mod:`dekr.data.transforms`).

Reproduced from the reference (HRNet/DEKR), value for value on the same joints
---------------------------------------------------------------------------------
* Gaussian window ``[floor(x - 3s - 1), ceil(x + 3s + 2))`` clipped to the map; a keypoint (or
  centre) outside ``[0, w) x [0, h)`` or with ``v == 0`` is not drawn at all.
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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from dekr.keypoints import KeypointSpec

AreaMode = Literal["reference", "box"]
WindowMode = Literal["reference", "symmetric"]

#: people whose COCO annotation area is below this get no centre (reference: 32 x 32).
COCO_MIN_CENTER_AREA = 32.0**2


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


@dataclass
class TargetEncoder:
    """Encode people (output pixels) into DEKR heatmap and offset targets; no Python loops.

    Args:
        spec: keypoint layout (``K`` and the centre sigma).
        output_size: ``int`` (square) or ``(h, w)`` of the output map.
        sigma: Gaussian sigma of the keypoint heatmaps (output px).
        center_sigma: sigma of the centre heatmap; ``None`` takes ``spec.center_sigma``.
        radius: offset window half-size ``r`` (output px).
        bg_weight: heatmap loss weight outside every Gaussian window.
        window: ``"reference"`` (``[int(c)-r, int(c)+r)``) or ``"symmetric"``.
        area_mode, min_center_area, fix_zero_keypoint_center: used by :meth:`centers_and_areas`.
    """

    spec: KeypointSpec
    output_size: int | tuple[int, int]
    sigma: float = 2.0
    center_sigma: float | None = None
    radius: int = 4
    bg_weight: float = 0.1
    window: WindowMode = "reference"
    area_mode: AreaMode = "reference"
    min_center_area: float = COCO_MIN_CENTER_AREA
    fix_zero_keypoint_center: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.output_size, int):
            self.output_size = (self.output_size, self.output_size)
        self.output_size = (int(self.output_size[0]), int(self.output_size[1]))
        if self.center_sigma is None:
            self.center_sigma = float(self.spec.center_sigma)
        if self.window not in ("reference", "symmetric"):
            raise ValueError(f"window must be 'reference' or 'symmetric', got {self.window!r}")
        if self.area_mode not in ("reference", "box"):
            raise ValueError(f"area_mode must be 'reference' or 'box', got {self.area_mode!r}")

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

    def __call__(
        self,
        keypoints: np.ndarray,
        centers: np.ndarray,
        areas: np.ndarray,
        mask: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Build the targets of one image.

        Args:
            keypoints: ``[P, K, 3]`` ``(x, y, v)`` in output pixels (any float dtype).
            centers: ``[P, 3]`` ``(x, y, v)`` in output pixels; ``v >= 1`` marks a centre.
            areas: ``[P]`` per-person areas (input px squared, as the reference after augmentation).
            mask: ``[h, w]`` loss mask, 1 where the heatmap loss applies and 0 in ignored regions;
                ``None`` means all ones.

        Returns:
            dict of float32 arrays ``heatmaps``/``heatmap_weights [K+1, h, w]`` and
            ``offsets``/``offset_weights [2K, h, w]``.
        """
        out = self.encode_batch([keypoints], [centers], [areas], None if mask is None else [mask])
        return {key: value[0] for key, value in out.items()}

    def encode_batch(
        self,
        keypoints: Sequence[np.ndarray],
        centers: Sequence[np.ndarray],
        areas: Sequence[np.ndarray],
        masks: Sequence[np.ndarray] | np.ndarray | None = None,
        out: dict[str, np.ndarray] | None = None,
        out_is_zero: bool = False,
    ) -> dict[str, np.ndarray]:
        """Build the targets of ``B`` images in one vectorized pass (the arguments of
        :meth:`__call__`, one entry per image); returns the same keys with a leading batch axis
        ``[B, ...]``. It is not faster per image than :meth:`__call__` (the cost is mostly writing
        the dense outputs) but can write straight into a batch buffer.

        Args:
            out: optional C-contiguous float32 arrays to fill (same keys and shapes as returned),
                e.g. numpy views of a shared-memory batch; saves an allocation and a copy.
            out_is_zero: promise that ``out`` heatmaps, offsets and offset weights are already
                zero (fresh shared memory is), which skips clearing them.
        """
        k = self.num_keypoints
        h, w = self.output_size
        b = len(keypoints)
        if not len(centers) == len(areas) == b or (masks is not None and len(masks) != b):
            raise ValueError("encode_batch: keypoints, centers, areas (and masks) need one entry per image")
        counts = [len(kp) for kp in keypoints]
        kpts = np.concatenate([np.asarray(kp, dtype=np.float64).reshape(-1, k, 3) for kp in keypoints])
        ctrs = np.concatenate([np.asarray(c, dtype=np.float64).reshape(-1, 3) for c in centers])
        area = np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1) for a in areas])
        if not len(kpts) == len(ctrs) == len(area):
            raise ValueError(
                f"keypoints ({len(kpts)}), centers ({len(ctrs)}) and areas ({len(area)}) must list the same people"
            )
        area = np.maximum(area, 1e-6)
        image = np.repeat(np.arange(b), counts)
        if masks is not None:
            masks = np.asarray(masks, dtype=np.float32)
            if masks.shape != (b, h, w):
                raise ValueError(f"masks have shape {masks.shape}, expected {(b, h, w)} (the output size)")
        buffers = self._buffers(b, out, out_is_zero)
        heatmaps, hm_weights = self._heatmaps(
            np.concatenate([kpts, ctrs[:, None]], axis=1),
            image,
            masks,
            buffers["heatmaps"],
            buffers["heatmap_weights"],
        )
        offsets, off_weights = self._offsets(kpts, ctrs, area, image, buffers["offsets"], buffers["offset_weights"])
        return {
            "heatmaps": heatmaps,
            "heatmap_weights": hm_weights,
            "offsets": offsets,
            "offset_weights": off_weights,
        }

    def _buffers(self, b: int, out: dict[str, np.ndarray] | None, zero: bool) -> dict[str, np.ndarray]:
        """Output arrays ``[B, C, h, w]``: fresh zeros, or the caller's (checked, cleared)."""
        k = self.num_keypoints
        h, w = self.output_size
        shapes = {
            "heatmaps": (b, k + 1, h, w),
            "heatmap_weights": (b, k + 1, h, w),
            "offsets": (b, 2 * k, h, w),
            "offset_weights": (b, 2 * k, h, w),
        }
        if out is None:
            # separate allocations: one large block would be backed by transparent huge pages, whose
            # allocation stalls badly (~10 ms) when many results are alive, as in a loader
            return {
                key: (np.empty if key == "heatmap_weights" else np.zeros)(shape, np.float32)
                for key, shape in shapes.items()
            }
        for key, shape in shapes.items():
            arr = out[key]
            if arr.shape != shape or arr.dtype != np.float32 or not arr.flags.c_contiguous:
                raise ValueError(f"out[{key!r}] must be a C-contiguous float32 array of shape {shape}")
            if not zero and key != "heatmap_weights":
                arr.fill(0.0)
        return dict(out)

    # ------------------------------------------------------------------ heatmaps
    def _heatmaps(
        self, points: np.ndarray, image: np.ndarray, masks: np.ndarray | None, heat: np.ndarray, weights: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``points [P, K+1, 3]`` of images ``image [P]`` into zeroed ``heat`` and fill ``weights``
        (both ``[B, K+1, h, w]``)."""
        b, k1, h, w = heat.shape
        heat_4d, weights_4d = heat, weights
        heat = heat.reshape(-1)
        xy, v = points[..., :2], points[..., 2]
        drawn = (v > 0) & (xy >= 0).all(-1) & (xy < (w, h)).all(-1)  # [P, K+1]
        windows = []
        for sigma, part in ((self.sigma, slice(0, k1 - 1)), (self.center_sigma, slice(k1 - 1, k1))):
            sel = drawn[:, part]
            if sel.any():
                person, joint = np.nonzero(sel)
                channel = image[person] * k1 + joint + part.start
                windows.append(self._splat(heat, xy[:, part][sel], channel, float(sigma)))
        flat = np.concatenate(windows) if windows else np.zeros(0, dtype=np.int64)
        weights = weights.reshape(b, k1, h * w)
        if masks is None:
            weights.fill(self.bg_weight)
            weights.reshape(-1)[flat] = 1.0
        else:
            m = masks.reshape(b, 1, h * w)
            np.multiply(m, np.float32(self.bg_weight), out=weights)
            weights.reshape(-1)[flat] = m.reshape(-1)[(flat // (k1 * h * w)) * (h * w) + flat % (h * w)]
        return heat_4d, weights_4d

    def _splat(self, heat: np.ndarray, xy: np.ndarray, channel: np.ndarray, sigma: float) -> np.ndarray:
        """Max-merge one Gaussian patch per point ``xy [N, 2]`` into the flat ``heat`` at ``channel [N]``.

        Returns the flat indices of the (clipped) windows, for the loss weights.
        """
        h, w = self.output_size
        size = int(np.ceil(6 * sigma + 3)) + 1  # longest possible window
        lo = np.floor(xy - (3 * sigma + 1)).astype(np.int64)  # [N, 2]
        hi = np.minimum(np.ceil(xy + (3 * sigma + 2)).astype(np.int64), (w, h))
        grid = lo[:, :, None] + np.arange(size)  # [N, 2, L]
        ok = (grid >= 0) & (grid < hi[:, :, None])
        d2 = (grid - xy[:, :, None]) ** 2
        gauss = np.exp(-(d2[:, 0, None, :] + d2[:, 1, :, None]) / (2 * sigma**2))  # [N, Ly, Lx]
        ok = ok[:, 1, :, None] & ok[:, 0, None, :]
        flat = (channel[:, None, None] * h + grid[:, 1, :, None]) * w + grid[:, 0, None, :]
        flat = flat[ok]
        np.maximum.at(heat, flat, gauss[ok].astype(np.float32))
        return flat

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
        ok = (ctrs[:, 2] >= 1) & (cxy >= 0).all(1) & (cxy < (w, h)).all(1)
        people = np.flatnonzero(ok)
        grid = cxy[people, :, None] + steps  # [n, 2, L]
        inside = (grid >= 0) & (grid < np.array([w, h])[:, None])
        valid = inside[:, 1, :, None] & inside[:, 0, None, :]
        flat = grid[:, 1, :, None] * w + grid[:, 0, None, :]
        valid = valid.reshape(-1)
        return np.repeat(people, steps.size**2)[valid], flat.reshape(-1)[valid]

    def _offsets(
        self,
        kpts: np.ndarray,
        ctrs: np.ndarray,
        area: np.ndarray,
        image: np.ndarray,
        offsets: np.ndarray,
        weights: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Offsets and weights ``[B, 2K, h, w]``, overlaps resolved as the reference's loop does.

        The per-pixel sequence of people is processed by overlap depth: step ``d`` handles, for
        every pixel at once, the ``d``-th person (in annotation order) whose window covers it.
        """
        k = kpts.shape[1]
        b, _, h, w = offsets.shape
        hw = h * w
        person, pixel = self._window_pairs(ctrs)
        if person.size:
            off_flat, wt_flat = offsets.reshape(-1), weights.reshape(-1)
            xy = kpts[..., :2]
            usable = (kpts[..., 2] > 0) & (xy >= 0).all(-1) & (xy < (w, h)).all(-1)  # [P, K]
            inv_sqrt = (1.0 / np.sqrt(area)).astype(np.float32)
            slot = image[person] * hw + pixel  # unique per (image, pixel)
            order = np.argsort(slot, kind="stable")
            person, pixel, slot = person[order], pixel[order], slot[order]
            new_group = np.concatenate(([True], slot[1:] != slot[:-1]))
            depth = np.arange(slot.size) - np.maximum.accumulate(np.where(new_group, np.arange(slot.size), 0))
            base = image[person] * (2 * k * hw) + pixel  # flat index of channel 0
            chan = (np.arange(2 * k) * hw)[:, None]
            state = _OverlapState(area, k, b * hw) if depth.max() > 0 else None
            for d in range(int(depth.max()) + 1):
                sel = depth == d
                p, q = person[sel], pixel[sel]
                pos = np.stack([q % w, q // w]).astype(np.float64)  # [2, n]
                cand = (pos[None] - xy[p].transpose(1, 2, 0)).astype(np.float32).reshape(2 * k, -1)
                idx = chan + base[sel]  # [2K, n]
                write = usable[p].T  # [K, n]
                if state is not None:
                    write = state.resolve(write, off_flat[idx].reshape(k, 2, -1), p, slot[sel])
                write2 = np.repeat(write, 2, axis=0)  # [2K, n]
                target = idx[write2]
                off_flat[target] = cand[write2]
                wt_flat[target] = np.broadcast_to(inv_sqrt[p], write2.shape)[write2]
        return offsets, weights


class _OverlapState:
    """The reference's per-pixel "area map" and its overwrite rule, for overlapping windows."""

    def __init__(self, area: np.ndarray, k: int, num_slots: int) -> None:
        self.area = area
        self.area32 = area.astype(np.float32)
        self.own_ok = self.area32.astype(np.float64) >= area  # a person's own stored area lets it write
        self.area_map = np.zeros(num_slots, dtype=np.float32)
        self.joint = np.arange(k)[:, None]
        self.k = k

    def resolve(self, usable: np.ndarray, current: np.ndarray, person: np.ndarray, slot: np.ndarray) -> np.ndarray:
        """Which keypoints ``[K, n]`` each person writes at its pixel, given the stored offsets
        ``current [K, 2, n]`` (an exactly-zero offset counts as free), then update the area map.

        Sequentially, a keypoint is skipped when its slot is occupied and the last stored area is
        smaller than the person's; the stored area becomes the person's own after its first write.
        """
        occupied = (current != 0).any(1)
        prev_ok = self.area_map[slot].astype(np.float64) >= self.area[person]
        first_ok = usable & (~occupied | prev_ok)
        first = np.where(first_ok.any(0), first_ok.argmax(0), self.k)
        later = (self.joint > first) & usable & (~occupied | self.own_ok[person])
        write = (self.joint == first) | later
        wrote = write.any(0)
        self.area_map[slot[wrote]] = self.area32[person[wrote]]
        return write


__all__ = ["COCO_MIN_CENTER_AREA", "TargetEncoder", "person_centers_and_areas"]
