"""Tracking and smoothing on synthetic clips with ground-truth identities.

    python benchmarks/bench_track.py --checkpoint outputs/train/<run>/checkpoints/last.ckpt --input-size 256
    python benchmarks/bench_track.py --gt-noise          # the tracker alone, on noisy ground-truth poses

Clips come from :mod:`dekr.data.synthetic_video` (people walking towards each other, crossing and
occluding). Detections are the network's poses on the written video (``--checkpoint``) or, with
``--gt-noise``, the ground-truth poses with Gaussian noise, occluded joints noisier and missed
detections (mostly while a person is hidden): that measures the association alone. Each detection
sequence is tracked by :class:`dekr.track.PoseTracker` (optimal assignment, gaps, motion), without
and with One-Euro smoothing, and by :class:`dekr.track.GreedyTracker` (previous frame only, greedy).

Identity metrics come from ``motmetrics`` (``pip install motmetrics``): MOTA, IDF1, ID switches;
HOTA from TrackEval when installed (``pip install --no-deps trackeval``: its metrics need only numpy
and scipy, while its declared dependencies include a second OpenCV build). A prediction matches a
ground-truth person at OKS >= 0.5; people less than ``--min-visible`` visible are not counted,
and predictions on them are ignored. Jitter is the mean frame-to-frame joint acceleration
``|p[t+1] - 2 p[t] + p[t-1]|`` (px/frame^2) of the predictions matched to the same
person in three consecutive frames (the ground truth's own is printed for reference); error is the
mean distance (px) of matched predictions to the ground truth, over visible joints.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from dekr.data.synthetic_video import write_clip
from dekr.keypoints import COCO, KeypointSpec
from dekr.track import GreedyTracker, PoseTracker, default_track_config

try:
    import motmetrics as mm
except ImportError:  # pragma: no cover
    sys.exit("bench_track needs motmetrics: pip install motmetrics")
try:  # HOTA (Luiten et al. 2021) from TrackEval; its metrics need only numpy and scipy
    with contextlib.redirect_stdout(io.StringIO()):  # it prints about optional dataset readers
        from trackeval.metrics import HOTA
except ImportError:  # pragma: no cover
    HOTA = None


def oks(gt: np.ndarray, area: np.ndarray, pred: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """COCO OKS ``[G, H]`` of ground truth ``[G, K, 3]`` (areas ``[G]``) and predictions ``[H, K, 3]``."""
    if len(gt) == 0 or len(pred) == 0:
        return np.zeros((len(gt), len(pred)))
    d2 = ((gt[:, None, :, :2] - pred[None, :, :, :2]) ** 2).sum(-1)
    var = (2 * sigmas) ** 2
    e = np.exp(-d2 / (2 * np.maximum(area, 1.0)[:, None, None] * var))
    lab = (gt[..., 2] > 0)[:, None, :]
    return (e * lab).sum(-1) / np.maximum(lab.sum(-1), 1)


def gt_arrays(frame: dict, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    people = frame["people"]
    ids = np.array([p["id"] for p in people], np.int64)
    kp = np.array([p["keypoints"] for p in people], np.float64).reshape(-1, k, 3)
    area = np.array([p["area"] for p in people], np.float64)
    vis = np.array([p["visible"] for p in people], np.float64)
    return ids, kp, area, vis


def noisy_detections(gt: dict, k: int, rng: np.random.Generator, sigma: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Ground-truth poses with noise: visible joints sigma px, covered ones 3 sigma (lower scores),
    3% of people missed at random and half of those under 50% visible."""
    out = []
    for frame in gt["frames"]:
        _, kp, _, vis = gt_arrays(frame, k)
        keep = (vis >= 0.2) & (rng.random(len(vis)) > np.where(vis < 0.5, 0.5, 0.03))
        kp = kp[keep]
        v = kp[..., 2]
        noise = rng.normal(0, sigma, kp[..., :2].shape) * np.where(v == 1, 3.0, 1.0)[..., None]
        score = np.where(v == 2, 0.8, np.where(v == 1, 0.4, 0.0)) + rng.uniform(-0.05, 0.05, v.shape)
        poses = np.concatenate([kp[..., :2] + noise, np.clip(score, 0, 1)[..., None]], -1).astype(np.float32)
        out.append((poses, rng.uniform(0.6, 1.0, len(poses)).astype(np.float32)))
    return out


