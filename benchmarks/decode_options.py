"""Measured effect of the decoder options on a noisy codec round trip.

Ground truth (COCO sample, and the dense 30-person crowd of tests/data/decode_golden.npz) is encoded
into targets at the test geometry (dekr.codec.synthetic), Gaussian noise is added (heatmaps sigma 0.05,
offsets 0.5 output px), the result is decoded with each option and scored with dekr.metrics
(mean AP over 3 noise seeds)::

    PYTHONPATH=src python benchmarks/decode_options.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src")]

from dekr.codec import CodecConfig, ScaleOutput, codec_config, decode  # noqa: E402
from dekr.codec.geometry import input_geometry, input_to_original  # noqa: E402
from dekr.codec.synthetic import outputs_from_ground_truth  # noqa: E402
from dekr.keypoints import COCO  # noqa: E402
from dekr.metrics import evaluate_keypoints, results_to_coco  # noqa: E402

OPTIONS = {
    "reference": codec_config(),
    "bilinear scores": codec_config({"scoring": {"joint_score": "bilinear"}}),
    "symmetric NMS": codec_config({"nms": {"strategy": "symmetric"}}),
    "greedy NMS": codec_config({"nms": {"strategy": "greedy"}}),
    "heatmap matching": codec_config({"refine": {"enabled": True}}),
}


def noisy_ap(gt: dict, flip: bool, cfg: CodecConfig, seed: int, max_dets: int) -> float:
    g = torch.Generator().manual_seed(seed)

    def noisy(t: torch.Tensor | None, s: float) -> torch.Tensor | None:
        return None if t is None else t + s * torch.randn(t.shape, generator=g)

    ids, poses, scores = [], [], []
    for im in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == im["id"] and (a["iscrowd"] == 0 or a["num_keypoints"])]
        kp = np.array([a["keypoints"] for a in anns], np.float64).reshape(len(anns), 17, 3)
        area = np.array([a.get("area", 1e9) for a in anns])
        o = outputs_from_ground_truth(
            kp, area, (im["height"], im["width"]), COCO, cfg, 512, flip=flip, min_center_area=1024.0
        )
        o = ScaleOutput(
            1.0,
            noisy(o.heatmaps, 0.05),
            noisy(o.offsets, 0.5),
            noisy(o.heatmaps_flip, 0.05),
            noisy(o.offsets_flip, 0.5),
        )
        d = decode([o], COCO, cfg)
        geo = input_geometry(im["height"], im["width"], 512)
        p = torch.cat((input_to_original(d.poses[..., :2], [geo]), d.poses[..., 2:]), -1)[0][d.valid[0]]
        ids.append(im["id"])
        poses.append(p.numpy())
        scores.append(d.scores[0][d.valid[0]].numpy())
    return evaluate_keypoints(gt, results_to_coco(ids, poses, scores), COCO, max_dets=max_dets)["AP"]


def main() -> None:
    torch.set_num_threads(1)
    z = np.load(ROOT / "tests" / "data" / "decode_golden.npz")
    data = ROOT.parent / "shared" / "data"
    sets = {
        "COCO sample": (json.loads((data / "coco_sample" / "person_keypoints_sample.json").read_text()), 20),
        "dense crowd 30": (json.loads(bytes(z["dense30/gt"]).decode()), 30),
    }
    print("| data | flip | " + " | ".join(OPTIONS) + " |\n|" + "---|" * (len(OPTIONS) + 2))
    for name, (gt, max_dets) in sets.items():
        for flip in (False, True):
            aps = [np.mean([noisy_ap(gt, flip, cfg, s, max_dets) for s in range(3)]) for cfg in OPTIONS.values()]
            print(f"| {name} | {'on' if flip else 'off'} | " + " | ".join(f"{a:.4f}" for a in aps) + " |")


if __name__ == "__main__":
    main()
