"""Keypoint metrics: COCO AP/AR, CrowdPose AP(E/M/H), DDP gathering, maxDets."""

from __future__ import annotations

import copy
import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from dekr.keypoints import COCO, CROWDPOSE, KeypointSpec
from dekr.metrics import COCO_NAMES, CROWD_NAMES, KeypointAP, evaluate_keypoints, format_table, results_to_coco

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
COCO_ANN = DATA / "coco_sample" / "person_keypoints_sample.json"
CROWD_ANN = DATA / "crowdpose_sample" / "crowdpose_sample.json"


def _gt_as_predictions(gt: dict, k: int) -> dict[int, np.ndarray]:
    by_image: dict[int, list] = defaultdict(list)
    for a in gt["annotations"]:
        if a["num_keypoints"] > 0 and not a["iscrowd"]:
            by_image[a["image_id"]].append(np.asarray(a["keypoints"], np.float64).reshape(k, 3))
    return {i: np.stack(v) for i, v in by_image.items()}


def test_ground_truth_as_predictions_gives_ap_1() -> None:
    gt = json.loads(COCO_ANN.read_text())
    preds = _gt_as_predictions(gt, 17)
    res = results_to_coco(list(preds), list(preds.values()), [np.ones(len(p)) for p in preds.values()])
    stats = evaluate_keypoints(COCO_ANN, res, COCO)
    assert list(stats) == list(COCO_NAMES)
    assert stats["AP"] == pytest.approx(1.0) and stats["AR"] == pytest.approx(1.0)
    assert "| AP |" in format_table(stats)


def test_metric_gathers_and_ignores_duplicate_samples() -> None:
    gt = json.loads(COCO_ANN.read_text())
    preds = _gt_as_predictions(gt, 17)
    metric = KeypointAP(COCO_ANN, COCO)
    ids = [im["id"] for im in gt["images"]]
    for i in ids + ids[:1]:  # a distributed sampler pads with repeated samples
        p = preds.get(i, np.zeros((0, 17, 3)))
        metric.update([i], [torch.as_tensor(p)], [torch.ones(len(p))])
    assert len(metric.predictions()) == sum(len(p) for p in preds.values())
    assert float(metric.compute()["AP"]) == pytest.approx(1.0)


def test_only_seen_images_count_and_misses_lower_recall() -> None:
    gt = json.loads(COCO_ANN.read_text())
    preds = _gt_as_predictions(gt, 17)
    first = sorted(preds)[0]
    metric = KeypointAP(gt, COCO)
    metric.update([first], [preds[first][:1]], [np.ones(1)])
    stats = metric.compute()
    n_first = len(preds[first])
    assert float(stats["AR"]) == pytest.approx(1.0 / n_first)


def test_max_dets_counts_more_people() -> None:
    gt = json.loads(COCO_ANN.read_text())
    preds = _gt_as_predictions(gt, 17)
    res = results_to_coco(list(preds), list(preds.values()), [np.ones(len(p)) for p in preds.values()])
    assert evaluate_keypoints(gt, res, COCO, max_dets=2)["AR"] < 1.0
    assert evaluate_keypoints(gt, res, COCO, max_dets=30)["AR"] == pytest.approx(1.0)


def test_custom_sigmas_change_oks() -> None:
    gt = json.loads(COCO_ANN.read_text())
    preds = _gt_as_predictions(gt, 17)
    shifted = {i: p + np.array([3.0, 0.0, 0.0]) for i, p in preds.items()}
    res = results_to_coco(list(shifted), list(shifted.values()), [np.ones(len(p)) for p in shifted.values()])
    tight = KeypointSpec(name="tight", names=COCO.names, sigmas=(0.005,) * 17)
    assert evaluate_keypoints(gt, res, tight)["AP"] < evaluate_keypoints(gt, res, COCO)["AP"]


def test_crowdpose_easy_medium_hard() -> None:
    gt = json.loads(CROWD_ANN.read_text())
    preds = _gt_as_predictions(gt, 14)
    res = results_to_coco(list(preds), list(preds.values()), [np.ones(len(p)) for p in preds.values()])
    stats = evaluate_keypoints(gt, res, CROWDPOSE)
    assert set(CROWD_NAMES) <= set(stats)
    # both sample images have crowdIndex in [0.2, 0.8): only the medium split has images
    assert stats["AP(M)"] == pytest.approx(stats["AP"]) and stats["AP(E)"] == -1.0 and stats["AP(H)"] == -1.0
    assert stats["AP"] == pytest.approx(1.0)
    # move one image to "easy" and one to "hard"
    gt2 = copy.deepcopy(gt)
    gt2["images"][0]["crowdIndex"], gt2["images"][1]["crowdIndex"] = 0.1, 0.85
    shifted = {i: p + np.array([25.0, 0.0, 0.0]) * (i == gt2["images"][1]["id"]) for i, p in preds.items()}
    res2 = results_to_coco(list(shifted), list(shifted.values()), [np.ones(len(p)) for p in shifted.values()])
    stats2 = evaluate_keypoints(gt2, res2, CROWDPOSE)
    assert stats2["AP(M)"] == -1.0
    assert stats2["AP(E)"] == pytest.approx(1.0) and 0.0 <= stats2["AP(H)"] < 1.0


def test_crowdpose_uses_bbox_area_for_oks() -> None:
    """CrowdPose API: OKS scale = bbox w*h*0.53 (the json's 'area' field, if any, is not used)."""
    gt = json.loads(CROWD_ANN.read_text())
    for a in gt["annotations"]:
        a["area"] = 1.0  # would make any offset fatal if it were used
    preds = _gt_as_predictions(gt, 14)
    shifted = {i: p + np.array([1.0, 0.0, 0.0]) for i, p in preds.items()}
    res = results_to_coco(list(shifted), list(shifted.values()), [np.ones(len(p)) for p in shifted.values()])
    assert evaluate_keypoints(gt, res, CROWDPOSE)["AP50"] == pytest.approx(1.0)


def _ddp_worker(rank: int, world: int, port: int, ann: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world, init_method=f"tcp://127.0.0.1:{port}")
    gt = json.loads(Path(ann).read_text())
    preds = _gt_as_predictions(gt, 17)
    ids = sorted(im["id"] for im in gt["images"])
    ids = ids + ids[:1]  # padded to an even count like DistributedSampler
    metric = KeypointAP(ann, COCO)
    for i in ids[rank::world]:
        p = preds.get(i, np.zeros((0, 17, 3)))
        metric.update([i], [p], [np.ones(len(p))])
    stats = metric.compute()
    if rank == 0:
        Path(out).write_text(json.dumps({k: float(v) for k, v in stats.items()}))
    torch.distributed.destroy_process_group()


def test_metric_across_two_ddp_processes(tmp_path: Path) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "stats.json"
    env = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        mp.spawn(_ddp_worker, args=(2, port, str(COCO_ANN), str(out)), nprocs=2, join=True)
    finally:
        if env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env
    stats = json.loads(out.read_text())
    assert stats["AP"] == pytest.approx(1.0) and stats["AR"] == pytest.approx(1.0)
