"""End-to-end images/s of the predictor (pre-processing, network with flip test, decoding) per model size.

    PYTHONPATH=src python benchmarks/bench_predict.py [--models dekr_tiny dekr_w32] [--device cuda]
        [--threads 2] [--images 4] [--batch-size 1] [--input-size 512]

Runs on the COCO sample images (``../shared/data/coco_sample``) with untrained weights (speed does
not depend on them; decoding does a little, through the number of people found).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import dekr  # noqa: E402, F401  (config resolvers)
from dekr.inference.factory import build_estimator  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["dekr_tiny", "dekr_w18_small", "dekr_w32", "dekr_w48"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--input-size", type=int, default=512)
    parser.add_argument("--no-flip", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    paths = sorted((ROOT.parent / "shared" / "data" / "coco_sample").glob("*.jpg"))
    images = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]
    images = (images * (args.images // len(images) + 1))[: args.images]
    print(
        f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} thread(s), input "
        f"{args.input_size} short side, flip test {'off' if args.no_flip else 'on'}, batch {args.batch_size}"
    )
    print("| model | params (M) | images/s | s/image |\n|---|---|---|---|")
    for name in args.models:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(
                "predict",
                overrides=[
                    f"model={name}",
                    "input=.",
                    f"device={args.device}",
                    f"test.input_size={args.input_size}",
                    f"test.batch_size={args.batch_size}",
                    f"test.flip={not args.no_flip}",
                    "output_dir=.",
                ],
            )
        est, _ = build_estimator(cfg)
        est(images[: args.batch_size])  # warm-up
        if est.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        est(images)
        if est.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        params = sum(p.numel() for p in est.model.parameters()) / 1e6
        print(f"| {name} | {params:.2f} | {len(images) / dt:.2f} | {dt / len(images):.2f} |", flush=True)


if __name__ == "__main__":
    main()
