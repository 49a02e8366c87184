"""Read, validate and normalise a COCO-format keypoint annotation file.

:func:`load_annotations` is the one reader of ground truth: the data pipeline
(:func:`dekr.data.coco.load_coco`) and the metric (:func:`dekr.metrics.load_coco`) both go through it,
so they always see the same annotations.

Normalisation (fields many exporters leave out; what was filled is logged once per file):

* ``keypoints`` missing or empty: ``3*K`` zeros (unlabelled);
* ``num_keypoints``: counted from the keypoints (``v > 0``);
* ``bbox``: the extent of the labelled keypoints (``[0, 0, 0, 0]`` without any);
* ``area``: ``bbox`` ``w * h``;
* ``iscrowd``: 0;
* ``id``: numbered after the largest id in the file; ``category_id``: the file's only category;
  ``categories`` missing: one ``person`` category with the layout's keypoint names.

Validation covers every annotation and raises :class:`AnnotationError` (a ``ValueError``) naming the
file, the offending annotation ids (at most :data:`MAX_LISTED`, plus the total) and the fix. The work
is one Python pass over the annotations; keypoint arrays are checked with numpy, all at once.
"""

from __future__ import annotations

import array
import contextlib
import gc
import io
import itertools
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from dekr.keypoints import KeypointSpec

log = logging.getLogger(__name__)

#: offending annotation ids named in an error message (the total is always given)
MAX_LISTED = 5

_REPORTED: set[str] = set()  # log lines already written in this process (one per file)


class AnnotationError(ValueError):
    """An annotation file that cannot be used; the message names the file, the ids and the fix."""


@dataclass
class AnnotationReport:
    """What :func:`load_annotations` found and filled in one annotation source.

    Attributes:
        source: the file's path (or a name given for a dict).
        num_images, num_annotations: counts in the file.
        num_people: annotations that are not crowds or have labelled keypoints (the loader's people).
        num_labelled: labelled keypoints (``v > 0``) over all annotations.
        filled: field -> ``(count, how)`` for every field that some annotations lacked.
        num_keypoints_mismatch: ids whose ``num_keypoints`` disagrees with their keypoints.
        odd_visibility: ids with a visibility flag other than 0, 1 or 2.
        zero_area: ids of people with labelled keypoints but area 0 (they get no OKS match).
    """

    source: str
    num_images: int = 0
    num_annotations: int = 0
    num_people: int = 0
    num_labelled: int = 0
    filled: dict[str, tuple[int, str]] = field(default_factory=dict)
    num_keypoints_mismatch: list[int] = field(default_factory=list)
    odd_visibility: list[int] = field(default_factory=list)
    zero_area: list[int] = field(default_factory=list)

    def summary(self) -> str:
        """One line: what was filled, e.g. ``val.json: filled area for 14 of 14 annotations (from bbox)``."""
        if not self.filled:
            return f"{Path(self.source).name}: nothing to fill ({self.num_annotations} annotations)"
        parts = [
            f"{name} for {n}" + (f" of {self.num_annotations} annotations" if i == 0 else "") + f" ({how})"
            for i, (name, (n, how)) in enumerate(self.filled.items())
        ]
        return f"{Path(self.source).name}: filled " + ", ".join(parts)


