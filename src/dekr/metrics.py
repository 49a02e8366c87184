"""Keypoint AP/AR (COCO) and CrowdPose AP(easy/medium/hard), through pycocotools.

* COCO: pycocotools ``COCOeval`` (keypoints) with the layout's OKS sigmas; the summary is computed
  here for the configured ``max_dets`` (pycocotools' own summary hard-codes 20).
* CrowdPose (``crowd_split=True``, or automatic when the GT images carry ``crowdIndex``): the rules of
  the CrowdPose API (``crowdposetools``, used by the reference): the GT "area" used by OKS and by the
  area ranges is ``bbox_w * bbox_h * 0.53``; AP(E/M/H) re-run the evaluation on the images with
  ``crowdIndex < 0.2``, ``0.2 <= crowdIndex < 0.8`` and ``>= 0.8`` and average the whole precision
  array of the "all" area range (``-1`` when a split has no image, as the API reports).

:class:`KeypointAP` is a ``torchmetrics.Metric``: per-image predictions are list states gathered
across DDP ranks; samples duplicated by a distributed sampler are counted once.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchmetrics import Metric

from dekr.keypoints import KeypointSpec

COCO_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
CROWD_NAMES = ("AP(E)", "AP(M)", "AP(H)")
CROWD_SPLITS = (0.2, 0.8)


def load_coco(annotations: str | Path | Mapping | COCO) -> COCO:
    """A pycocotools ``COCO`` from a path, a dict or an existing object (quietly)."""
    if isinstance(annotations, COCO):
        return annotations
    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(annotations, Mapping):
            coco = COCO()
            coco.dataset = copy.deepcopy(dict(annotations))
            coco.createIndex()
            return coco
        path = Path(annotations)
        if not path.is_file():
            raise FileNotFoundError(f"annotation file {path} not found; check the data config's paths")
        return COCO(str(path))


def _crowdpose_areas(coco: COCO) -> COCO:
    """Copy of the GT whose annotation areas follow the CrowdPose API (bbox w * h * 0.53)."""
    data = copy.deepcopy(coco.dataset)
    for ann in data["annotations"]:
        ann["area"] = float(ann["bbox"][2] * ann["bbox"][3] * 0.53)
    return load_coco(data)


def results_to_coco(
    image_ids: Sequence[int], poses: Sequence[np.ndarray | torch.Tensor],
    scores: Sequence[np.ndarray | torch.Tensor], category_id: int = 1,
) -> list[dict]:
    """COCO keypoint results from per-image poses ``[P, K, 3]`` (original px) and scores ``[P]``."""
    out = []
    for img, p, s in zip(image_ids, poses, scores):
        p = np.asarray(p.cpu() if isinstance(p, torch.Tensor) else p, dtype=np.float64)
        s = np.asarray(s.cpu() if isinstance(s, torch.Tensor) else s, dtype=np.float64).reshape(-1)
        for person, score in zip(p, s):
            lo, hi = person[:, :2].min(0), person[:, :2].max(0)
            out.append({"image_id": int(img), "category_id": category_id,
                        "keypoints": [float(v) for v in person.reshape(-1)],
                        "score": float(score), "bbox": [float(lo[0]), float(lo[1]),
                                                        float(hi[0] - lo[0]), float(hi[1] - lo[1])]})
    return out


def coco_eval_for(
    annotations: str | Path | Mapping | COCO, predictions: list[dict], spec: KeypointSpec,
    max_dets: int = 20, crowd_split: bool = False, image_ids: Sequence[int] | None = None,
) -> COCOeval:
    """A configured (not yet run) ``COCOeval`` for keypoints with the layout's sigmas."""
    gt = load_coco(annotations)
    if crowd_split:
        gt = _crowdpose_areas(gt)
    k = spec.num_keypoints
    for pred in predictions[:1]:
        if len(pred["keypoints"]) != 3 * k:
            raise ValueError(f"predictions have {len(pred['keypoints']) // 3} keypoints, the '{spec.name}' "
                             f"layout has {k}; evaluate with the layout the model was trained on")
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(copy.deepcopy(predictions)) if predictions else load_coco(
            {"images": gt.dataset["images"], "annotations": [], "categories": gt.dataset["categories"]})
        ev = COCOeval(gt, dt, "keypoints")
    ev.params.kpt_oks_sigmas = spec.sigmas_array
    ev.params.maxDets = [int(max_dets)]
    if image_ids is not None:
        ev.params.imgIds = sorted({int(i) for i in image_ids})
    return ev


