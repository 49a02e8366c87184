"""Evaluate a DEKR checkpoint on a dataset split (COCO keypoint AP/AR, CrowdPose AP E/M/H).

    python src/eval.py checkpoint=PATH [data=crowdpose] [model=dekr_w48] [test.flip=false]
                       [test.scales=[2.0,1.0,0.5]] [rescore.weights=PATH] [split=test] [limit_images=N]

Prints a metrics table; writes ``results.json`` (COCO keypoint results, original pixels) and
``metrics.json`` into the run folder.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

import dekr  # noqa: F401  (registers the config resolvers)
from dekr.inference.factory import build_estimator
from dekr.metrics import KeypointAP, format_table, write_json

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Run the evaluation described by ``cfg`` (see conf/eval.yaml); returns the metrics."""
    if cfg.split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got '{cfg.split}'")
    estimator, spec = build_estimator(cfg)
    dm = hydra.utils.instantiate(cfg.data, _partial_=True)(
        keypoints=spec, codec=estimator.cfg, val_batch_size=estimator.test.batch_size, num_workers=int(cfg.num_workers)
    )
    dm.setup("validate" if cfg.split == "val" else "test")
    loader = dm.val_dataloader() if cfg.split == "val" else dm.test_dataloader()
    gt = dm.datasets[cfg.split].coco.dataset
    metric = KeypointAP(gt, spec, max_dets=estimator.test.max_dets, **dm.metric_options)
    limit = cfg.get("limit_images")
    seen, start = 0, time.perf_counter()
    bar = tqdm(total=limit or len(loader.dataset), disable=not cfg.progress, desc="eval", unit="img")
    for batch in loader:
        if limit is not None and seen >= int(limit):
            break
        if limit is not None:
            batch = batch[: int(limit) - seen]
        if not batch:  # every image of this batch was unreadable (skipped with a warning)
            continue
        results = estimator.predict_batch([s["image"] for s in batch])
        metric.update([s["image_id"] for s in batch], [r.poses for r in results], [r.scores for r in results])
        seen += len(batch)
        bar.update(len(batch))
    bar.close()
    elapsed = time.perf_counter() - start
    out = Path(cfg.get("output_dir") or hydra.core.hydra_config.HydraConfig.get().runtime.output_dir)
    if seen == 0:
        write_json(
            out / "metrics.json",
            {"metrics": None, "images": 0, "checkpoint": str(cfg.checkpoint), "error": "no image could be evaluated"},
        )
        raise NothingEvaluatedError(
            f"no image of the {cfg.split} split could be evaluated ({len(loader.dataset)} listed in "
            f"{dm.annotation_file(cfg.split)}; unreadable images are skipped with a warning): check the image folder "
            f"(data.{cfg.split}_images, data.root) and the files"
        )
    stats = {k: float(v) for k, v in metric.compute().items()}
    write_json(out / "results.json", metric.predictions())
    write_json(
        out / "metrics.json",
        {
            "metrics": stats,
            "images": seen,
            "seconds": elapsed,
            "checkpoint": str(cfg.checkpoint),
            "flip_test": estimator.flip_test,
            "scales": list(estimator.scales),
            "test": OmegaConf.to_container(cfg.test, resolve=True),
            "codec": estimator.cfg.to_dict(),
        },
    )
    print(format_table(stats))
    log.info("%d images in %.1f s; results and metrics in %s", seen, elapsed, out)
    return stats


class NothingEvaluatedError(RuntimeError):
    """No image of the split could be read."""


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> float:
    try:
        return evaluate(cfg)["AP"]
    except (NothingEvaluatedError, FileNotFoundError, ValueError) as err:
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