def load_annotations(
    source: str | os.PathLike | Mapping,
    spec: KeypointSpec | None = None,
    *,
    name: str | None = None,
    need_file_names: bool = False,
    report_fills: bool = True,
) -> tuple[dict[str, Any], AnnotationReport]:
    """Read a COCO-format keypoint file (or an already-loaded dict), validate and normalise it.

    Args:
        source: path of the JSON file, or its content as a mapping (never modified).
        spec: keypoint layout; ``None`` takes K from the categories (or the annotations).
        name: what to call a mapping in messages (default ``"<annotations>"``).
        need_file_names: require ``file_name`` on every image (the data pipeline reads them).
        report_fills: log :meth:`AnnotationReport.summary` (INFO, once per file and process) when
            something was filled.

    Returns:
        The normalised dataset (a new dict; images, annotations and categories are new lists of
        shallow copies, so pycocotools' in-place marks do not reach ``source``) and the report.

    Raises:
        FileNotFoundError: ``source`` is a path that does not exist.
        AnnotationError: the file cannot be used (see the module docstring).
    """
    if isinstance(source, Mapping):
        src = name or "<annotations>"
        data: Any = source
    else:
        path = Path(source)
        src = str(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"annotation file not found: {path}. Download the dataset (see conf/data/*.yaml for the "
                "expected layout) or set data.root / data.*_ann to where it is."
            )
        try:
            with _no_gc(), open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise AnnotationError(
                f"{src}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); the file is "
                "truncated or damaged: download or export it again"
            ) from None
        except UnicodeDecodeError as e:
            raise AnnotationError(f"{src}: not a UTF-8 JSON text ({e}); is it the annotation file?") from None
    if not isinstance(data, Mapping):
        raise AnnotationError(
            f"{src}: the top level is a JSON {type(data).__name__}, expected an object with "
            "'images', 'annotations' and 'categories' (COCO keypoint format)"
        )
    with _no_gc():  # hundreds of thousands of new dicts: no cycles, but gc would rescan them all
        return _normalise(data, src, spec, need_file_names, report_fills)


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _normalise(
    data: Any, src: str, spec: KeypointSpec | None, need_file_names: bool, report_fills: bool
) -> tuple[dict[str, Any], AnnotationReport]:
    images = _list_of_dicts(data, "images", src)
    anns = _list_of_dicts(data, "annotations", src)
    report = AnnotationReport(src, num_images=len(images), num_annotations=len(anns))

    image_ids = _image_ids(images, src, need_file_names)
    categories, k, cat_fill = _categories(data, anns, spec, src)
    out_anns = [dict(a) for a in anns]
    filled: dict[str, tuple[int, str]] = {}
    _fill_ids(out_anns, src, filled)
    _check_image_and_category_ids(out_anns, image_ids, categories, src, filled)

    kpts = _keypoints(out_anns, k, spec, src, filled)  # [N, K, 3] float64
    vis = kpts[..., 2]
    labelled = vis > 0
    counted = labelled.sum(1)
    report.num_labelled = int(counted.sum())
    ids = np.fromiter((a["id"] for a in out_anns), dtype=np.int64, count=len(out_anns))
    report.odd_visibility = ids[~np.isin(vis, (0, 1, 2)).all(1)].tolist() if len(ids) else []

    missing = [i for i, a in enumerate(out_anns) if "num_keypoints" not in a]
    for i in missing:
        out_anns[i]["num_keypoints"] = int(counted[i])
    if missing:
        filled["num_keypoints"] = (len(missing), "counted from keypoints")
    stored = np.fromiter(
        (_number(a["num_keypoints"], a, "num_keypoints", src) for a in out_anns), dtype=np.float64, count=len(out_anns)
    )
    report.num_keypoints_mismatch = ids[stored != counted].tolist()

    _fill_bbox(out_anns, kpts, labelled, src, filled)
    areas = _fill_area(out_anns, src, filled)
    crowd = _fill_iscrowd(out_anns, src, filled)
    people = (crowd == 0) | (counted > 0)
    report.num_people = int(people.sum())
    report.zero_area = ids[people & (counted > 0) & (areas <= 0)].tolist()
    if cat_fill:
        filled["categories"] = (1, cat_fill)
    report.filled = filled

    out = dict(data)
    out["images"] = [dict(im) for im in images]
    out["annotations"] = out_anns
    out["categories"] = categories
    if report_fills and filled:
        line = report.summary()
        if line not in _REPORTED:
            _REPORTED.add(line)
            log.info(line)
    return out, report


