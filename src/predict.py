"""Poses for an image, a folder of images or a video.

    python src/predict.py input=PATH checkpoint=CKPT [data=crowdpose] [model=dekr_w48] [device=cuda]

Writes into the run folder: ``predictions.json`` (COCO keypoint results in original pixels, with
``file_name`` and, for videos, ``frame``), ``overlays/<image>.jpg`` and, for a video,
``<name>_pose.mp4``. Unreadable inputs are reported and skipped; they never stop the run.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import hydra
import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

import dekr  # noqa: F401  (registers the config resolvers)
from dekr.inference.factory import build_estimator
from dekr.inference.predictor import PoseEstimator, PoseResult
from dekr.keypoints import KeypointSpec
from dekr.metrics import write_json
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
    overlay_name = {p: f"{p.stem}.jpg" if stems.count(p.stem) == 1 else f"{p.stem}_{p.suffix.lstrip('.')}.jpg"
                    for p in paths}
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


def predict_video(
    path: Path,
    est: PoseEstimator,
    spec: KeypointSpec,
    cfg: DictConfig,
    out: Path,
    records: list[dict],
    skipped: list[str],
    video_id: int,
) -> None:
    """Frames in batches; writes ``out/<name>_pose.mp4``."""
    cap = cv2.VideoCapture(str(path))
    ok, first = cap.read() if cap.isOpened() else (False, None)
    if not ok:
        log.warning("skipped %s: not a readable video", path)
        skipped.append(str(path))
        return
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    limit = cfg.video.max_frames
    h, w = first.shape[:2]
    out.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(out / f"{path.stem}_pose.mp4"), cv2.VideoWriter_fourcc(*cfg.video.codec), fps, (w, h))

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
    )
    batch: list[np.ndarray] = []
    index = 0

    def flush() -> None:
        nonlocal index
        for img, res in zip(batch, _safe_batch(est, batch, [path] * len(batch), skipped)):
            if res is not None:
                records.extend(_records(res, video_id, cfg.min_score, file_name=path.name, frame=index))
                img = _draw(img, res, spec, cfg)
            writer.write(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            index += 1
        bar.update(len(batch))
        batch.clear()

    for frame in frames():
        batch.append(frame)
        if len(batch) == est.batch_size:
            flush()
    if batch:
        flush()
    bar.close()
    writer.release()
    cap.release()


def predict(cfg: DictConfig) -> dict:
    """Run prediction as described by ``cfg`` (conf/predict.yaml); returns a summary dict."""
    out = Path(cfg.output_dir)
    earlier = [f for f in ("predictions.json", "summary.json") if (out / f).exists()]
    if earlier and not cfg.get("overwrite", False):
        raise FileExistsError(
            f"{out} already holds {', '.join(earlier)} of an earlier prediction; give another run_name=... "
            "(or output_dir=...), or overwrite=true to replace them"
        )
    images, videos = list_inputs(Path(cfg.input))
    est, spec = build_estimator(cfg)
    records: list[dict] = []
    skipped: list[str] = []
    if images:
        predict_images(images, est, spec, cfg, out, records, skipped)
    for i, video in enumerate(videos):
        predict_video(video, est, spec, cfg, out, records, skipped, video_id=len(images) + i)
    write_json(out / "predictions.json", records)
    summary = {
        "images": len(images),
        "videos": len(videos),
        "people": len(records),
        "skipped": skipped,
        "output_dir": str(out),
        "flip_test": est.flip_test,
        "scales": list(est.scales),
    }
    write_json(out / "summary.json", summary)
    if skipped and len(skipped) >= len(images) + len(videos):
        raise NothingProcessedError(
            f"none of the {len(images) + len(videos)} inputs under {cfg.input} could be processed (skipped: "
            f"{', '.join(skipped[:5])}{', ...' if len(skipped) > 5 else ''}; the list is in {out / 'summary.json'}); "
            "check that they are images or videos OpenCV can read"
        )
    log.info(
        "%d images, %d videos, %d poses -> %s%s",
        len(images),
        len(videos),
        len(records),
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
