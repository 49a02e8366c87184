"""Poses for an image, a folder of images or a video.

    python src/predict.py input=PATH checkpoint=CKPT [data=crowdpose] [model=dekr_w48] [device=cuda]

Writes into the run folder: ``predictions.json`` (COCO keypoint results in original pixels, with
``file_name`` and, for videos, ``frame`` and ``track_id``), ``overlays/<image>.jpg`` and, for a video,
``<name>_pose.mp4`` and ``predictions.jsonl`` (one line per frame, written as the frames finish, so a
killed run keeps them; ``resume=true`` continues after them). ``track.enabled=true`` gives people
stable IDs (:mod:`dekr.track`). Unreadable inputs are reported and skipped; they never stop the run.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import cv2
import hydra
import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

import dekr  # noqa: F401  (registers the config resolvers)
from dekr.inference.factory import build_estimator, build_tracker
from dekr.inference.predictor import PoseEstimator, PoseResult
from dekr.keypoints import KeypointSpec
from dekr.metrics import write_json
from dekr.results import FrameResult
from dekr.track import PoseTracker
from dekr.viz import draw_poses

log = logging.getLogger(__name__)

IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_EXT = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}


def read_rgb(path: Path) -> np.ndarray | None:
    """RGB uint8 image, or None when it cannot be decoded."""
    data = np.fromfile(str(path), dtype=np.uint8) if path.is_file() else np.zeros(0, np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    return None if img is None or img.size == 0 else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def list_inputs(path: Path) -> tuple[list[Path], list[Path]]:
    """(images, videos) under ``path`` (a file or a folder, not recursive)."""
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist; give an image, a folder of images or a video")
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    videos = [p for p in files if p.suffix.lower() in VIDEO_EXT]
    images = [p for p in files if p not in videos and (p.suffix.lower() in IMAGE_EXT or not path.is_dir())]
    return images, videos


def _records(res: PoseResult, image_id: int, min_score: float, **extra: object) -> list[dict]:
    keep = res.scores >= min_score
    return [
        {
            "image_id": image_id,
            "category_id": 1,
            "keypoints": [float(v) for v in p.reshape(-1)],
            "score": float(s),
            **extra,
        }
        for p, s in zip(res.poses[keep], res.scores[keep])
    ]


def _draw(image: np.ndarray, res: PoseResult, spec: KeypointSpec, cfg: DictConfig) -> np.ndarray:
    keep = res.scores >= cfg.draw.min_score
    return draw_poses(
        image,
        res.poses[keep],
        spec,
        res.scores[keep] if cfg.draw.show_scores else None,
        joint_threshold=float(cfg.draw.joint_threshold),
    )


def predict_images(
    paths: list[Path],
    est: PoseEstimator,
    spec: KeypointSpec,
    cfg: DictConfig,
    out: Path,
    records: list[dict],
    skipped: list[str],
) -> None:
    """Images in batches; overlays under ``out/overlays``."""
    overlay_dir = out / "overlays"
    stems = [p.stem for p in paths]
    # one overlay per input: files sharing a stem (a.jpg, a.png) keep their extension in the name
    overlay_name = {
        p: f"{p.stem}.jpg" if stems.count(p.stem) == 1 else f"{p.stem}_{p.suffix.lstrip('.')}.jpg" for p in paths
    }
    bar = tqdm(total=len(paths), disable=not cfg.progress, desc="images", unit="img")

    def readable() -> Iterator[tuple[int, Path, np.ndarray]]:
        for i, p in enumerate(paths):
            img = read_rgb(p)
            if img is None:
                log.warning("skipped %s: not a readable image", p)
                skipped.append(str(p))
                bar.update(1)
                continue
            yield i, p, img

    chunk: list[tuple[int, Path, np.ndarray]] = []
    items = readable()
    while True:
        item = next(items, None)
        if item is not None:
            chunk.append(item)
        if chunk and (item is None or len(chunk) == est.batch_size):
            for (i, p, img), res in zip(chunk, _safe_batch(est, [c[2] for c in chunk], [c[1] for c in chunk], skipped)):
                if res is None:
                    continue
                records.extend(_records(res, i, cfg.min_score, file_name=p.name))
                if cfg.draw.overlays:
                    overlay_dir.mkdir(parents=True, exist_ok=True)
                    cv2.imwrite(
                        str(overlay_dir / overlay_name[p]), cv2.cvtColor(_draw(img, res, spec, cfg), cv2.COLOR_RGB2BGR)
                    )
            bar.update(len(chunk))
            chunk = []
        if item is None:
            break
    bar.close()


def _safe_batch(
    est: PoseEstimator, images: list[np.ndarray], names: list[Path], skipped: list[str]
) -> list[PoseResult | None]:
    """Predict a batch; on failure retry image by image and report the ones that fail."""
    try:
        return est.predict_batch(images)
    except Exception as err:  # noqa: BLE001 - one bad input must not stop the run
        log.warning("batch failed (%s); retrying one image at a time", err)
    out: list[PoseResult | None] = []
    for img, name in zip(images, names):
        try:
            out.extend(est.predict_batch([img]))
        except Exception as err:  # noqa: BLE001
            log.warning("skipped %s: %s", name, err)
            skipped.append(str(name))
            out.append(None)
    return out


JSONL = "predictions.jsonl"


def read_done_frames(path: Path) -> dict[str, int]:
    """How many frames of each source ``predictions.jsonl`` already holds. A last line cut short (a
    killed write) is dropped: the file is truncated after the last complete line."""
    if not path.exists():
        return {}
    with open(path, "r+b") as fh:
        size = fh.seek(0, os.SEEK_END)
        tail = fh.seek(max(size - (1 << 20), 0))
        end = tail + fh.read().rfind(b"\n") + 1 if size else 0
        if end < size:
            log.warning("%s: dropping an incomplete last line (%d bytes) of a killed run", path, size - end)
            fh.truncate(end)
    done: dict[str, int] = {}
    with open(path) as fh:
        for line in fh:
            if line.strip():
                source = json.loads(line)["source"]
                done[source] = done.get(source, 0) + 1
    return done


def stored_frames(path: Path, source: str) -> Iterator[dict]:
    """The lines of ``source`` in ``predictions.jsonl``, in order, read lazily."""
    with open(path) as fh:
        for line in fh:
            if line.strip():
                frame = json.loads(line)
                if frame["source"] == source:
                    yield frame


def predict_video(
    path: Path,
    est: PoseEstimator,
    spec: KeypointSpec,
    cfg: DictConfig,
    out: Path,
    sink: TextIO,
    skipped: list[str],
    done: int = 0,
    stored: Iterator[dict] | None = None,
) -> int:
    """Frames in batches, streamed: one ``predictions.jsonl`` line per frame (written and flushed as
    each batch finishes) and ``out/<name>_pose.mp4``. Resume: the first ``done`` frames are not run
    again but redrawn from their ``stored`` lines (and replayed through the tracker).
    Returns the number of frames."""
    cap = cv2.VideoCapture(str(path))
    ok, first = cap.read() if cap.isOpened() else (False, None)
    if not ok:
        log.warning("skipped %s: not a readable video", path)
        skipped.append(str(path))
        return 0
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    limit = cfg.video.max_frames
    h, w = first.shape[:2]
    out.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(out / f"{path.stem}_pose.mp4"), cv2.VideoWriter_fourcc(*cfg.video.codec), fps, (w, h))
    tracker = build_tracker(cfg, spec, fps=fps)

    def frames() -> Iterator[np.ndarray]:
        frame, n = first, 0
        while frame is not None and (limit is None or n < limit):
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            n += 1
            ok, frame = cap.read()
            frame = frame if ok else None

    bar = tqdm(
        total=min(total, limit) if total and limit else (total or limit),
        disable=not cfg.progress,
        desc=path.name,
        unit="frame",
        initial=0,
    )
    batch: list[np.ndarray] = []
    index = 0

    def finish(img: np.ndarray, res: FrameResult | None) -> None:
        if res is not None:
            img = res.plot(
                img,
                min_score=float(cfg.draw.min_score),
                joint_threshold=float(cfg.draw.joint_threshold),
                show_scores=bool(cfg.draw.show_scores),
            )
        writer.write(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))

    def flush() -> None:
        nonlocal index
        for img, res in zip(batch, _safe_batch(est, batch, [path] * len(batch), skipped)):
            if res is None:  # failed frame: a line without people keeps the frame count for resume
                sink.write(json.dumps({"frame": index, "source": path.name, "people": [], "failed": True}) + "\n")
                finish(img, None)
            else:
                result = _frame_result(res, spec, index, path.name, cfg.min_score, tracker)
                line = result.to_dict()
                if "raw_poses" in result.extra:  # replayable smoothing state for resume: float32 exactly
                    for person, raw in zip(line["people"], result.extra["raw_poses"]):
                        person["raw_keypoints"] = [float(str(v)) for v in np.asarray(raw, np.float32).reshape(-1)]
                sink.write(json.dumps(line, separators=(",", ":")) + "\n")
                finish(img, result)
            index += 1
        sink.flush()
        bar.update(len(batch))
        batch.clear()

    try:
        for frame in frames():
            if index < done:  # resume: redraw the stored poses, replay the tracker
                line = next(stored)
                previous = FrameResult.from_dict(line, spec)
                if tracker is not None and not line.get("failed"):
                    raw = [p.get("raw_keypoints", p["keypoints"]) for p in line["people"]]
                    raw = np.asarray(raw, np.float32).reshape(-1, spec.num_keypoints, 3)
                    ids = previous.track_ids if previous.track_ids is not None else np.full(len(previous), -1)
                    tracker.update(raw, previous.scores, track_ids=ids)
                finish(frame, previous)
                index += 1
                bar.update(1)
                continue
            batch.append(frame)
            if len(batch) == est.batch_size:
                flush()
        if batch:
            flush()
    finally:
        bar.close()
        writer.release()
        cap.release()
    return index


def _frame_result(
    res: PoseResult, spec: KeypointSpec, frame: int, source: str, min_score: float, tracker: PoseTracker | None
) -> FrameResult:
    """The written people of a frame (score >= ``min_score``), tracked when a tracker is given."""
    keep = res.scores >= min_score
    result = FrameResult(res.poses[keep], res.scores[keep], spec, frame=frame, source=source)
    return result if tracker is None else result.track(tracker)


def write_predictions(path: Path, records: list[dict], jsonl: Path, video_ids: dict[str, int]) -> int:
    """``predictions.json``: the image records, then every video frame of ``jsonl`` as COCO records
    (``image_id`` the video's, with ``file_name``, ``frame`` and ``track_id``), streamed (memory does
    not grow with the video) into a temporary file renamed at the end. Returns the record count."""
    tmp = path.with_suffix(".json.tmp")
    n = 0
    with open(tmp, "w") as fh:
        fh.write("[")
        for rec in records:
            fh.write(("," if n else "") + json.dumps(rec))
            n += 1
        if jsonl.exists():
            with open(jsonl) as lines:
                for line in lines:
                    frame = json.loads(line)
                    if frame["source"] not in video_ids:
                        continue
                    for person in frame["people"]:
                        rec = {
                            "image_id": video_ids[frame["source"]],
                            "category_id": 1,
                            "keypoints": person["keypoints"],
                            "score": person["score"],
                            "file_name": frame["source"],
                            "frame": frame["frame"],
                        }
                        if person.get("track_id") is not None:
                            rec["track_id"] = person["track_id"]
                        fh.write(("," if n else "") + json.dumps(rec))
                        n += 1
        fh.write("]")
    os.replace(tmp, path)
    return n


def predict(cfg: DictConfig) -> dict:
    """Run prediction as described by ``cfg`` (conf/predict.yaml); returns a summary dict."""
    out = Path(cfg.output_dir)
    resume, overwrite = bool(cfg.get("resume", False)), bool(cfg.get("overwrite", False))
    earlier = [f for f in ("predictions.json", "summary.json", JSONL) if (out / f).exists()]
    if earlier and not (overwrite or resume):
        raise FileExistsError(
            f"{out} already holds {', '.join(earlier)} of an earlier prediction; give another run_name=... "
            "(or output_dir=...), overwrite=true to replace them, or resume=true to continue the video "
            f"frames in {JSONL}"
        )
    images, videos = list_inputs(Path(cfg.input))
    est, spec = build_estimator(cfg)
    records: list[dict] = []
    skipped: list[str] = []
    if images:
        predict_images(images, est, spec, cfg, out, records, skipped)
    jsonl = out / JSONL
    done = read_done_frames(jsonl) if resume else {}
    if done:
        log.info("resume: %s", ", ".join(f"{k}: {n} frames done" for k, n in done.items()))
    video_ids = {v.name: len(images) + i for i, v in enumerate(videos)}
    frames = 0
    if videos:
        out.mkdir(parents=True, exist_ok=True)
        with open(jsonl, "a" if resume else "w") as sink:
            for video in videos:
                n = done.get(video.name, 0)
                replay = stored_frames(jsonl, video.name) if n else None
                frames += predict_video(video, est, spec, cfg, out, sink, skipped, n, replay)
    people = write_predictions(out / "predictions.json", records, jsonl, video_ids)
    summary = {
        "images": len(images),
        "videos": len(videos),
        "frames": frames,
        "people": people,
        "skipped": skipped,
        "output_dir": str(out),
        "flip_test": est.flip_test,
        "scales": list(est.scales),
        "tracking": bool(cfg.get("track") and cfg.track.enabled),
        "resumed_frames": sum(n for k, n in done.items() if k in video_ids),
    }
    write_json(out / "summary.json", summary)
    if skipped and len(skipped) >= len(images) + len(videos):
        raise NothingProcessedError(
            f"none of the {len(images) + len(videos)} inputs under {cfg.input} could be processed (skipped: "
            f"{', '.join(skipped[:5])}{', ...' if len(skipped) > 5 else ''}; the list is in {out / 'summary.json'}); "
            "check that they are images or videos OpenCV can read"
        )
    log.info(
        "%d images, %d videos (%d frames), %d poses -> %s%s",
        len(images),
        len(videos),
        frames,
        people,
        out,
        f"; skipped {len(skipped)}: {skipped}" if skipped else "",
    )
    return summary


class NothingProcessedError(RuntimeError):
    """Every input was skipped: the run produced nothing."""


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    try:
        predict(cfg)
    except (FileExistsError, FileNotFoundError, NothingProcessedError, ValueError) as err:
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
