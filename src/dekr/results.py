"""One frame's (or image's) poses as a results object: JSON, COCO, CSV and an overlay.

:class:`FrameResult` is what :meth:`dekr.inference.PoseEstimator.stream` yields and what
``src/predict.py`` writes for each video frame (one :meth:`FrameResult.to_json` line per frame in
``predictions.jsonl``). It has the ``poses``/``scores`` of :class:`dekr.inference.PoseResult`, plus the
frame index, the source name and, when tracking, one ``track_ids`` entry per person.
"""

from __future__ import annotations

import colorsys
import csv
import io
import json
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np

from dekr.keypoints import KeypointSpec
from dekr.track import PoseTracker
from dekr.viz import draw_poses

CSV_COLUMNS = ("frame", "source", "person", "track_id", "score", "joint", "name", "x", "y", "joint_score")


def track_color(track_id: int) -> tuple[int, int, int]:
    """A fixed, well-spread RGB colour for a track ID (golden-ratio hues); grey for -1 (untracked)."""
    if track_id < 0:
        return (160, 160, 160)
    r, g, b = colorsys.hsv_to_rgb((track_id * 0.618033988749895) % 1.0, 0.85, 1.0)
    return int(255 * r), int(255 * g), int(255 * b)


@dataclass
class FrameResult:
    """Poses of one frame.

    Attributes:
        poses: float32 ``[P, K, 3]``: x, y in original image pixels, joint score.
        scores: float32 ``[P]`` person scores.
        spec: the keypoint layout (names for CSV, skeleton for :meth:`plot`).
        frame: index of the frame in its source (0-based).
        source: the file it came from (video or image name), or ``None``.
        track_ids: int64 ``[P]`` track IDs (-1: not tracked), or ``None`` without tracking.
        extra: anything else (e.g. the unsmoothed poses under ``"raw_poses"``).
    """

    poses: np.ndarray
    scores: np.ndarray
    spec: KeypointSpec
    frame: int = 0
    source: str | None = None
    track_ids: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.scores)

    def track(self, tracker: PoseTracker) -> FrameResult:
        """Give these people their track IDs (and, with smoothing, the smoothed poses, the raw ones
        kept under ``extra["raw_poses"]``) from ``tracker``, which advances by this frame."""
        ids, poses = tracker.update(self.poses, self.scores)
        if tracker.cfg.smoothing.enabled:
            self.extra["raw_poses"] = self.poses
        self.poses, self.track_ids = poses, ids
        return self

    def select(self, keep: np.ndarray) -> FrameResult:
        """The people where ``keep`` (a boolean mask or indices) holds."""
        ids = None if self.track_ids is None else self.track_ids[keep]
        return replace(self, poses=self.poses[keep], scores=self.scores[keep], track_ids=ids)

    # ------------------------------------------------------------------ formats
    def to_dict(self) -> dict[str, Any]:
        """Plain data: ``frame``, ``source`` and ``people``, each with ``keypoints`` (flat ``x, y, score``
        list of length ``3K``), ``score`` and ``track_id`` (``None`` without tracking)."""
        ids = [None] * len(self) if self.track_ids is None else [int(i) if i >= 0 else None for i in self.track_ids]
        return {
            "frame": int(self.frame),
            "source": self.source,
            "people": [
                {"track_id": t, "score": round(float(s), 5), "keypoints": [round(float(v), 3) for v in p.reshape(-1)]}
                for p, s, t in zip(self.poses, self.scores, ids)
            ],
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as one line of JSON (a line of ``predictions.jsonl``)."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any], spec: KeypointSpec) -> FrameResult:
        """Back from :meth:`to_dict` (or a parsed ``predictions.jsonl`` line)."""
        people = data.get("people", [])
        k = spec.num_keypoints
        poses = np.array([p["keypoints"] for p in people], np.float32).reshape(-1, k, 3)
        scores = np.array([p["score"] for p in people], np.float32)
        raw_ids = [p.get("track_id") for p in people]
        tracked = any(t is not None for t in raw_ids)  # a frame without people or IDs reads as untracked
        ids = np.array([-1 if t is None else int(t) for t in raw_ids], np.int64) if tracked else None
        return cls(poses, scores, spec, int(data.get("frame", 0)), data.get("source"), ids)

    def to_coco(self, image_id: int, category_id: int = 1) -> list[dict[str, Any]]:
        """COCO keypoint results (``image_id``, ``category_id``, ``keypoints``, ``score``), one per
        person, with ``frame`` and, when tracked, ``track_id`` added (COCO tools ignore extra keys)."""
        out = []
        for i, (p, s) in enumerate(zip(self.poses, self.scores)):
            rec: dict[str, Any] = {
                "image_id": int(image_id),
                "category_id": int(category_id),
                "keypoints": [float(v) for v in p.reshape(-1)],
                "score": float(s),
                "frame": int(self.frame),
            }
            if self.source is not None:
                rec["file_name"] = self.source
            if self.track_ids is not None:
                rec["track_id"] = int(self.track_ids[i]) if self.track_ids[i] >= 0 else None
            out.append(rec)
        return out

    def csv_rows(self) -> list[tuple]:
        """One row per person per joint, in :data:`CSV_COLUMNS` order."""
        rows = []
        for i, (p, s) in enumerate(zip(self.poses, self.scores)):
            tid = "" if self.track_ids is None or self.track_ids[i] < 0 else int(self.track_ids[i])
            for j, name in enumerate(self.spec.names):
                rows.append(
                    (self.frame, self.source or "", i, tid, round(float(s), 5), j, name,
                     round(float(p[j, 0]), 3), round(float(p[j, 1]), 3), round(float(p[j, 2]), 5))
                )  # fmt: skip
        return rows

    def to_csv(self, header: bool = True) -> str:
        """CSV text, one row per person per joint (long format: easy to filter by joint or track in
        pandas/spreadsheets): ``frame, source, person, track_id, score, joint, name, x, y, joint_score``
        (``track_id`` empty when not tracked)."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        if header:
            w.writerow(CSV_COLUMNS)
        w.writerows(self.csv_rows())
        return buf.getvalue()

    # ------------------------------------------------------------------ drawing
    def plot(
        self,
        image: np.ndarray,
        min_score: float = 0.0,
        joint_threshold: float = 0.0,
        show_scores: bool = False,
    ) -> np.ndarray:
        """A new RGB image with the poses drawn: without tracking in the layout's keypoint colours
        (as :func:`dekr.viz.draw_poses`), with tracking each person in its track's colour with its ID
        written above the head."""
        keep = self.scores >= min_score
        shown = self.select(keep)
        if shown.track_ids is None:
            return draw_poses(
                image, shown.poses, self.spec, shown.scores if show_scores else None, joint_threshold=joint_threshold
            )
        out = np.ascontiguousarray(image.copy())
        size = max(out.shape[:2])
        for pose, score, tid in zip(shown.poses, shown.scores, shown.track_ids):
            color = track_color(int(tid))
            spec = replace(self.spec, colors=(color,) * self.spec.num_keypoints)
            out = draw_poses(out, pose[None], spec, joint_threshold=joint_threshold)
            seen = pose[:, 2] > joint_threshold
            if seen.any():
                top = pose[seen][np.argmin(pose[seen][:, 1])]
                label = f"{int(tid)}" if tid >= 0 else "-"
                if show_scores:
                    label += f" {float(score):.2f}"
                scale = 0.45 * max(1, size // 600)
                org = (int(top[0]) - 6, int(top[1]) - 3 * max(2, size // 250))
                cv2.putText(out, label, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
                cv2.putText(out, label, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)
        return out


__all__ = ["CSV_COLUMNS", "FrameResult", "track_color"]