def build_coco(dataset: dict[str, Any]) -> COCO:
    """A pycocotools ``COCO`` indexing ``dataset`` (a :func:`load_annotations` result), quietly."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()), _no_gc():
        coco.createIndex()
    coco.dekr_normalised = True  # marks objects whose annotations went through load_annotations
    return coco


# ----------------------------------------------------------------------------- helpers


def _ids_text(ids: Sequence[Any], total: int | None = None) -> str:
    total = len(ids) if total is None else total
    shown = ", ".join(str(i) for i in list(ids)[:MAX_LISTED])
    return shown + (f" ... ({total} in all)" if total > MAX_LISTED else "")


def _list_of_dicts(data: Mapping, key: str, src: str) -> list[dict]:
    if key not in data:
        raise AnnotationError(
            f"{src}: no '{key}' list at the top level (keys: {sorted(data)[:8]}); is it a COCO-format keypoint file?"
        )
    items = data[key]
    if not isinstance(items, list):
        raise AnnotationError(f"{src}: '{key}' is a JSON {type(items).__name__}, expected a list")
    bad = [i for i, item in enumerate(items) if not isinstance(item, Mapping)]
    if bad:
        raise AnnotationError(
            f"{src}: {len(bad)} entries of '{key}' are not JSON objects (positions {_ids_text(bad)}); fix the file"
        )
    return items


def _image_ids(images: list[dict], src: str, need_file_names: bool) -> set:
    bad = [i for i, im in enumerate(images) if not isinstance(im.get("id"), int | str)]
    if bad:
        raise AnnotationError(
            f"{src}: {len(bad)} images have no 'id' (positions {_ids_text(bad)}); give every image a unique id"
        )
    counts = Counter(im["id"] for im in images)
    dups = [i for i, n in counts.items() if n > 1]
    if dups:
        raise AnnotationError(
            f"{src}: {len(dups)} image ids are used more than once ({_ids_text(dups)}); image ids must be unique"
        )
    if need_file_names:
        bad = [im["id"] for im in images if not isinstance(im.get("file_name"), str) or not im["file_name"]]
        if bad:
            raise AnnotationError(
                f"{src}: {len(bad)} images have no 'file_name' (image ids {_ids_text(bad)}); "
                "give each image its file name relative to the image folder"
            )
    return set(counts)


def _categories(data: Mapping, anns: list[dict], spec: KeypointSpec | None, src: str) -> tuple[list, int, str]:
    """Categories (filled when missing), K, and how they were filled ('' when not)."""
    fill = ""
    if "categories" in data:
        categories = data["categories"]
        if not isinstance(categories, list) or not all(isinstance(c, Mapping) and "id" in c for c in categories):
            raise AnnotationError(f"{src}: 'categories' must be a list of objects with an 'id'")
        categories = [dict(c) for c in categories]
    else:
        cat_ids = sorted({a["category_id"] for a in anns if "category_id" in a}) or [1]
        names = list(spec.names) if spec is not None else []
        categories = [{"id": c, "name": "person", "supercategory": "person", "keypoints": names} for c in cat_ids]
        fill = f"{len(categories)} category from the annotations' category_id"
    if spec is not None:
        k = spec.num_keypoints
        for cat in categories:
            names = cat.get("keypoints")
            if names and len(names) != k:
                raise AnnotationError(
                    f"{src}: category '{cat.get('name')}' declares {len(names)} keypoints but the keypoint spec "
                    f"'{spec.name}' has {k}; set data.keypoints to match the dataset"
                )
        return categories, k, fill
    declared = {len(c["keypoints"]) for c in categories if c.get("keypoints")}
    if len(declared) == 1:
        return categories, declared.pop(), fill
    lengths = Counter(len(a["keypoints"]) for a in anns if isinstance(a.get("keypoints"), list) and a["keypoints"])
    if not lengths:
        raise AnnotationError(
            f"{src}: no keypoints in any annotation and no keypoint names in the categories; is it a keypoint file?"
        )
    return categories, lengths.most_common(1)[0][0] // 3, fill


def _fill_ids(anns: list[dict], src: str, filled: dict) -> None:
    missing = [i for i, a in enumerate(anns) if "id" not in a]
    present = [a["id"] for a in anns if "id" in a]
    bad = [i for i in present if not isinstance(i, int) or isinstance(i, bool)]
    if bad:
        raise AnnotationError(f"{src}: annotation ids must be integers; found {_ids_text([repr(b) for b in bad])}")
    counts = Counter(present)
    dups = [i for i, n in counts.items() if n > 1]
    if dups:
        raise AnnotationError(
            f"{src}: {len(dups)} annotation ids are used more than once ({_ids_text(dups)}); "
            "pycocotools would silently keep only one of each: make them unique"
        )
    if missing:
        start = max(present, default=0) + 1
        for n, i in enumerate(missing):
            anns[i]["id"] = start + n
        filled["id"] = (len(missing), f"numbered from {start}")


def _check_image_and_category_ids(anns: list[dict], image_ids: set, categories: list, src: str, filled: dict) -> None:
    orphans = [a["id"] for a in anns if a.get("image_id") not in image_ids]
    if orphans:
        raise AnnotationError(
            f"{src}: {len(orphans)} annotations refer to an image_id that is not in 'images' (annotation ids "
            f"{_ids_text(orphans)}); add those images or drop those annotations"
        )
    cat_ids = {c["id"] for c in categories}
    missing = [i for i, a in enumerate(anns) if "category_id" not in a]
    if missing:
        if len(cat_ids) != 1:
            raise AnnotationError(
                f"{src}: {len(missing)} annotations have no category_id (ids "
                f"{_ids_text([anns[i]['id'] for i in missing])}) and the file has {len(cat_ids)} categories; "
                "give each annotation its category_id"
            )
        (only,) = cat_ids
        for i in missing:
            anns[i]["category_id"] = only
        filled["category_id"] = (len(missing), f"as {only}")
    stray = [a["id"] for a in anns if a["category_id"] not in cat_ids]
    if stray:
        raise AnnotationError(
            f"{src}: {len(stray)} annotations have a category_id that is not in 'categories' (annotation ids "
            f"{_ids_text(stray)}); add the category or fix those annotations"
        )


def _keypoints(anns: list[dict], k: int, spec: KeypointSpec | None, src: str, filled: dict) -> np.ndarray:
    """All keypoints as ``[N, K, 3]`` float64, after checking length and values of every annotation."""
    n = 3 * k
    wrong, missing = [], []
    for i, a in enumerate(anns):
        kp = a.get("keypoints")
        if kp is None or (isinstance(kp, list) and not kp):
            missing.append(i)
        elif not isinstance(kp, list) or len(kp) != n:
            wrong.append(i)
    if wrong:
        layout = f"the '{spec.name}' layout" if spec is not None else "the categories' keypoint names"
        found = [f"id {anns[i]['id']} has {_len(anns[i]['keypoints'])}" for i in wrong[:MAX_LISTED]]
        raise AnnotationError(
            f"{src}: {len(wrong)} annotations have a keypoint list of the wrong length: expected 3*K = {n} "
            f"numbers (x, y, v for each of the {k} keypoints of {layout}); {'; '.join(found)}"
            + (f" ... ({len(wrong)} in all)" if len(wrong) > MAX_LISTED else "")
            + ". Set data.keypoints to the dataset's layout, or fix those annotations"
        )
    zeros = [0] * n
    for i in missing:
        anns[i]["keypoints"] = list(zeros)
    if missing:
        filled["keypoints"] = (len(missing), "as unlabelled")
    try:
        flat = _floats(itertools.chain.from_iterable(a["keypoints"] for a in anns))
    except TypeError:
        bad = [a["id"] for a in anns if not all(_is_number(v) for v in a["keypoints"])]
        raise AnnotationError(
            f"{src}: {len(bad)} annotations have keypoint values that are not numbers (null, text; ids "
            f"{_ids_text(bad)}); fix the file or drop those annotations"
        ) from None
    kpts = flat.reshape(len(anns), k, 3)
    finite = np.isfinite(kpts)
    if not finite.all():
        rows = np.flatnonzero(~finite.all(axis=(1, 2)))
        first = rows[0]
        joint = int(np.flatnonzero(~finite[first].all(1))[0])
        joint_name = f" '{spec.names[joint]}'" if spec is not None else ""
        raise AnnotationError(
            f"{src}: {len(rows)} annotations have non-finite keypoint values (NaN/inf): ids "
            f"{_ids_text([anns[r]['id'] for r in rows])} (e.g. id {anns[first]['id']}, keypoint {joint}{joint_name}: "
            f"{kpts[first, joint].tolist()}); fix the file or drop those annotations"
        )
    return kpts


def _fill_bbox(anns: list[dict], kpts: np.ndarray, labelled: np.ndarray, src: str, filled: dict) -> None:
    has = [i for i, a in enumerate(anns) if "bbox" in a]
    shaped = [i for i in has if isinstance(anns[i]["bbox"], list) and len(anns[i]["bbox"]) == 4]
    bad = [anns[i]["id"] for i in sorted(set(has) - set(shaped))]
    try:
        boxes = _floats(itertools.chain.from_iterable(anns[i]["bbox"] for i in shaped)).reshape(-1, 4)
        ok = np.isfinite(boxes).all(1) & (boxes[:, 2] >= 0) & (boxes[:, 3] >= 0)
        bad += [anns[shaped[j]]["id"] for j in np.flatnonzero(~ok)]
    except TypeError:
        bad += [anns[i]["id"] for i in shaped if not _is_box(anns[i]["bbox"])]
    if bad:
        raise AnnotationError(
            f"{src}: {len(bad)} annotations have a 'bbox' that is not [x, y, w, h] (4 finite numbers, w and h "
            f">= 0): ids {_ids_text(bad)}; fix those boxes or remove the field (it is then filled from the keypoints)"
        )
    if len(has) == len(anns):
        return
    missing = np.setdiff1d(np.arange(len(anns)), np.asarray(has, dtype=np.int64))
    lab = labelled[missing]
    xy = kpts[missing, :, :2]
    lo = np.where(lab[..., None], xy, np.inf).min(1)
    hi = np.where(lab[..., None], xy, -np.inf).max(1)
    none = ~lab.any(1)
    lo[none], hi[none] = 0.0, 0.0
    boxes = np.concatenate((lo, hi - lo), 1).tolist()
    for i, box in zip(missing.tolist(), boxes):
        anns[i]["bbox"] = box
    how = "from the labelled keypoints' extent"
    if none.any():
        how += f", [0, 0, 0, 0] for {int(none.sum())} without any"
    filled["bbox"] = (len(missing), how)


def _fill_area(anns: list[dict], src: str, filled: dict) -> np.ndarray:
    missing = [i for i, a in enumerate(anns) if "area" not in a]
    for i in missing:
        box = anns[i]["bbox"]
        anns[i]["area"] = float(box[2]) * float(box[3])
    if missing:
        filled["area"] = (len(missing), "from bbox w*h")
    areas = np.fromiter((_number(a["area"], a, "area", src) for a in anns), dtype=np.float64, count=len(anns))
    bad = ~np.isfinite(areas) | (areas < 0)
    if bad.any():
        ids = [anns[i]["id"] for i in np.flatnonzero(bad)]
        raise AnnotationError(
            f"{src}: {len(ids)} annotations have a negative or non-finite 'area': ids "
            f"{_ids_text(ids)}; fix them or remove the field (it is then bbox w*h)"
        )
    return areas


def _fill_iscrowd(anns: list[dict], src: str, filled: dict) -> np.ndarray:
    missing = [i for i, a in enumerate(anns) if "iscrowd" not in a]
    for i in missing:
        anns[i]["iscrowd"] = 0
    if missing:
        filled["iscrowd"] = (len(missing), "as 0")
    crowd = [a["iscrowd"] for a in anns]
    bad = [a["id"] for a, c in zip(anns, crowd) if c not in (0, 1)]
    if bad:
        raise AnnotationError(f"{src}: 'iscrowd' must be 0 or 1; annotation ids {_ids_text(bad)} have other values")
    return np.asarray(crowd, dtype=np.int64).reshape(-1)


def _floats(values: Iterator[Any]) -> np.ndarray:
    """float64 array of numbers; ``TypeError`` on anything else (``None``, text), unlike ``np.fromiter``."""
    return np.frombuffer(array.array("d", values), dtype=np.float64)


def _number(value: Any, ann: Mapping, key: str, src: str) -> float:
    if not _is_number(value):
        raise AnnotationError(
            f"{src}: annotation {ann.get('id')}: '{key}' is {value!r}, expected a number; fix it "
            "or remove the field to have it filled"
        )
    return float(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_box(box: Any) -> bool:
    return (
        isinstance(box, list)
        and len(box) == 4
        and all(_is_number(v) and np.isfinite(v) for v in box)
        and box[2] >= 0
        and box[3] >= 0
    )


def _len(value: Any) -> str:
    return f"{len(value)} numbers" if isinstance(value, list) else f"a {type(value).__name__}"


__all__ = ["MAX_LISTED", "AnnotationError", "AnnotationReport", "build_coco", "load_annotations"]
