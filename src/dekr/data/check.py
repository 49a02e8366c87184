"""Check a keypoint dataset before training on it: ``python -m dekr.data.check``.

    python -m dekr.data.check data=coco data.root=/path/to/coco      # any data config + overrides
    python -m dekr.data.check --ann val.json --images img/ --layout coco

Reads the data config (``conf/``, composed with Hydra as ``train.py`` does, taking its ``data``
node), then prints one table for the layout and one per split (train, val, test): counts of images,
people and labelled keypoints; fields missing from the annotations and how the loader fills them
(:func:`dekr.data.annotations.load_annotations`); unreadable or missing image files; keypoints
outside their image; the categories' keypoint names against the layout; a skeleton or flip pairs that
look 1-based; left/right names not covered by flip pairs; OKS sigmas. Exits 1 when there are errors
(training or evaluation would fail or be wrong), 0 when there are only warnings.

Image files are checked by reading their header (PIL: size and format); ``--decode`` decodes
them fully (cv2, as the loader), which is slower but also catches truncated pixel data.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dekr.data.annotations import MAX_LISTED, AnnotationError, AnnotationReport, load_annotations
from dekr.keypoints import KeypointSpec, build_keypoint_spec

OK, WARN, ERROR = "ok", "WARN", "ERROR"
_SIDES = (("left_", "right_"), ("l_", "r_"))


@dataclass
class Table:
    """Rows ``(check, status, detail)`` under a title."""

    title: str
    rows: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, check: str, status: str, detail: str) -> None:
        self.rows.append((check, status, detail))

    def count(self, status: str) -> int:
        return sum(r[1] == status for r in self.rows)

    def render(self) -> str:
        w = max([len("check")] + [len(r[0]) for r in self.rows])
        lines = [f"== {self.title}", f"  {'check':<{w}}  status  detail"]
        lines += [f"  {c:<{w}}  {s:<6}  {d}" for c, s, d in self.rows]
        return "\n".join(lines)


def _ids(ids: Sequence[Any]) -> str:
    shown = ", ".join(str(i) for i in list(ids)[:MAX_LISTED])
    return shown + (f" ... ({len(ids)} in all)" if len(ids) > MAX_LISTED else "")


# ----------------------------------------------------------------------------- layout


def check_layout(keypoints: Mapping | str | KeypointSpec) -> tuple[KeypointSpec | None, Table]:
    """Check a layout (a data config's ``keypoints`` node); returns the spec (``None`` when it cannot be
    built) and its table."""
    raw = dict(keypoints) if isinstance(keypoints, Mapping) else {}
    table = Table("layout")
    names = list(raw.get("names") or ())
    if not names and raw.get("builtin"):
        try:
            names = list(build_keypoint_spec(str(raw["builtin"])).names)
        except ValueError:
            names = []
    k_raw = len(names)
    # before building: a 1-based list may not build at all
    limbs = [tuple(int(i) for i in p) for p in raw.get("skeleton") or ()]
    flat = [i for p in limbs for i in p]
    if flat and k_raw and min(flat) >= 1 and max(flat) <= k_raw:
        table.add(
            "skeleton",
            ERROR if max(flat) == k_raw else WARN,
            f"indices run {min(flat)}..{max(flat)} and none is 0: looks 1-based (a COCO file's skeleton "
            f"is); the layout's are 0-based (0..{k_raw - 1}): subtract 1 from every index",
        )
    pairs = [tuple(int(i) for i in p) for p in raw.get("flip_pairs") or ()]
    as_is = sum(_mirrored(names, a, b) for a, b in pairs)
    shifted = sum(_mirrored(names, a - 1, b - 1) for a, b in pairs)
    if pairs and shifted > as_is:
        table.add(
            "flip pairs",
            ERROR if max(i for p in pairs for i in p) == k_raw else WARN,
            f"{shifted} of {len(pairs)} pairs name left/right counterparts only after subtracting 1: looks "
            "1-based; subtract 1 from every index",
        )
    try:
        spec = build_keypoint_spec(keypoints)
    except ValueError as e:
        table.add("layout", ERROR, str(e))
        return None, table
    k = spec.num_keypoints
    table.title = f"layout '{spec.name}': {k} keypoints, {len(spec.flip_pairs)} flip pairs, {len(spec.skeleton)} limbs"
    if not any(r[0] == "skeleton" for r in table.rows):
        table.add(
            "skeleton",
            OK,
            f"{len(spec.skeleton)} limbs, indices in 0..{k - 1}"
            if spec.skeleton
            else "none (drawing and rescoring features need one)",
        )
    # left/right names not paired
    index = {n: i for i, n in enumerate(spec.names)}
    pairs = {frozenset(p) for p in spec.flip_pairs}
    unpaired = []
    for name, i in index.items():
        for left, right in _SIDES:
            if name.lower().startswith(left):
                other = next((n for n in index if n.lower() == right + name[len(left) :].lower()), None)
                if other is None:
                    unpaired.append(f"{name} (no '{right}{name[len(left) :]}')")
                elif frozenset((i, index[other])) not in pairs:
                    unpaired.append(f"{name}/{other}: add [{i}, {index[other]}] to flip_pairs")
            elif name.lower().startswith(right):
                base = name[len(right) :].lower()
                if not any(n.lower() == left + base for n in index):
                    unpaired.append(f"{name} (no '{left}{name[len(right) :]}')")
    if unpaired:
        table.add(
            "flip pairs",
            WARN,
            "left/right names not flip pairs (a flip would not swap them): "
            + "; ".join(unpaired[:MAX_LISTED])
            + (f" ... ({len(unpaired)} in all)" if len(unpaired) > MAX_LISTED else ""),
        )
    else:
        table.add(
            "flip pairs",
            OK,
            f"{len(spec.flip_pairs)} pairs" + ("" if spec.can_flip else " (no flip augmentation, no flip test)"),
        )
    # OKS sigmas
    sig = spec.sigmas_array
    bad = [f"{spec.names[i]}={s:g}" for i, s in enumerate(sig) if not 0 < s < 1]
    if bad:
        table.add("OKS sigmas", ERROR, f"must be 0 < s < 1 (COCO: 0.025..0.107): {', '.join(bad[:MAX_LISTED])}")
    elif "sigmas" not in raw and "builtin" not in raw:
        table.add(
            "OKS sigmas", WARN, f"none given: 0.05 for all {k} keypoints (AP depends on them; set keypoints.sigmas)"
        )
    else:
        table.add("OKS sigmas", OK, f"{len(sig)} in {sig.min():g}..{sig.max():g}")
    return spec, table


def _mirrored(names: Sequence[str], a: int, b: int) -> bool:
    """True when names ``a`` and ``b`` are a left/right pair (``left_x``/``right_x``, ``l_x``/``r_x``)."""
    if not (0 <= a < len(names) and 0 <= b < len(names)):
        return False
    x, y = sorted((names[a].lower(), names[b].lower()))
    return any(
        x.startswith(left) and y.startswith(right) and x[len(left) :] == y[len(right) :] for left, right in _SIDES
    )


# ----------------------------------------------------------------------------- one split


def _image_size(path: Path, decode: bool) -> tuple[int, int] | None:
    """(width, height) of a readable image file, ``None`` otherwise."""
    if not path.is_file():
        return None
    if decode:
        from dekr.data.coco import read_image

        image = read_image(path)
        return None if image is None else (image.shape[1], image.shape[0])
    try:
        from PIL import Image

        with Image.open(path) as im:
            return im.size
    except Exception:  # noqa: BLE001 - any failure means the loader cannot read it either
        return None


def check_split(
    name: str, ann: Path, images: Path, spec: KeypointSpec, decode: bool = False, check_images: bool = True
) -> Table:
    """Table of one split: counts, filled fields, image files, keypoints, categories."""
    table = Table(f"split {name}: {ann} (images: {images})")
    try:
        data, report = load_annotations(ann, spec, need_file_names=True, report_fills=False)
    except (FileNotFoundError, AnnotationError) as e:
        table.add("annotations", ERROR, str(e))
        table.add("other checks", WARN, "skipped: the annotation file cannot be used")
        return table
    _counts(table, data, report)
    _filled(table, report)
    sizes = _images(table, data, images, decode) if check_images else {}
    _keypoints(table, data, spec, sizes)
    _categories(table, data, spec)
    return table


def _counts(table: Table, data: dict, report: AnnotationReport) -> None:
    crowd = sum(1 for a in data["annotations"] if a["iscrowd"])
    with_images = len({a["image_id"] for a in data["annotations"]})
    table.add("images", OK if report.num_images else ERROR, f"{report.num_images} ({with_images} with annotations)")
    table.add(
        "people",
        OK if report.num_people else WARN,
        f"{report.num_people} of {report.num_annotations} annotations ({crowd} crowd)",
    )
    table.add("labelled keypoints", OK if report.num_labelled else WARN, f"{report.num_labelled} (v > 0)")


def _filled(table: Table, report: AnnotationReport) -> None:
    if report.filled:
        table.add(
            "missing fields",
            WARN,
            "filled as the loader and the metric do: "
            + "; ".join(f"{k}: {n} of {report.num_annotations} ({how})" for k, (n, how) in report.filled.items()),
        )
    else:
        table.add("missing fields", OK, "none")
    if report.num_keypoints_mismatch:
        table.add(
            "num_keypoints",
            WARN,
            "disagrees with the keypoints (v > 0 counted) in annotations "
            f"{_ids(report.num_keypoints_mismatch)}; the loader and the metric use the stored value",
        )
    if report.odd_visibility:
        table.add(
            "visibility",
            WARN,
            f"flags other than 0/1/2 in annotations {_ids(report.odd_visibility)} (v > 0 counts as labelled)",
        )
    if report.zero_area:
        table.add(
            "area",
            WARN,
            f"people with keypoints but area 0 in annotations {_ids(report.zero_area)}: no "
            "centre in training and no OKS match in evaluation; give them an area or a bbox",
        )


def _images(table: Table, data: dict, folder: Path, decode: bool) -> dict[Any, tuple[int, int]]:
    if not folder.is_dir():
        table.add("image files", ERROR, f"image folder not found: {folder}")
        return {}
    paths = [folder / im["file_name"] for im in data["images"]]
    with ThreadPoolExecutor(min(16, (os.cpu_count() or 1) * 2)) as pool:
        found = list(pool.map(lambda p: _image_size(p, decode), paths))
    missing = [str(im["file_name"]) for im, p, s in zip(data["images"], paths, found) if s is None and not p.is_file()]
    broken = [str(im["file_name"]) for im, p, s in zip(data["images"], paths, found) if s is None and p.is_file()]
    if missing:
        table.add("image files", ERROR, f"{len(missing)} of {len(paths)} missing in {folder}: {_ids(missing)}")
    if broken:
        table.add(
            "image files", ERROR, f"{len(broken)} of {len(paths)} unreadable: {_ids(broken)} (the loader skips them)"
        )
    if not missing and not broken:
        table.add("image files", OK, f"all {len(paths)} readable" + (" (decoded)" if decode else " (headers)"))
    sizes = {}
    mismatch = []
    for im, size in zip(data["images"], found):
        if size is not None:
            sizes[im["id"]] = size
            if "width" in im and "height" in im and (im["width"], im["height"]) != size:
                mismatch.append(im["id"])
    if mismatch:
        table.add("image size", WARN, f"width/height in the json differ from the files for images {_ids(mismatch)}")
    return sizes


def _keypoints(table: Table, data: dict, spec: KeypointSpec, sizes: dict) -> None:
    anns = data["annotations"]
    k = spec.num_keypoints
    if not anns:
        return
    kpts = np.fromiter(
        itertools.chain.from_iterable(a["keypoints"] for a in anns), dtype=np.float64, count=3 * k * len(anns)
    ).reshape(-1, k, 3)
    dims = {im["id"]: (im.get("width"), im.get("height")) for im in data["images"]}
    dims.update(sizes)  # the files' own sizes where they were read
    wh = np.array([dims.get(a["image_id"], (None, None)) for a in anns], dtype=np.float64)  # None -> nan
    lab = kpts[..., 2] > 0
    x, y = kpts[..., 0], kpts[..., 1]
    w, h = wh[:, :1], wh[:, 1:]
    known = np.isfinite(w) & np.isfinite(h)
    outside = lab & known & ((x < 0) | (y < 0) | (x >= w) | (y >= h))
    rows = np.flatnonzero(outside.any(1))
    table.add("non-finite keypoints", OK, "none")
    if rows.size:
        ids = [anns[r]["id"] for r in rows]
        r = rows[0]
        j = int(np.flatnonzero(outside[r])[0])
        table.add(
            "keypoints outside image",
            WARN,
            f"{int(outside.sum())} labelled keypoints in {len(ids)} annotations ({_ids(ids)}; e.g. id "
            f"{anns[r]['id']} '{spec.names[j]}' at ({x[r, j]:g}, {y[r, j]:g}) in a {w[r, 0]:g}x{h[r, 0]:g} "
            "image); they are cropped away by augmentation",
        )
    else:
        table.add(
            "keypoints outside image",
            OK,
            "none" + ("" if known.all() else f" (size unknown for {int((~known).sum())} annotations)"),
        )


def _categories(table: Table, data: dict, spec: KeypointSpec) -> None:
    details = []
    status = OK
    for cat in data["categories"]:
        names = list(cat.get("keypoints") or ())
        if not names:
            details.append(f"'{cat.get('name')}': no keypoint names")
            continue
        if tuple(names) != spec.names:
            diff = next(i for i, (a, b) in enumerate(zip(names, spec.names)) if a != b)
            status = WARN
            details.append(
                f"'{cat.get('name')}': {len(names)} names = layout '{spec.name}', but keypoint {diff} is "
                f"'{names[diff]}' in the file and '{spec.names[diff]}' in the layout: same order?"
            )
        else:
            details.append(f"'{cat.get('name')}': {len(names)} names, as layout '{spec.name}'")
    table.add("category keypoints", status, "; ".join(details) or "no categories")


# ----------------------------------------------------------------------------- entry point


def _data_config(overrides: list[str], config_dir: Path | None) -> dict:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    import dekr  # noqa: F401 - registers the resolvers
    from dekr.config import CONF_DIR, compose_train

    try:
        cfg = compose_train(overrides, config_dir)
    except HydraException as e:  # e.g. another group of train.yaml does not compose: the data group alone
        if any(o.split("=")[0].lstrip("+~").split(".")[0] not in ("data", "paths") for o in overrides):
            raise
        print(
            f"note: conf/train.yaml does not compose ({str(e).splitlines()[0]}); reading the data group alone",
            file=sys.stderr,
        )
        data_overrides = [("+" + o if o.startswith("data=") else o) for o in overrides]
        if not any(o.startswith("+data=") for o in data_overrides):
            data_overrides.insert(0, "+data=synthetic")  # train.yaml's default
        if config_dir is not None:
            data_overrides.append(f"hydra.searchpath=[file://{Path(config_dir).resolve()}]")
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(overrides=["+paths=default", *data_overrides])
    out = {}  # only what is checked is resolved (the rest may interpolate other groups)
    for key in ("keypoints", "root", *(f"{s}_{t}" for s in ("train", "val", "test") for t in ("ann", "images"))):
        if key in cfg.data:
            value = OmegaConf.select(cfg.data, key)
            out[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return out


def _splits(data: Mapping) -> list[tuple[str, Path, Path]]:
    root = Path(str(data.get("root", ".")))

    def at(rel: Any) -> Path:
        p = Path(str(rel))
        return p if p.is_absolute() else root / p

    out = []
    for split in ("train", "val", "test"):
        ann, images = data.get(f"{split}_ann"), data.get(f"{split}_images")
        if split == "test":
            ann, images = ann or data.get("val_ann"), images or data.get("val_images")
        if ann is None:
            continue
        entry = (split, at(ann), at(images or "."))
        same = [i for i, e in enumerate(out) if e[1:] == entry[1:]]
        if same:  # the same files as an earlier split: checked once
            out[same[0]] = (f"{out[same[0]][0]} = {split}", *entry[1:])
        else:
            out.append(entry)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the checks; print the tables; return the exit code (1 on errors)."""
    parser = argparse.ArgumentParser(
        prog="python -m dekr.data.check",
        description=__doc__.split("\n\n")[0],
        epilog="Other arguments are Hydra overrides of conf/train.yaml, e.g. data=coco data.root=/data/coco",
    )
    parser.add_argument("--ann", help="annotation file (instead of a data config)")
    parser.add_argument("--images", help="image folder of --ann (default: the file's folder)")
    parser.add_argument("--layout", default="coco", help="built-in layout for --ann (coco, crowdpose)")
    parser.add_argument("--splits", default="train,val,test", help="splits of the data config to check")
    parser.add_argument("--decode", action="store_true", help="decode every image (slower; default: headers)")
    parser.add_argument("--no-images", action="store_true", help="skip the image files")
    parser.add_argument(
        "--config-dir",
        type=Path,
        default=None,
        help="an extra folder of configs (e.g. your data/NAME.yaml), searched after conf/",
    )
    args, overrides = parser.parse_known_args(argv)
    unknown = [o for o in overrides if "=" not in o and not o.startswith("~")]
    if unknown:
        parser.error(f"unrecognised arguments {unknown}; overrides look like data=coco or data.root=PATH")
    if args.ann:
        keypoints: Any = {"builtin": args.layout}
        ann = Path(args.ann)
        splits = [("file", ann, Path(args.images) if args.images else ann.parent)]
    else:
        data = _data_config(overrides, args.config_dir)
        keypoints = data.get("keypoints", "coco")
        wanted = set(re.split(r"[,\s]+", args.splits))
        splits = [s for s in _splits(data) if wanted & set(s[0].split(" = "))]
    spec, layout = check_layout(keypoints)
    tables = [layout]
    if spec is not None:
        tables += [check_split(n, a, i, spec, args.decode, not args.no_images) for n, a, i in splits]
    errors, warnings = sum(t.count(ERROR) for t in tables), sum(t.count(WARN) for t in tables)
    print("\n\n".join(t.render() for t in tables))
    verdict = "errors: fix them before training" if errors else "usable" + (" (see warnings)" if warnings else "")
    print(f"\n{errors} error(s), {warnings} warning(s): {verdict}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