def _summary(ev: COCOeval) -> dict[str, float]:
    """AP/AR numbers from an accumulated ``COCOeval`` (area ranges all/medium/large, one maxDets)."""
    prec, rec = ev.eval["precision"], ev.eval["recall"]  # [T, R, K, A, M], [T, K, A, M]
    thr = ev.params.iouThrs
    areas = list(ev.params.areaRngLbl)

    def mean(x: np.ndarray) -> float:
        x = x[x > -1]
        return float(x.mean()) if x.size else -1.0

    def ap(t: float | None = None, area: str = "all") -> float:
        s = prec[:, :, :, areas.index(area), 0]
        return mean(s if t is None else s[np.isclose(thr, t)])

    def ar(t: float | None = None, area: str = "all") -> float:
        s = rec[:, :, areas.index(area), 0]
        return mean(s if t is None else s[np.isclose(thr, t)])

    values = (ap(), ap(0.5), ap(0.75), ap(area="medium"), ap(area="large"),
              ar(), ar(0.5), ar(0.75), ar(area="medium"), ar(area="large"))
    return dict(zip(COCO_NAMES, values))


def evaluate_keypoints(
    annotations: str | Path | Mapping | COCO, predictions: list[dict], spec: KeypointSpec,
    max_dets: int = 20, crowd_split: bool | None = None, image_ids: Sequence[int] | None = None,
) -> dict[str, float]:
    """Keypoint AP/AR of COCO-format predictions.

    Args:
        annotations: GT (path, dict or ``COCO``).
        predictions: COCO results (``image_id``, ``category_id``, ``keypoints`` [3K], ``score``).
        spec: layout (OKS sigmas).
        max_dets: detections per image counted (COCO 20; the reference's crowd tests use 30).
        crowd_split: CrowdPose rules and AP(E/M/H); ``None``: when the GT images carry ``crowdIndex``.
        image_ids: evaluate only these images (default: all GT images).

    Returns:
        ``AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl`` (+ ``AP(E), AP(M), AP(H)``).
    """
    gt = load_coco(annotations)
    if crowd_split is None:
        crowd_split = any("crowdIndex" in im for im in gt.dataset.get("images", []))
    ev = coco_eval_for(gt, predictions, spec, max_dets, crowd_split, image_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
    stats = _summary(ev)
    if crowd_split:
        selected = set(ev.params.imgIds)
        index = {im["id"]: im.get("crowdIndex") for im in gt.dataset["images"] if im["id"] in selected}
        if any(v is None for v in index.values()):
            raise ValueError("CrowdPose evaluation: some GT images have no 'crowdIndex'; "
                             "use crowd_split=False for datasets without it")
        lo, hi = CROWD_SPLITS
        splits = ([i for i, c in index.items() if c < lo], [i for i, c in index.items() if lo <= c < hi],
                  [i for i, c in index.items() if c >= hi])
        for name, ids in zip(CROWD_NAMES, splits):
            if not ids:
                stats[name] = -1.0
                continue
            ev.params.imgIds = sorted(ids)
            with contextlib.redirect_stdout(io.StringIO()):
                ev.evaluate()
                ev.accumulate()
            stats[name] = float(np.mean(ev.eval["precision"][:, :, :, 0, :]))
    return stats


def format_table(stats: Mapping[str, float]) -> str:
    """Two-line markdown table of metric names and values (3 decimals)."""
    names = list(stats)
    return ("| " + " | ".join(names) + " |\n|" + "---|" * len(names) + "\n| "
            + " | ".join(f"{stats[n]:.3f}" for n in names) + " |")


class KeypointAP(Metric):
    """COCO/CrowdPose keypoint AP as a torchmetrics metric (DDP-safe).

    Args:
        annotations: GT annotations (path or dict); read at ``compute``.
        spec: keypoint layout (sigmas, K).
        max_dets: detections per image counted.
        crowd_split: see :func:`evaluate_keypoints`.

    ``update(image_ids, poses, scores)`` takes per-image ``poses [P, K, 3]`` in original pixels and
    ``scores [P]``; every image passed counts in the evaluation, with or without detections.
    """

    full_state_update = False

    def __init__(self, annotations: str | Path | Mapping, spec: KeypointSpec, max_dets: int = 20,
                 crowd_split: bool | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.annotations = annotations
        self.spec = spec
        self.max_dets = max_dets
        self.crowd_split = crowd_split
        # rows: [image_id, sample key, score, x0, y0, s0, ...]; keys make DDP duplicates detectable
        self.add_state("rows", default=[], dist_reduce_fx="cat")
        self.add_state("images", default=[], dist_reduce_fx="cat")
        self._count = 0

    def _key(self) -> float:
        rank = torch.distributed.get_rank() if torch.distributed.is_available() and \
            torch.distributed.is_initialized() else 0
        self._count += 1
        return float(rank * 1_000_000_000 + self._count)

    def update(self, image_ids: Sequence[int], poses: Sequence[torch.Tensor | np.ndarray],
               scores: Sequence[torch.Tensor | np.ndarray]) -> None:
        width = 3 + 3 * self.spec.num_keypoints
        for img, p, s in zip(image_ids, poses, scores):
            p = torch.as_tensor(np.asarray(p.cpu() if isinstance(p, torch.Tensor) else p), dtype=torch.float64)
            s = torch.as_tensor(np.asarray(s.cpu() if isinstance(s, torch.Tensor) else s), dtype=torch.float64)
            key = self._key()
            n = p.shape[0]
            head = torch.tensor([[float(img), key]], dtype=torch.float64).expand(n, 2)
            rows = torch.cat((head, s.reshape(n, 1), p.reshape(n, -1)), 1) if n else torch.zeros(0, width,
                                                                                              dtype=torch.float64)
            self.rows.append(rows.to(self.device))
            self.images.append(torch.tensor([[float(img), key]], dtype=torch.float64, device=self.device))

    def predictions(self) -> list[dict]:
        """Gathered predictions as COCO results (one copy per image)."""
        rows = _cat(self.rows, 3 + 3 * self.spec.num_keypoints)
        images = _cat(self.images, 2)
        first_key: dict[int, float] = {}
        for img, key in images.tolist():
            first_key[int(img)] = min(key, first_key.get(int(img), np.inf))
        rows = rows.numpy()
        keep = np.array([first_key.get(int(r[0])) == r[1] for r in rows], dtype=bool)
        rows = rows[keep] if rows.size else rows
        k = self.spec.num_keypoints
        return results_to_coco(rows[:, 0].astype(np.int64), rows[:, None, 3:].reshape(-1, 1, k, 3),
                               rows[:, 2:3])

    def evaluated_images(self) -> list[int]:
        return sorted({int(i) for i in _cat(self.images, 2)[:, 0].tolist()})

    def compute(self) -> dict[str, float]:
        stats = evaluate_keypoints(self.annotations, self.predictions(), self.spec, self.max_dets,
                                   self.crowd_split, image_ids=self.evaluated_images())
        return {k: torch.tensor(v) for k, v in stats.items()}


def _cat(items: list[torch.Tensor] | torch.Tensor, width: int) -> torch.Tensor:
    if isinstance(items, torch.Tensor):
        return items.detach().cpu().reshape(-1, width)
    if not items:
        return torch.zeros(0, width, dtype=torch.float64)
    return torch.cat([t.detach().cpu().reshape(-1, width) for t in items])


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON (creating parent folders)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


__all__ = ["COCO_NAMES", "CROWD_NAMES", "KeypointAP", "coco_eval_for", "evaluate_keypoints",
           "format_table", "load_coco", "results_to_coco"]
