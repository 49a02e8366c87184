"""People across video frames: stable track IDs and, optionally, steadier keypoints.

:class:`PoseTracker` associates each frame's poses ``[P, K, 3]`` (x, y, joint score) with the live
tracks by one optimal assignment (:func:`scipy.optimize.linear_sum_assignment`) on a similarity
that blends

* **OKS** with the layout's sigmas (:attr:`dekr.keypoints.KeypointSpec.sigmas`), over the joints
  seen in both poses (joint score above ``joint_threshold``), and
* **box IoU** of the boxes around those seen joints,

so it works for any keypoint layout. A track not matched in a frame is kept for ``patience`` frames
with its last pose carried (moved by its velocity when ``motion`` is on: the median displacement of
the joints seen in both poses), so a person hidden behind another for a moment gets their ID back;
after that the track ends. A *contested* match (a rival track predicts the pose nearly as well:
one pose found for two overlapping people, or a pose mixing their joints) keeps its ID but leaves
the track's motion as it was. Every unmatched pose scoring at least ``min_score`` (``init_score``)
starts a new track, unless it is a second detection of someone (``birth_similarity``). Cost
matrices are computed for all (track, pose) pairs at once; association always uses the detected
poses, smoothing only changes what is returned. Settings: ``conf/track/default.yaml``.

:class:`OneEuroFilter` (Casiez et al., CHI 2012) smooths each track's joints, vectorized over
joints; :class:`PoseTracker` applies it when ``smoothing.enabled``, each joint's update weighted by
its score (``smoothing.confidence``): most of a network's jitter comes from a few wrong joints
with low scores, which then barely move the filter.

:class:`GreedyTracker` is the per-frame baseline measured by ``benchmarks/bench_track.py``: it
matches each frame to the previous frame only, greedily by the same similarity, with no gaps.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from dekr.config import read_group_default
from dekr.keypoints import KeypointSpec
from dekr.plaindata import build_dataclass, merge, plain


@dataclass(frozen=True)
class SmoothingConfig:
    """One-Euro filter settings (the ``track.smoothing`` config node).

    Attributes:
        enabled: smooth the keypoints of tracked people (off by default).
        min_cutoff: cutoff frequency (Hz) at rest; lower = steadier, more lag when slow.
        beta: how fast the cutoff rises with joint speed (per px/s); higher = less lag when fast.
        d_cutoff: cutoff frequency (Hz) of the speed estimate.
        confidence: joint score trusted fully; a joint scoring ``s`` below it moves the filter
            ``s / confidence`` of the way a trusted one would (a wrong, low-scored joint barely moves
            it: the joint carries on with its filtered speed). 0: every joint is trusted fully and
            joints not seen (score at or below ``track.joint_threshold``) restart their filter.
        predict: blend with the joint moved by its filtered speed (no lag at a steady speed).
    """

    enabled: bool
    min_cutoff: float
    beta: float
    d_cutoff: float
    confidence: float
    predict: bool

    def __post_init__(self) -> None:
        if self.min_cutoff <= 0 or self.d_cutoff <= 0 or self.beta < 0 or self.confidence < 0:
            raise ValueError(
                f"track.smoothing: min_cutoff and d_cutoff must be > 0, beta and confidence >= 0, got "
                f"{self.min_cutoff}, {self.d_cutoff}, {self.beta}, {self.confidence}"
            )


@dataclass(frozen=True)
class TrackConfig:
    """Tracker settings: the ``track`` config group (``conf/track/default.yaml`` holds the values and
    their meaning; the dataclass has no defaults of its own).

    Attributes:
        enabled: track people (``predict.py``; the Python API takes ``track=True``).
        patience: frames a track survives unmatched (its last pose carried) before it ends.
        min_similarity: the least similarity (OKS blended with box IoU) of a match.
        box_weight: weight of box IoU in the similarity (the rest is OKS).
        min_score: poses scoring below this are neither matched nor start tracks (track ID -1).
        init_score: the least score to start a track (``None``: ``min_score``); poses between the two
            only continue tracks (as ByteTrack's low-score matches: fewer tracks born of false positives).
        birth_similarity: an unmatched pose at least this similar to a pose matched in the same frame,
            or to a higher-scored unmatched one, starts no track: a second detection of one person
            (``None``: every unmatched pose starts one).
        joint_threshold: joints with a score above this count as seen (OKS and boxes use them).
        motion: move a carried pose by the track's velocity (frames since it was seen x velocity).
        velocity_momentum: exponential smoothing of that velocity (0: last displacement only).
        contest_ratio: a match is *contested* when a rival track predicts a pose at least this
            fraction as similar to the matched pose (see :meth:`PoseTracker._contested`); it keeps its
            ID but leaves the track's motion state as it was (two people overlapping: the pose may be
            one for both, or mix their joints). 0: never.
        fps: frame rate for the filter's time step (``None``: the video's, else 25).
        smoothing: :class:`SmoothingConfig`.
    """

    enabled: bool
    patience: int
    min_similarity: float
    box_weight: float
    min_score: float
    init_score: float | None
    birth_similarity: float | None
    joint_threshold: float
    motion: bool
    velocity_momentum: float
    contest_ratio: float
    fps: float | None
    smoothing: SmoothingConfig

    def __post_init__(self) -> None:
        if self.patience < 0:
            raise ValueError(f"track.patience must be >= 0 (frames), got {self.patience}")
        if not 0.0 <= self.box_weight <= 1.0 or not 0.0 <= self.velocity_momentum < 1.0:
            raise ValueError(
                f"track.box_weight must be in [0, 1] and track.velocity_momentum in [0, 1), got "
                f"{self.box_weight}, {self.velocity_momentum}"
            )
        if not 0.0 <= self.contest_ratio <= 1.0:
            raise ValueError(f"track.contest_ratio must be in [0, 1], got {self.contest_ratio}")
        if not 0.0 <= self.min_similarity <= 1.0:
            raise ValueError(f"track.min_similarity must be in [0, 1], got {self.min_similarity}")
        if self.birth_similarity is not None and not 0.0 < self.birth_similarity <= 1.0:
            raise ValueError(f"track.birth_similarity must be in (0, 1] or null, got {self.birth_similarity}")

    @classmethod
    def from_mapping(cls, node: Mapping[str, Any] | None, base: TrackConfig | None = None) -> TrackConfig:
        """``base`` (default: :func:`default_track_config`) with a (partial, nested) ``track`` node
        merged in, e.g. ``{"patience": 10, "smoothing": {"enabled": True}}``; unknown keys and values
        of the wrong type are errors that name the key."""
        merged = merge((base or default_track_config()).to_dict(), plain(node or {}), "track")
        return build_dataclass(TrackConfig, merged, "track config")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (the shape of ``conf/track/default.yaml``)."""
        return plain(dataclasses.asdict(self))

    def replace(self, **values: Any) -> TrackConfig:
        """A copy with some values changed: ``cfg.replace(enabled=True, smoothing={"enabled": True})``."""
        return TrackConfig.from_mapping(values, base=self)


