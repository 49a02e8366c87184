"""Keypoint AP/AR (COCO) and CrowdPose AP(easy/medium/hard), through pycocotools.

* COCO: pycocotools ``COCOeval`` (keypoints) with the layout's OKS sigmas; the summary is computed
  here for the configured ``max_dets`` (pycocotools' own summary hard-codes 20).
* CrowdPose (``crowd_split=True``, or automatic when the GT images carry ``crowdIndex``): the rules of
  the CrowdPose API (``crowdposetools``, used by the reference): the GT "area" used by OKS and by the
  area ranges is ``bbox_w * bbox_h * 0.53``; AP(E/M/H) re-run the evaluation on the images with
  ``crowdIndex < 0.2``, ``0.2 <= crowdIndex < 0.8`` and ``>= 0.8`` and average the whole precision
  array of the "all" area range (``-1`` when a split has no image, as the API reports).
* Area ranges (``area_ranges``): COCO's all/medium/large by default; a custom layout (animals,
  insects, ...) can give its own, e.g. ``{"all": [0, 1e10]}`` for a single range.

The ground truth is read by :func:`dekr.data.annotations.load_annotations`, as in the data pipeline:
files without ``area``, ``bbox``, ``iscrowd`` or ``num_keypoints`` are filled the same way, and bad
files fail with the annotation ids and the fix.

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

from dekr import keypoints as layouts
from dekr.data.annotations import build_coco, load_annotations
from dekr.keypoints import KeypointSpec

COCO_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
#: pycocotools' keypoint area ranges (px^2 of the GT "area"), the default of ``area_ranges``
COCO_AREA_RANGES = {"all": (0.0, 1e10), "medium": (32.0**2, 96.0**2), "large": (96.0**2, 1e10)}
_AREA_SUFFIX = {"small": "s", "medium": "m", "large": "l"}
CROWD_NAMES = ("AP(E)", "AP(M)", "AP(H)")
CROWD_SPLITS = (0.2, 0.8)


def load_coco(annotations: str | Path | Mapping | COCO, spec: KeypointSpec | None = None) -> COCO:
    """A pycocotools ``COCO`` from a path, a dict or an existing object, validated and normalised by
    :func:`dekr.data.annotations.load_annotations` (``spec`` checks the keypoint count)."""
    if isinstance(annotations, COCO):
        if getattr(annotations, "dekr_normalised", False):
            return annotations
        annotations = annotations.dataset
    dataset, _ = load_annotations(annotations, spec)
    return build_coco(dataset)


def _crowdpose_areas(coco: COCO) -> COCO:
    """Copy of the GT whose annotation areas follow the CrowdPose API (bbox w * h * 0.53)."""
    data = dict(coco.dataset)
    data["annotations"] = [{**a, "area": float(a["bbox"][2] * a["bbox"][3] * 0.53)} for a in data["annotations"]]
    return build_coco(data)


def results_to_coco(
    image_ids: Sequence[int],
    poses: Sequence[np.ndarray | torch.Tensor],
    scores: Sequence[np.ndarray | torch.Tensor],
    category_id: int = 1,
) -> list[dict]:
    """COCO keypoint results from per-image poses ``[P, K, 3]`` (original px) and scores ``[P]``."""
    out = []
    for img, p, s in zip(image_ids, poses, scores):
        p = np.asarray(p.cpu() if isinstance(p, torch.Tensor) else p, dtype=np.float64)
        s = np.asarray(s.cpu() if isinstance(s, torch.Tensor) else s, dtype=np.float64).reshape(-1)
        for person, score in zip(p, s):
            lo, hi = person[:, :2].min(0), person[:, :2].max(0)
            out.append(
                {
                    "image_id": int(img),
                    "category_id": category_id,
                    "keypoints": [float(v) for v in person.reshape(-1)],
                    "score": float(score),
                    "bbox": [float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])],
                }
            )
    return out


def coco_eval_for(
    annotations: str | Path | Mapping | COCO,
    predictions: list[dict],
    spec: KeypointSpec,
    max_dets: int = 20,
    crowd_split: bool = False,
    image_ids: Sequence[int] | None = None,
    area_ranges: Mapping[str, Sequence[float]] | None = None,
) -> COCOeval:
    """A configured (not yet run) ``COCOeval`` for keypoints with the layout's sigmas.

    ``area_ranges``: see :func:`evaluate_keypoints` (``None``: pycocotools' all/medium/large).
    """
    gt = load_coco(annotations, spec)
    if crowd_split:
        gt = _crowdpose_areas(gt)
    k = spec.num_keypoints
    wrong = [p for p in predictions if len(p["keypoints"]) != 3 * k]
    if wrong:
        raise ValueError(
            f"{len(wrong)} predictions have {len(wrong[0]['keypoints']) // 3} keypoints, the "
            f"'{spec.name}' layout has {k}; evaluate with the layout the model was trained on"
        )
    with contextlib.redirect_stdout(io.StringIO()):
        dt = (
            gt.loadRes(copy.deepcopy(predictions))
            if predictions
            else build_coco({"images": gt.dataset["images"], "annotations": [], "categories": gt.dataset["categories"]})
        )
        ev = COCOeval(gt, dt, "keypoints")
    ev.params.kpt_oks_sigmas = spec.sigmas_array
    ev.params.maxDets = [int(max_dets)]
    if area_ranges is not None:
        ranges = _area_ranges(area_ranges)
        ev.params.areaRng = [list(r) for r in ranges.values()]
        ev.params.areaRngLbl = list(ranges)
    if image_ids is not None:
        ev.params.imgIds = sorted({int(i) for i in image_ids})
    return ev


def area_ranges_for(value: str | Mapping[str, Sequence[float]] | None, spec: KeypointSpec) -> dict | None:
    """A data config's ``metric.area_ranges``: ``auto`` gives COCO's all/medium/large ranges (``None``)
    for the built-in human layouts (COCO, CrowdPose) and one ``all`` range for any other layout (the
    human-sized medium/large split means nothing for hands, animals or insects); a mapping is used as
    given; ``None`` means COCO's."""
    if value is None or (isinstance(value, str) and value == "auto" and spec in (layouts.COCO, layouts.CROWDPOSE)):
        return None
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(f"metric.area_ranges must be 'auto', null or a mapping name -> [lo, hi], got {value!r}")
        return {"all": list(COCO_AREA_RANGES["all"])}
    return {str(k): list(v) for k, v in value.items()}


def _area_ranges(area_ranges: Mapping[str, Sequence[float]]) -> dict[str, tuple[float, float]]:
    """Checked ranges with ``all`` first (added as ``[0, 1e10]`` when not given)."""
    ranges: dict[str, tuple[float, float]] = {}
    for name, rng in area_ranges.items():
        values = list(rng)
        if len(values) != 2 or not float(values[0]) < float(values[1]) or float(values[0]) < 0:
            raise ValueError(
                f"area range '{name}': {values} is not [lo, hi] with 0 <= lo < hi (px^2 of the GT "
                "area), e.g. {'all': [0, 1e10]}"
            )
        ranges[str(name)] = (float(values[0]), float(values[1]))
    return {"all": ranges.pop("all", COCO_AREA_RANGES["all"]), **ranges}


def _summary(ev: COCOeval) -> dict[str, float]:
    """AP/AR numbers from an accumulated ``COCOeval`` (one maxDets): AP, AP50, AP75 on the ``all``
    range, then AP of each further range; the same for AR (COCO: the names of :data:`COCO_NAMES`)."""
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

    others = [a for a in areas if a != "all"]
    stats = {"AP": ap(), "AP50": ap(0.5), "AP75": ap(0.75)}
    stats.update({"AP" + _AREA_SUFFIX.get(a, f"_{a}"): ap(area=a) for a in others})
    stats.update({"AR": ar(), "AR50": ar(0.5), "AR75": ar(0.75)})
    stats.update({"AR" + _AREA_SUFFIX.get(a, f"_{a}"): ar(area=a) for a in others})
    return stats


def evaluate_keypoints(
    annotations: str | Path | Mapping | COCO,
    predictions: list[dict],
    spec: KeypointSpec,
    max_dets: int = 20,
    crowd_split: bool | None = None,
    image_ids: Sequence[int] | None = None,
    area_ranges: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, float]:
    """Keypoint AP/AR of COCO-format predictions.

    Args:
        annotations: GT (path, dict or ``COCO``); files lacking ``area``, ``bbox``, ``iscrowd`` or
            ``num_keypoints`` are filled as in the data pipeline
            (:func:`dekr.data.annotations.load_annotations`).
        predictions: COCO results (``image_id``, ``category_id``, ``keypoints`` [3K], ``score``).
        spec: layout (OKS sigmas).
        max_dets: detections per image counted (COCO 20; the reference's crowd tests use 30).
        crowd_split: CrowdPose rules and AP(E/M/H); ``None``: when the GT images carry ``crowdIndex``.
        image_ids: evaluate only these images (default: all GT images).
        area_ranges: GT-area ranges (px^2), name -> ``[lo, hi]``. ``None``: COCO's
            :data:`COCO_AREA_RANGES` (all, medium ``[32^2, 96^2]``, large ``[96^2, 1e10]``). Give e.g.
            ``{"all": [0, 1e10]}`` for a layout whose sizes COCO's ranges do not fit (animals, insects);
            ``all`` is added as ``[0, 1e10]`` when missing. AP/AP50/AP75 and AR/AR50/AR75 are computed
            on ``all``; every other range adds ``AP<x>`` and ``AR<x>``, ``<x>`` being ``s``/``m``/``l``
            for ``small``/``medium``/``large`` and ``_<name>`` otherwise.

    Returns:
        Default ranges: ``AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl`` (+ ``AP(E), AP(M),
        AP(H)``); with ``{"all": ...}`` only: ``AP, AP50, AP75, AR, AR50, AR75`` (+ the crowd ones).
    """
    gt = load_coco(annotations, spec)
    if crowd_split is None:
        crowd_split = any("crowdIndex" in im for im in gt.dataset.get("images", []))
    ev = coco_eval_for(gt, predictions, spec, max_dets, crowd_split, image_ids, area_ranges)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
    stats = _summary(ev)
    if crowd_split:
        selected = set(ev.params.imgIds)
        index = {im["id"]: im.get("crowdIndex") for im in gt.dataset["images"] if im["id"] in selected}
        if any(v is None for v in index.values()):
            raise ValueError(
                "CrowdPose evaluation: some GT images have no 'crowdIndex'; "
                "use crowd_split=False for datasets without it"
            )
        lo, hi = CROWD_SPLITS
        splits = (
            [i for i, c in index.items() if c < lo],
            [i for i, c in index.items() if lo <= c < hi],
            [i for i, c in index.items() if c >= hi],
        )
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
    return (
        "| "
        + " | ".join(names)
        + " |\n|"
        + "---|" * len(names)
        + "\n| "
        + " | ".join(f"{stats[n]:.3f}" for n in names)
        + " |"
    )


class KeypointAP(Metric):
    """COCO/CrowdPose keypoint AP as a torchmetrics metric (DDP-safe).

    Args:
        annotations: GT annotations (path or dict); read at ``compute``.
        spec: keypoint layout (sigmas, K).
        max_dets: detections per image counted.
        crowd_split: see :func:`evaluate_keypoints`.
        area_ranges: GT-area ranges, name -> ``[lo, hi]``; ``None`` = COCO's all/medium/large (see
            :func:`evaluate_keypoints`, which also says which stats each range adds).

    The annotations go through :func:`dekr.data.annotations.load_annotations`, as in the data
    pipeline: files lacking ``area``, ``iscrowd``, ``bbox`` or ``num_keypoints`` are accepted.

    ``update(image_ids, poses, scores)`` takes per-image ``poses [P, K, 3]`` in original pixels and
    ``scores [P]``; every image passed counts in the evaluation, with or without detections.
    """

    full_state_update = False

    def __init__(
        self,
        annotations: str | Path | Mapping,
        spec: KeypointSpec,
        max_dets: int = 20,
        crowd_split: bool | None = None,
        area_ranges: Mapping[str, Sequence[float]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.annotations = annotations
        self.spec = spec
        self.max_dets = max_dets
        self.crowd_split = crowd_split
        self.area_ranges = None if area_ranges is None else _area_ranges(area_ranges)  # checked now, not at compute
        # rows: [image_id, sample key, score, x0, y0, s0, ...]; keys make DDP duplicates detectable
        self.add_state("rows", default=[], dist_reduce_fx="cat")
        self.add_state("images", default=[], dist_reduce_fx="cat")
        self._count = 0

    def _key(self) -> float:
        rank = (
            torch.distributed.get_rank()
            if torch.distributed.is_available() and torch.distributed.is_initialized()
            else 0
        )
        self._count += 1
        return float(rank * 1_000_000_000 + self._count)

    def update(
        self,
        image_ids: Sequence[int],
        poses: Sequence[torch.Tensor | np.ndarray],
        scores: Sequence[torch.Tensor | np.ndarray],
    ) -> None:
        width = 3 + 3 * self.spec.num_keypoints
        for img, p, s in zip(image_ids, poses, scores):
            p = torch.as_tensor(np.asarray(p.cpu() if isinstance(p, torch.Tensor) else p), dtype=torch.float64)
            s = torch.as_tensor(np.asarray(s.cpu() if isinstance(s, torch.Tensor) else s), dtype=torch.float64)
            key = self._key()
            n = p.shape[0]
            head = torch.tensor([[float(img), key]], dtype=torch.float64).expand(n, 2)
            rows = (
                torch.cat((head, s.reshape(n, 1), p.reshape(n, -1)), 1)
                if n
                else torch.zeros(0, width, dtype=torch.float64)
            )
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
        return results_to_coco(rows[:, 0].astype(np.int64), rows[:, None, 3:].reshape(-1, 1, k, 3), rows[:, 2:3])

    def evaluated_images(self) -> list[int]:
        return sorted({int(i) for i in _cat(self.images, 2)[:, 0].tolist()})

    def compute(self) -> dict[str, float]:
        stats = evaluate_keypoints(
            self.annotations,
            self.predictions(),
            self.spec,
            self.max_dets,
            self.crowd_split,
            image_ids=self.evaluated_images(),
            area_ranges=self.area_ranges,
        )
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


__all__ = [
    "COCO_AREA_RANGES",
    "COCO_NAMES",
    "CROWD_NAMES",
    "KeypointAP",
    "coco_eval_for",
    "evaluate_keypoints",
    "format_table",
    "load_coco",
    "results_to_coco",
]
