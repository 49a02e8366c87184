"""Decoding speed: ms/image with flip test for 1, 10 and 30 people on a 512x512 input (128² map).

Ours: :func:`dekr.codec.decode.decode` + inverse affine + rescoring (one call per batch), at batch
1 and batch 8. With ``DEKR_REF`` set (and the oracle harness in ``../shared/oracle``), the official
post-processing (``get_multi_stage_outputs`` with flip, ``aggregate_results``, ``pose_nms``,
``get_final_preds``, ``rescore_valid``) runs on the same fabricated outputs, side by side::

    PYTHONPATH=src [DEKR_REF=/work/ref/DEKR] python benchmarks/bench_decode.py [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from timing import median_seconds  # noqa: E402

from dekr.codec import ScaleOutput, decode, default_codec_config  # noqa: E402
from dekr.codec.geometry import input_geometry, input_to_original  # noqa: E402
from dekr.codec.synthetic import fabricate_outputs  # noqa: E402
from dekr.keypoints import COCO  # noqa: E402
from dekr.rescore import Rescorer  # noqa: E402


def timeit(fn, reps: int = 20, warmup: int = 3) -> float:
    """Median seconds of ``fn()``."""
    return median_seconds(fn, reps, warmup)


def ours(out: dict, batch: int, rescorer: Rescorer, device: torch.device) -> float:
    keys = ("heatmaps", "offsets", "heatmaps_flip", "offsets_flip")
    so = ScaleOutput(1.0, *(out[k].repeat(batch, 1, 1, 1).to(device) for k in keys))
    geo = [input_geometry(512, 512, 512)] * batch
    cfg = default_codec_config()

    def run() -> None:
        d = decode([so], COCO, cfg)
        xy = input_to_original(d.poses[..., :2], geo)
        poses = torch.cat((xy, d.poses[..., 2:]), -1)[d.valid]
        rescorer(poses, d.scores[d.valid])
        if device.type == "cuda":
            torch.cuda.synchronize()

    return timeit(run, reps=50, warmup=5) / batch


def reference(out: dict, rescore_path: str, H) -> float:
    from core.inference import aggregate_results, get_multi_stage_outputs
    from core.nms import pose_nms
    from utils.rescore import rescore_valid
    from utils.transforms import get_final_preds, get_multi_scale_size, resize_align_multi_scale

    cfg = H.load_cfg(opts=["RESCORE.MODEL_FILE", rescore_path])
    image = np.zeros((512, 512, 3), np.uint8)
    inp = torch.zeros(1, 3, 512, 512)
    model = H.FakeModel([(out["heatmaps"], out["offsets"]), (out["heatmaps_flip"], out["offsets_flip"])])

    def run() -> None:
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            base_size, center, scale = get_multi_scale_size(image, 512, 1.0, 1.0)
            _, center, scale_resized = resize_align_multi_scale(image, 512, 1.0, 1.0)
            heatmap, posemap = get_multi_stage_outputs(cfg, model, inp.clone(), True)
            heatmap_sum, poses = aggregate_results(cfg, 0, [], heatmap, posemap, 1.0)
            poses, scores = pose_nms(cfg, heatmap_sum, poses)
            final = get_final_preds(poses, center, scale_resized, base_size)
            rescore_valid(cfg, final, scores)

    return timeit(run, reps=10, warmup=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rescorer = Rescorer(COCO).to(device).eval()
    H = None
    if os.environ.get("DEKR_REF"):
        sys.path.insert(0, os.environ.get("DEKR_ORACLE", str(ROOT.parent / "shared" / "oracle")))
        import dekr_harness as H  # noqa: N812

        H.setup()
        cfg = H.load_cfg()
        path = H.random_rescore_weights(cfg)
        rescorer = Rescorer.from_file(path, COCO).to(device)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {device}, "
        f"input 512x512 (map 128x128), flip test on, rescoring on"
    )
    head = "| people | ours b=1 (ms/img) | ours b=8 (ms/img) |"
    if H is not None:
        head += " reference (ms/img) | speed-up b=1 | speed-up b=8 |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for people in (1, 10, 30):
        out = fabricate_outputs(COCO, people, 128, 128, seed=people)
        t1 = ours(out, 1, rescorer, device) * 1e3
        t8 = ours(out, 8, rescorer, device) * 1e3
        row = f"| {people} | {t1:.2f} | {t8:.2f} |"
        if H is not None:
            tr = reference(out, path, H) * 1e3
            row += f" {tr:.2f} | {tr / t1:.1f}x | {tr / t8:.1f}x |"
        print(row)


if __name__ == "__main__":
    main()