@functools.lru_cache(maxsize=1)
def default_track_config() -> TrackConfig:
    """The track group's defaults (``conf/track/default.yaml``)."""
    node, origin = read_group_default("track")
    return build_dataclass(TrackConfig, node, origin)


# ---------------------------------------------------------------------------------------- similarity
def _seen_boxes(poses: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """``[N, 4]`` boxes ``x0, y0, x1, y1`` around the seen joints (all joints where none is seen)."""
    xy = poses[..., :2]
    use = np.where(seen.any(1, keepdims=True), seen, True)[..., None]
    lo = np.where(use, xy, np.inf).min(1)
    hi = np.where(use, xy, -np.inf).max(1)
    return np.concatenate((lo, hi), 1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU ``[N, M]`` of boxes ``[N, 4]`` and ``[M, 4]`` (``x0, y0, x1, y1``)."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(hi - lo, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def pose_similarity(
    a: np.ndarray,
    b: np.ndarray,
    sigmas: np.ndarray,
    joint_threshold: float = 0.1,
    box_weight: float = 0.3,
) -> np.ndarray:
    """Similarity ``[N, M]`` in ``[0, 1]`` of poses ``a [N, K, 3]`` and ``b [M, K, 3]``.

    ``(1 - box_weight) * OKS + box_weight * IoU``: OKS over the joints seen in both poses (score
    above ``joint_threshold``), with the layout's ``sigmas [K]`` and the mean of the two boxes' areas
    as the scale (0 when no joint is seen in both); IoU of the boxes around each pose's seen joints.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    seen_a = a[..., 2] > joint_threshold
    seen_b = b[..., 2] > joint_threshold
    box_a, box_b = _seen_boxes(a, seen_a), _seen_boxes(b, seen_b)
    area_a = np.clip(box_a[:, 2:] - box_a[:, :2], 0, None).prod(-1)
    area_b = np.clip(box_b[:, 2:] - box_b[:, :2], 0, None).prod(-1)
    scale = np.maximum((area_a[:, None] + area_b[None, :]) / 2.0, 1.0)  # [N, M]
    d2 = ((a[:, None, :, :2] - b[None, :, :, :2]) ** 2).sum(-1)  # [N, M, K]
    var = (2.0 * np.asarray(sigmas, np.float64)) ** 2  # COCO: kappa = 2 sigma
    e = np.exp(-d2 / (2.0 * scale[..., None] * var))
    both = seen_a[:, None, :] & seen_b[None, :, :]
    n = both.sum(-1)
    oks = np.where(n > 0, (e * both).sum(-1) / np.maximum(n, 1), 0.0)
    return (1.0 - box_weight) * oks + box_weight * box_iou(box_a, box_b)


# ------------------------------------------------------------------------------------------ smoothing
class OneEuroFilter:
    """The One-Euro filter over arrays of any shape (e.g. ``[K, 2]`` joints of one person).

    ``x_hat = a * x + (1 - a) * x_hat_prev`` with ``a = 1 / (1 + tau / dt)``, ``tau = 1 / (2 pi f_c)``
    and the cutoff ``f_c = min_cutoff + beta * |dx/dt|`` rising with the (filtered) speed.
    """

    def __init__(self, min_cutoff: float, beta: float, d_cutoff: float, predict: bool = False) -> None:
        self.min_cutoff, self.beta, self.d_cutoff = float(min_cutoff), float(beta), float(d_cutoff)
        self.predict = bool(predict)
        self.x: np.ndarray | None = None
        self.dx: np.ndarray | None = None

    @staticmethod
    def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray:
        tau = 1.0 / (2.0 * np.pi * np.asarray(cutoff))
        return 1.0 / (1.0 + tau / dt)

    def __call__(
        self, x: np.ndarray, dt: float, reset: np.ndarray | None = None, weight: np.ndarray | None = None
    ) -> np.ndarray:
        """Filter ``x`` taken ``dt`` seconds after the previous sample.

        Args:
            reset: boolean, broadcast to ``x``: restart the filter there (output ``x``).
            weight: trust in each sample, in ``[0, 1]`` (broadcast to ``x``): the update moves this
                fraction of the way it would at full trust (0: the sample is ignored, the filter
                carries its prediction).
        """
        x = np.asarray(x, np.float64)
        if self.x is None:
            self.x, self.dx = x.copy(), np.zeros_like(x)
            return x.copy()
        w = 1.0 if weight is None else np.clip(np.broadcast_to(weight, x.shape), 0.0, 1.0)
        dx = (x - self.x) / dt
        a_d = w * self._alpha(self.d_cutoff, dt)
        self.dx = a_d * dx + (1.0 - a_d) * self.dx
        cutoff = self.min_cutoff + self.beta * np.abs(self.dx)
        a = w * self._alpha(cutoff, dt)
        prior = self.x + self.dx * dt if self.predict else self.x
        out = a * x + (1.0 - a) * prior
        if reset is not None:
            reset = np.broadcast_to(reset, x.shape)
            out = np.where(reset, x, out)
            self.dx = np.where(reset, 0.0, self.dx)
        self.x = out
        return out.copy()


# ------------------------------------------------------------------------------------------- trackers
@dataclass
class _Tracks:
    """Live tracks as arrays (``T`` tracks)."""

    ids: np.ndarray  # [T] int64
    poses: np.ndarray  # [T, K, 3] last clean (uncontested) matched pose, as detected (not smoothed)
    velocity: np.ndarray  # [T, 2] px per frame
    last: np.ndarray  # [T] frame of that pose (motion carries the pose from there)
    seen: np.ndarray  # [T] frame last matched, contested or not (patience counts from here)
    moving: np.ndarray  # [T] bool: velocity measured at least once

    @classmethod
    def empty(cls, k: int) -> _Tracks:
        z = np.zeros(0, np.int64)
        return cls(z, np.zeros((0, k, 3)), np.zeros((0, 2)), z, z.copy(), np.zeros(0, bool))

    def select(self, keep: np.ndarray) -> _Tracks:
        return _Tracks(*(getattr(self, f.name)[keep] for f in dataclasses.fields(self)))

    def grow(self, ids: np.ndarray, poses: np.ndarray, frame: int) -> _Tracks:
        n = len(ids)
        at = np.full(n, frame, np.int64)
        return _Tracks(
            np.concatenate((self.ids, ids)),
            np.concatenate((self.poses, poses)),
            np.concatenate((self.velocity, np.zeros((n, 2)))),
            np.concatenate((self.last, at)),
            np.concatenate((self.seen, at)),
            np.concatenate((self.moving, np.zeros(n, bool))),
        )


def _centres(poses: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """``[N, 2]`` mean of the seen joints (of all joints where none is seen)."""
    w = np.where(seen.any(1, keepdims=True), seen, True).astype(np.float64)[..., None]
    return (poses[..., :2] * w).sum(1) / w.sum(1)


def _displacement(new: np.ndarray, old: np.ndarray, threshold: float) -> np.ndarray:
    """``[N, 2]`` per-pose displacement ``old -> new`` (``[N, K, 3]`` each): the median over the
    joints seen in both, so joints appearing or disappearing behind someone do not move it (the
    difference of the seen joints' means where no joint is seen in both)."""
    both = (new[..., 2] > threshold) & (old[..., 2] > threshold)  # [N, K]
    d = np.where(both[..., None], new[..., :2] - old[..., :2], np.nan)
    out = np.zeros((len(new), 2))
    some = both.any(1)
    if some.any():
        out[some] = np.nanmedian(d[some], axis=1)
    if (~some).any():
        seen_n, seen_o = new[~some, :, 2] > threshold, old[~some, :, 2] > threshold
        out[~some] = _centres(new[~some], seen_n) - _centres(old[~some], seen_o)
    return out


class PoseTracker:
    """Track IDs for a stream of frames (see the module docstring).

    Args:
        spec: the keypoint layout (OKS sigmas).
        config: :class:`TrackConfig` (or a mapping of its fields); ``None``: the defaults.
        fps: frame rate of the stream (the filter's time step); overrides ``config.fps``.

    Call :meth:`update` once per frame, in order.
    """

    def __init__(
        self, spec: KeypointSpec, config: TrackConfig | Mapping[str, Any] | None = None, fps: float | None = None
    ):
        self.spec = spec
        self.cfg = config if isinstance(config, TrackConfig) else TrackConfig.from_mapping(config)
        self.fps = float(fps or self.cfg.fps or 25.0)
        self.sigmas = spec.sigmas_array
        self.tracks = _Tracks.empty(spec.num_keypoints)
        self.frame = -1
        self.next_id = 0
        self.filters: dict[int, OneEuroFilter] = {}

    def predicted(self) -> np.ndarray:
        """``[T, K, 3]`` the live tracks' poses carried to the current frame (moved by velocity)."""
        t = self.tracks
        poses = t.poses.copy()
        if self.cfg.motion and len(poses):
            gap = (self.frame - t.last).astype(np.float64)[:, None, None]
            poses[..., :2] += gap * t.velocity[:, None, :]
        return poses

    def update(
        self, poses: np.ndarray, scores: np.ndarray, track_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Match one frame's poses ``[P, K, 3]`` (scores ``[P]``) to the tracks.

        Args:
            track_ids: replay: the IDs this frame got before (e.g. read back from ``predictions.jsonl``
                on resume); no association is run, the state (poses, velocities, filters) is updated
                as if it had been.

        Returns:
            ``(track_ids [P] int64, poses [P, K, 3])``: the ID of each pose (-1: below ``min_score``,
            not tracked) and the poses, smoothed where smoothing is on (else the input).
        """
        cfg = self.cfg
        self.frame += 1
        poses = np.asarray(poses, np.float64).reshape(-1, self.spec.num_keypoints, 3)
        scores = np.asarray(scores, np.float64).reshape(-1)
        cand = np.flatnonzero(scores >= cfg.min_score)
        sim = pose_similarity(self.predicted(), poses[cand], self.sigmas, cfg.joint_threshold, cfg.box_weight)
        if track_ids is not None:
            ids = np.asarray(track_ids, np.int64).reshape(-1).copy()
            rows, matched = np.nonzero(self.tracks.ids[:, None] == ids[None, :])
            inside = np.isin(matched, cand)  # IDs written under another min_score: no motion update
            rows, matched = rows[inside], matched[inside]
            cols = np.searchsorted(cand, matched)
            new = np.setdiff1d(np.flatnonzero(ids >= 0), matched)
            self.next_id = max(self.next_id, int(ids.max(initial=-1)) + 1)
        else:
            ids = np.full(len(poses), -1, np.int64)
            rows, cols = linear_sum_assignment(-sim) if sim.size else (np.zeros(0, int), np.zeros(0, int))
            ok = sim[rows, cols] >= cfg.min_similarity
            rows, cols = rows[ok], cols[ok]
            matched = cand[cols]
            ids[matched] = self.tracks.ids[rows]
            new = np.setdiff1d(cand, matched)
            if cfg.init_score is not None:
                new = new[scores[new] >= cfg.init_score]
            new = self._births(poses, scores, new, matched)
            ids[new] = np.arange(self.next_id, self.next_id + len(new))
            self.next_id += len(new)
        contested = self._contested(sim, rows, cols)

        out = poses.copy()
        if cfg.smoothing.enabled:
            out = self._smooth(out, ids)

        # state: clean matches take the new pose and velocity, contested ones only keep the track
        # alive (its motion carries on from before); new tracks join; stale tracks end
        t = self.tracks
        t.seen[rows] = self.frame
        rows, matched = rows[~contested], matched[~contested]
        if len(rows):
            step = _displacement(poses[matched], t.poses[rows], cfg.joint_threshold)
            step /= np.maximum(self.frame - t.last[rows], 1)[:, None]
            m = np.where(t.moving[rows], cfg.velocity_momentum, 0.0)[:, None]
            t.velocity[rows] = m * t.velocity[rows] + (1 - m) * step
            t.moving[rows] = True
            t.poses[rows] = poses[matched]
            t.last[rows] = self.frame
        grown = t.grow(ids[new], poses[new], self.frame)
        alive = self.frame - grown.seen <= cfg.patience
        for gone in grown.ids[~alive]:
            self.filters.pop(int(gone), None)
        self.tracks = grown.select(alive)
        return ids, out.astype(np.float32)

    def _births(self, poses: np.ndarray, scores: np.ndarray, new: np.ndarray, matched: np.ndarray) -> np.ndarray:
        """The unmatched poses (indices ``new`` into ``poses [P, K, 3]``) that start tracks: in score
        order, each one not ``birth_similarity``-similar to a matched pose or to one kept before it
        (non-maximum suppression of duplicate detections; sorted indices)."""
        cfg = self.cfg
        if cfg.birth_similarity is None or not len(new):
            return new
        new = new[np.argsort(-scores[new], kind="stable")]
        args = (self.sigmas, cfg.joint_threshold, cfg.box_weight)
        dup = pose_similarity(poses[new], poses[matched], *args).max(1, initial=0.0) >= cfg.birth_similarity
        mutual = pose_similarity(poses[new], poses[new], *args) >= cfg.birth_similarity  # [N, N]
        keep = np.zeros(len(new), bool)
        for i in range(len(new)):  # greedy suppression in score order, over a handful of poses
            keep[i] = not dup[i] and not (mutual[i, :i] & keep[:i]).any()
        return np.sort(new[keep])

    def _contested(self, sim: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """``[M]`` bool per match ``(rows, cols)`` of ``sim [T, P]``: a rival track predicts a pose at
        least ``contest_ratio`` times as similar to the matched one. Rivals are the tracks left
        without a pose in this frame (the network found one pose where two people overlap), or,
        when every track has one, the other tracks (a pose mixing joints of two people)."""
        ratio = self.cfg.contest_ratio
        if ratio <= 0 or not len(rows) or len(sim) < 2:
            return np.zeros(len(rows), bool)
        free = np.setdiff1d(np.arange(len(sim)), rows)
        if len(free):
            rival = sim[free][:, cols].max(0)
        else:
            others = sim[:, cols].copy()  # [T, M]
            others[rows, np.arange(len(rows))] = -np.inf
            rival = others.max(0)
        return rival >= ratio * sim[rows, cols]

    def _smooth(self, poses: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """One-Euro filter the joints of every tracked pose (time step: frames since last seen / fps),
        weighted by joint score (``smoothing.confidence``); joint scores are returned as detected."""
        s = self.cfg.smoothing
        last = dict(zip(self.tracks.ids.tolist(), self.tracks.seen.tolist()))
        for p in np.flatnonzero(ids >= 0):
            tid = int(ids[p])
            f = self.filters.setdefault(tid, OneEuroFilter(s.min_cutoff, s.beta, s.d_cutoff, s.predict))
            dt = max(self.frame - last.get(tid, self.frame - 1), 1) / self.fps
            if s.confidence > 0:
                poses[p, :, :2] = f(poses[p, :, :2], dt, weight=(poses[p, :, 2] / s.confidence)[:, None])
            else:
                unseen = (poses[p, :, 2] <= self.cfg.joint_threshold)[:, None]
                poses[p, :, :2] = f(poses[p, :, :2], dt, reset=unseen)
        return poses

    def reset(self) -> None:
        """Forget every track (a new video); IDs keep counting up."""
        self.tracks = _Tracks.empty(self.spec.num_keypoints)
        self.filters.clear()
        self.frame = -1


class GreedyTracker:
    """Per-frame baseline: each pose takes the ID of the most similar pose of the previous frame
    (greedy, best pair first, same similarity and ``min_similarity``), else a new ID; no gaps, no
    motion, no smoothing."""

    def __init__(self, spec: KeypointSpec, config: TrackConfig | Mapping[str, Any] | None = None):
        self.spec = spec
        self.cfg = config if isinstance(config, TrackConfig) else TrackConfig.from_mapping(config)
        self.prev = np.zeros((0, spec.num_keypoints, 3))
        self.prev_ids = np.zeros(0, np.int64)
        self.next_id = 0

    def update(self, poses: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Same contract as :meth:`PoseTracker.update` (poses returned unchanged)."""
        cfg = self.cfg
        poses = np.asarray(poses, np.float64).reshape(-1, self.spec.num_keypoints, 3)
        ids = np.full(len(poses), -1, np.int64)
        cand = np.flatnonzero(np.asarray(scores).reshape(-1) >= cfg.min_score)
        sim = pose_similarity(self.prev, poses[cand], self.spec.sigmas_array, cfg.joint_threshold, cfg.box_weight)
        if sim.size:
            order = np.argsort(-sim, axis=None)
            r, c = np.unravel_index(order, sim.shape)
            used_r, used_c = np.zeros(sim.shape[0], bool), np.zeros(sim.shape[1], bool)
            for i, j in zip(r, c):  # greedy pairing (the baseline's point), not a cost computation
                if sim[i, j] < cfg.min_similarity:
                    break
                if not used_r[i] and not used_c[j]:
                    used_r[i] = used_c[j] = True
                    ids[cand[j]] = self.prev_ids[i]
        fresh = cand[ids[cand] < 0]
        ids[fresh] = np.arange(self.next_id, self.next_id + len(fresh))
        self.next_id += len(fresh)
        self.prev, self.prev_ids = poses[cand], ids[cand]
        return ids, poses.astype(np.float32)


__all__ = [
    "GreedyTracker",
    "OneEuroFilter",
    "PoseTracker",
    "SmoothingConfig",
    "TrackConfig",
    "box_iou",
    "default_track_config",
    "pose_similarity",
]