def detections_key(checkpoint: str, input_size: int, flip: bool) -> str:
    """A short key of what the cached detections depend on: the checkpoint's bytes and the test
    settings (a cache made with another network or setting is not read)."""
    h = hashlib.sha1(f"{input_size}/{flip}/".encode())
    with open(checkpoint, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def model_detections(video: Path, estimator) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(r.poses, r.scores) for r in estimator.stream(video)]


class OracleIds:
    """Each detection takes the ID of the ground-truth person it matches (OKS >= 0.5, one to one),
    others fresh IDs: the best any tracker could do with these detections (IDF1's ceiling)."""

    def __init__(self, gt: dict, spec: KeypointSpec, min_score: float = 0.1):
        self.frames, self.spec, self.min_score, self.t, self.next_id = iter(gt["frames"]), spec, min_score, 0, 10_000

    def update(self, poses: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        gids, gk, garea, _ = gt_arrays(next(self.frames), self.spec.num_keypoints)
        ids = np.full(len(poses), -1, np.int64)
        cand = np.flatnonzero(scores >= self.min_score)
        s = oks(gk, garea, poses[cand], self.spec.sigmas_array)
        if s.size:
            r, c = linear_sum_assignment(-s)
            ok = s[r, c] >= 0.5
            ids[cand[c[ok]]] = gids[r[ok]]
        fresh = cand[ids[cand] < 0]
        ids[fresh] = np.arange(self.next_id, self.next_id + len(fresh))
        self.next_id += len(fresh)
        return ids, poses


def run_tracker(tracker, detections) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for poses, scores in detections:
        ids, p = tracker.update(poses, scores)
        keep = ids >= 0
        out.append((ids[keep], p[keep]))
    return out


def evaluate(
    gt: dict, tracked, spec: KeypointSpec, min_visible: float, acc: mm.MOTAccumulator, stats: dict, clip: int
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Add one clip to the accumulator (IDs made unique per clip) and to the error / jitter sums.

    Returns:
        per frame: the counted ground-truth IDs, the kept prediction IDs and their OKS (for HOTA).
    """
    k, sigmas = spec.num_keypoints, spec.sigmas_array
    history: dict[int, dict[int, np.ndarray]] = {}
    gt_hist: dict[int, dict[int, np.ndarray]] = {}
    frames = []
    for t, (frame, (hids, hposes)) in enumerate(zip(gt["frames"], tracked)):
        gids, gk, garea, gvis = gt_arrays(frame, k)
        sim = oks(gk, garea, hposes, sigmas)
        counted = gvis >= min_visible
        # predictions on people not counted (mostly hidden) are ignored, not false positives
        on_ignored = (sim[~counted] >= 0.5).any(0) if (~counted).any() else np.zeros(len(hids), bool)
        hk = ~on_ignored
        s = sim[counted][:, hk]
        dist = np.where(s >= 0.5, 1 - s, np.nan)
        acc.update((gids[counted] + 100_000 * clip).tolist(), (hids[hk] + 100_000 * clip).tolist(), dist)
        frames.append((gids[counted], hids[hk], s))
        # error / jitter: each person's best prediction (one-to-one), independent of the IDs
        if s.size:
            r, c = linear_sum_assignment(-np.nan_to_num(s, nan=0.0))
            for i, j in zip(r, c):
                if s[i, j] < 0.5:
                    continue
                g = gk[counted][i]
                p = hposes[hk][j]
                visible = g[:, 2] == 2
                if visible.any():
                    stats["err"].append(np.linalg.norm(p[visible, :2] - g[visible, :2], axis=1).mean())
                pid = int(gids[counted][i])
                history.setdefault(pid, {})[t] = np.where(visible[:, None], p[:, :2], np.nan)
                gt_hist.setdefault(pid, {})[t] = np.where(visible[:, None], g[:, :2], np.nan)
    for name, hist in (("jitter", history), ("gt_jitter", gt_hist)):
        for track in hist.values():
            for t in track:
                if t - 1 in track and t + 1 in track:
                    a = np.linalg.norm(track[t + 1] - 2 * track[t] + track[t - 1], axis=1)
                    if np.isfinite(a).any():
                        stats[name].append(np.nanmean(a))
    return frames


def hota_of_clip(frames: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict | None:
    """TrackEval's HOTA of one clip: per frame the counted ground-truth IDs, the kept prediction IDs
    and their OKS ``[G, H]`` (the similarity HOTA thresholds at 0.05 ... 0.95)."""
    if HOTA is None:
        return None
    g_all = np.unique(np.concatenate([g for g, _, _ in frames] or [np.zeros(0, np.int64)]))
    h_all = np.unique(np.concatenate([h for _, h, _ in frames] or [np.zeros(0, np.int64)]))
    data = {
        "num_timesteps": len(frames),
        "num_gt_ids": len(g_all),
        "num_tracker_ids": len(h_all),
        "num_gt_dets": sum(len(g) for g, _, _ in frames),
        "num_tracker_dets": sum(len(h) for _, h, _ in frames),
        "gt_ids": [np.searchsorted(g_all, g) for g, _, _ in frames],  # 0-based, as TrackEval indexes
        "tracker_ids": [np.searchsorted(h_all, h) for _, h, _ in frames],
        "similarity_scores": [np.asarray(sim, np.float64).reshape(len(g), len(h)) for g, h, sim in frames],
    }
    return HOTA().eval_sequence(data)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a trained checkpoint (COCO layout synthetic people)")
    src.add_argument("--gt-noise", action="store_true", help="ground-truth poses + noise: the tracker alone")
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--people", type=int, default=3)
    ap.add_argument("--scenario", default="cross", choices=["cross", "walk", "static"])
    ap.add_argument("--noise", type=float, default=2.0, help="--gt-noise: joint noise (px)")
    ap.add_argument("--input-size", type=int, default=256)
    ap.add_argument("--flip", action="store_true", help="flip test (off: faster)")
    ap.add_argument("--min-visible", type=float, default=0.3)
    smoothing = default_track_config().smoothing
    ap.add_argument("--min-cutoff", type=float, default=smoothing.min_cutoff)
    ap.add_argument("--beta", type=float, default=smoothing.beta)
    ap.add_argument("--d-cutoff", type=float, default=smoothing.d_cutoff)
    ap.add_argument("--confidence", type=float, default=smoothing.confidence)
    ap.add_argument(
        "--track", default="{}", help="tracker settings over conf/track/default.yaml, JSON, e.g. '{\"patience\": 10}'"
    )
    ap.add_argument("--out", default=None, help="also write the table (markdown) here")
    ap.add_argument("--cache", default=None, help="folder for the network's detections (reruns skip the network)")
    args = ap.parse_args(argv)

    spec = COCO
    fps = 25.0
    estimator = None
    if args.checkpoint:
        import torch

        from dekr.inference.factory import load_estimator

        torch.set_num_threads(2)
        estimator = load_estimator(args.checkpoint, input_size=args.input_size, flip=args.flip, batch_size=4)
        key = detections_key(args.checkpoint, args.input_size, args.flip)
    smooth = {
        "enabled": True, "min_cutoff": args.min_cutoff, "beta": args.beta, "d_cutoff": args.d_cutoff,
        "confidence": args.confidence,
    }  # fmt: skip
    track = {**json.loads(args.track), "enabled": True}
    methods = {
        "oracle IDs (ceiling for these detections)": lambda gt: OracleIds(gt, spec),
        "greedy, previous frame": lambda gt: GreedyTracker(spec),
        "PoseTracker (Hungarian, gaps, motion)": lambda gt: PoseTracker(spec, track, fps=fps),
        "PoseTracker + One-Euro smoothing (score-weighted)": lambda gt: PoseTracker(
            spec, {**track, "smoothing": {**track.get("smoothing", {}), **smooth}}, fps=fps
        ),
    }
    accs = {m: mm.MOTAccumulator(auto_id=True) for m in methods}
    stats = {m: {"err": [], "jitter": [], "gt_jitter": []} for m in methods}
    hota_clips: dict[str, dict[str, dict]] = {m: {} for m in methods}
    rng = np.random.default_rng(0)
    t_track = {m: 0.0 for m in methods}
    frames_total = 0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.clips):
            video, gt_file = Path(tmp) / f"clip{seed}.mp4", Path(tmp) / f"clip{seed}.json"
            gt = write_clip(
                video, gt_file, fps=fps, seed=seed, num_frames=args.frames, num_people=args.people,
                scenario=args.scenario,
            )  # fmt: skip
            frames_total += len(gt["frames"])
            cached = (
                Path(args.cache) / f"dets_{key}_{args.scenario}_{seed}_{args.frames}_{args.people}.npz"
                if args.cache and estimator
                else None
            )
            if cached is not None and cached.exists():
                z = np.load(cached)
                dets = [(z[f"p{t}"], z[f"s{t}"]) for t in range(len(gt["frames"]))]
            else:
                dets = model_detections(video, estimator) if estimator else noisy_detections(gt, 17, rng, args.noise)
                if cached is not None:
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    np.savez(cached, **{f"p{t}": p for t, (p, _) in enumerate(dets)},
                             **{f"s{t}": s for t, (_, s) in enumerate(dets)})  # fmt: skip
            for m, make in methods.items():
                t = time.perf_counter()
                tracked = run_tracker(make(gt), dets)
                t_track[m] += time.perf_counter() - t
                clip_hota = hota_of_clip(evaluate(gt, tracked, spec, args.min_visible, accs[m], stats[m], seed))
                if clip_hota is not None:
                    hota_clips[m][str(seed)] = clip_hota
    wall = time.perf_counter() - t0

    mh = mm.metrics.create()
    names = list(methods)
    summary = mh.compute_many(
        [accs[m] for m in names],
        names=names,
        metrics=[
            "mota",
            "idf1",
            "num_switches",
            "num_frames",
            "recall",
            "precision",
            "num_unique_objects",
            "mostly_tracked",
            "num_fragmentations",
            "idp",
            "idr",
        ],
    )
    source = f"network `{args.checkpoint}` @ {args.input_size}" if args.checkpoint else (
        f"ground-truth poses + {args.noise:g} px noise (tracker alone, no network)"
    )  # fmt: skip
    lines = [
        f"Detections: {source}; {args.clips} `{args.scenario}` clips x {args.frames} frames x {args.people} people "
        f"(384x256, {fps:g} fps); smoothing min_cutoff={args.min_cutoff:g}, beta={args.beta:g}, "
        f"d_cutoff={args.d_cutoff:g}, confidence={args.confidence:g}; wall {wall:.0f} s.",
        "",
        "| tracker | MOTA | IDF1 | HOTA | ID switches | jitter (px/frame^2) | mean joint error (px) "
        "| tracking ms/frame |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in names:
        row = summary.loc[m]
        st = stats[m]
        hota = f"{HOTA().combine_sequences(hota_clips[m])['HOTA'].mean():.3f}" if hota_clips[m] else "-"
        lines.append(
            f"| {m} | {row['mota']:.3f} | {row['idf1']:.3f} | {hota} | {int(row['num_switches'])} | "
            f"{np.mean(st['jitter']):.2f} | {np.mean(st['err']):.2f} | {1000 * t_track[m] / frames_total:.2f} |"
        )
    lines.append(f"| (ground truth's own motion) | | | | | {np.mean(stats[names[0]]['gt_jitter']):.2f} | | |")
    lines.append("")
    lines.append(
        f"Detections matched at OKS >= 0.5: recall {summary.loc[names[1], 'recall']:.3f}, "
        f"precision {summary.loc[names[1], 'precision']:.3f} (the same for every tracker without smoothing)."
    )
    if HOTA is None:
        lines.append("HOTA: not computed (TrackEval is not installed: pip install --no-deps trackeval).")
    else:
        lines.append(
            "HOTA: TrackEval's, OKS as the similarity, mean over thresholds 0.05-0.95 (the oracle row is IDF1's "
            "ceiling at OKS 0.5, not HOTA's)."
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    print(json.dumps({"frames": frames_total, "wall_s": round(wall, 1)}))


if __name__ == "__main__":
    main()
