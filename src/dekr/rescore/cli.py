"""``python -m dekr.rescore dump | train | eval``: rescoring data, training and evaluation driven by
the data config (see :mod:`dekr.rescore`)."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dekr.keypoints import KeypointSpec, build_keypoint_spec, get_keypoint_spec
from dekr.rescore import (
    INFERENCE_KEYS,
    LayoutMismatchError,
    Rescorer,
    check_annotation_layout,
    check_layout_record,
    check_prediction_layout,
    describe_layout,
    dump_training_data,
    layout_record,
    train_rescorer,
)

log = logging.getLogger(__name__)


def compose_config(overrides: Sequence[str], config_dir: str | Path | None = None, layout: str | None = None) -> Any:
    """``conf/train.yaml`` composed with ``overrides``; unless they select an ``experiment=...`` (which
    brings its data config), with ``~experiment`` and ``data=coco`` (as ``conf/eval.yaml``) when no
    ``data=...`` is given. :data:`INFERENCE_KEYS` get the ``+`` Hydra needs for new keys.

    ``layout``: a built-in layout name that replaces ``data.keypoints`` (the former ``--layout``).
    """
    from omegaconf import OmegaConf, open_dict

    import dekr  # noqa: F401 - registers the resolvers
    from dekr.config import compose_train

    overrides = [("+" + o if o.split("=")[0].split(".")[0] in INFERENCE_KEYS else o) for o in overrides]
    selects_data = any(o.split("=")[0].lstrip("+~") == "data" for o in overrides)
    if layout is not None:
        if selects_data:
            raise ValueError(f"give either --layout {layout} or data=..., not both (the data config holds the layout)")
        try:
            get_keypoint_spec(layout)
        except ValueError:
            raise ValueError(
                f"--layout takes a built-in layout (coco, crowdpose), not '{layout}'; for a custom layout give "
                f"its data config instead: data=<name> (conf/data/<name>.yaml, e.g. data=custom_example)"
            ) from None
    if not any(o.split("=")[0].lstrip("+~") == "experiment" for o in overrides):
        if not selects_data:
            overrides.insert(0, "data=coco")  # as conf/eval.yaml
        overrides.insert(0, "~experiment")  # train.yaml's default experiment is the synthetic quickstart
    cfg = compose_train(overrides, config_dir)
    if layout is not None:
        with open_dict(cfg):
            cfg.data.keypoints = OmegaConf.create({"builtin": layout})
    return cfg


def layout_from_config(cfg: Any) -> KeypointSpec:
    """The data config's keypoint layout."""
    from omegaconf import OmegaConf

    return build_keypoint_spec(OmegaConf.to_container(cfg.data.keypoints, resolve=True))


def split_files(cfg: Any, split: str) -> tuple[Path | None, Path | None]:
    """``(annotation file, image folder)`` of a split of the data config (``root``-relative or absolute;
    test falls back to val); ``None`` where not set."""
    from omegaconf import OmegaConf

    def get(key: str) -> Any:
        return OmegaConf.select(cfg, f"data.{key}", default=None)

    root = Path(str(get("root") or "."))

    def at(value: Any) -> Path | None:
        return None if value is None else (Path(str(value)) if Path(str(value)).is_absolute() else root / str(value))

    ann, images = get(f"{split}_ann"), get(f"{split}_images")
    if split == "test" and ann is None:
        ann, images = get("val_ann"), get("val_images")
    return at(ann), at(images)


def save_training_data(path: str | Path, poses: np.ndarray, oks: np.ndarray, spec: KeypointSpec) -> None:
    """``.npz`` with ``poses [D, K, 3]``, ``oks [D]`` and the layout (plain arrays, no pickles)."""
    record = layout_record(spec)
    np.savez_compressed(
        path,
        poses=poses,
        oks=oks,
        layout=np.asarray(record["name"]),
        layout_names=np.asarray(record["names"], dtype=str),
        layout_sigmas=np.asarray(record["sigmas"], np.float64),
    )


def load_training_data(path: str | Path, spec: KeypointSpec) -> tuple[np.ndarray, np.ndarray]:
    """Read a ``dump`` file (``allow_pickle=False``), checking its layout against ``spec``: the stored
    names (files of older versions store only the layout name), and always K."""
    with np.load(str(path), allow_pickle=False) as z:
        poses, oks = z["poses"], z["oks"]
        name = str(z["layout"]) if "layout" in z else "?"
        names = [str(n) for n in z["layout_names"]] if "layout_names" in z else None
        sigmas = z["layout_sigmas"].tolist() if "layout_sigmas" in z else None
    fix = "dump the training data with the data=... config you train for"
    origin = f"training data {path}"
    if names is not None:
        record = {"name": name, "names": names, "sigmas": sigmas}
        check_layout_record(record, spec, f"{origin} was dumped for", fix)
    elif name not in ("?", spec.name):
        raise LayoutMismatchError(
            f"{origin} was dumped for '{name}' but the data config declares "
            f"{describe_layout(spec.name, spec.names)}; {fix}"
        )
    if poses.ndim != 3 or poses.shape[1] != spec.num_keypoints:
        raise LayoutMismatchError(
            f"{origin} holds poses of shape {list(poses.shape)}, not [D, {spec.num_keypoints}, 3]: the data "
            f"config declares {describe_layout(spec.name, spec.names)}; {fix}"
        )
    return poses, oks


def read_predictions(path: str | Path, spec: KeypointSpec) -> list[dict]:
    """A COCO results JSON (list of ``image_id``, ``keypoints`` [3K], ``score``), checked for K."""
    preds = json.loads(Path(path).read_text())
    if not isinstance(preds, list):
        raise ValueError(f"predictions {path}: expected a COCO results list (image_id, keypoints, score)")
    check_prediction_layout(preds, spec, str(path))
    return preds


def predict_split(cfg: Any, annotations: Path, images: Path, limit: int | None = None) -> list[dict]:
    """Run the network of ``cfg`` (:func:`dekr.inference.factory.build_estimator`: ``model``,
    ``checkpoint``, ``codec``, ``test``) on the images of an annotation file, without rescoring;
    returns COCO results (original pixels)."""
    from omegaconf import open_dict

    from dekr.data.annotations import load_annotations
    from dekr.data.coco import read_image
    from dekr.inference.factory import build_estimator
    from dekr.metrics import results_to_coco

    with open_dict(cfg):
        cfg.rescore = None  # the training data pairs the network's own scores with OKS
    estimator, spec = build_estimator(cfg)
    dataset, _ = load_annotations(annotations, spec, need_file_names=True)
    check_annotation_layout(dataset, spec, str(annotations))
    entries = dataset["images"][: limit if limit is not None else None]
    out: list[dict] = []
    seen = 0
    batch = max(1, estimator.test.batch_size)
    for start in range(0, len(entries), batch):
        ids, arrays = [], []
        for im in entries[start : start + batch]:
            array = read_image(images / str(im["file_name"]))
            if array is None:
                log.warning("unreadable image skipped: %s", images / str(im["file_name"]))
                continue
            ids.append(im["id"])
            arrays.append(array)
        if not arrays:
            continue
        results = estimator.predict_batch(arrays)
        out += results_to_coco(ids, [r.poses for r in results], [r.scores for r in results])
        seen += len(arrays)
    if seen == 0:
        raise FileNotFoundError(
            f"no image of {annotations} could be read from {images}: check data.root and the split's *_images"
        )
    log.info("predicted %d poses on %d images", len(out), seen)
    return out


def rescore_predictions(predictions: Sequence[Mapping[str, Any]], rescorer: Rescorer) -> list[dict]:
    """Copies of COCO results with ``score`` replaced by ``rescorer(keypoints, score)``."""
    if not predictions:
        return []
    k = rescorer.spec.num_keypoints
    poses = torch.tensor([p["keypoints"] for p in predictions], dtype=torch.float32).reshape(-1, k, 3)
    scores = torch.tensor([float(p["score"]) for p in predictions], dtype=torch.float32)
    new = rescorer(poses, scores).tolist()
    return [{**p, "score": float(s)} for p, s in zip(predictions, new)]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``dump`` / ``train`` / ``eval`` command line (see the module docstring); returns what the
    command produced (``{"samples": n}``, or the before/after metrics of ``eval``).

    Raises:
        LayoutMismatchError: a file does not fit the data config's layout.
        ValueError, FileNotFoundError: bad arguments or files (``python -m`` prints them and exits 1).
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--layout", default=None, help="built-in layout (coco, crowdpose) replacing the data config's")
    common.add_argument(
        "--config-dir",
        type=Path,
        default=None,
        help="an extra folder of configs (e.g. your data/NAME.yaml), searched after conf/",
    )
    epilog = (
        "Other arguments are Hydra overrides of conf/train.yaml (data=coco when none selects a data config): "
        "data=NAME, data.root=PATH, data.train_ann=FILE, model=NAME, checkpoint=PATH, device=cpu, test.flip=false, ..."
    )
    parser = argparse.ArgumentParser(prog="python -m dekr.rescore", description=__doc__.split("\n")[0], epilog=epilog)
    sub = parser.add_subparsers(dest="cmd", required=True)
    dump = sub.add_parser(
        "dump", parents=[common], epilog=epilog, help="predictions + GT -> (poses, OKS) training data (.npz)"
    )
    dump.add_argument("--predictions", help="COCO results JSON; default: run the network (model=, checkpoint=)")
    dump.add_argument("--annotations", help="COCO keypoint annotations (default: the split's data.*_ann)")
    dump.add_argument("--images", help="network run: image folder (default: the split's, or beside --annotations)")
    dump.add_argument("--split", default="train", choices=("train", "val", "test"), help="data split (default train)")
    dump.add_argument("--limit-images", type=int, default=None, help="network run: first N images only")
    dump.add_argument("--max-dets", type=int, default=20, help="detections per image kept (reference: 20)")
    dump.add_argument("--out", required=True)
    train = sub.add_parser("train", parents=[common], epilog=epilog, help="train the rescoring net on dumped data")
    train.add_argument("--data", required=True, nargs="+", help="one or more .npz from `dump`")
    train.add_argument("--out", required=True)
    train.add_argument("--epochs", type=int, default=20)
    train.add_argument("--hidden", type=int, default=256)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--batch-size", type=int, default=1024)
    ev = sub.add_parser(
        "eval", parents=[common], epilog=epilog, help="AP of a predictions file before and after rescoring"
    )
    ev.add_argument("--predictions", required=True, help="COCO results JSON (scores not yet rescored)")
    ev.add_argument("--weights", required=True, help="rescoring weights (`train` output or final_rescore_*.pth)")
    ev.add_argument("--annotations", help="COCO keypoint annotations (default: the split's data.*_ann)")
    ev.add_argument("--split", default="val", choices=("train", "val", "test"), help="data split (default val)")
    ev.add_argument("--out", help="write the rescored predictions (COCO results JSON) here")
    args, overrides = parser.parse_known_args(None if argv is None else list(argv))
    unknown = [o for o in overrides if "=" not in o and not o.startswith("~")]
    if unknown:
        parser.error(f"unrecognised arguments {unknown}; overrides look like data=coco or data.root=PATH")
    cfg = compose_config(overrides, args.config_dir, args.layout)
    spec = layout_from_config(cfg)

    def annotations() -> Path:
        if args.annotations:
            return Path(args.annotations)
        ann, _ = split_files(cfg, args.split)
        if ann is None:
            raise ValueError(f"the data config has no {args.split}_ann; give --annotations FILE")
        return ann

    if args.cmd == "dump":
        ann = annotations()
        if args.predictions:
            preds = read_predictions(args.predictions, spec)
        else:
            _, images = split_files(cfg, args.split)
            if args.images or args.annotations or images is None:
                images = Path(args.images) if args.images else ann.parent
            preds = predict_split(cfg, ann, images, args.limit_images)
        poses, oks = dump_training_data(preds, ann, spec, max_dets=args.max_dets)
        save_training_data(args.out, poses, oks, spec)
        print(f"wrote {len(oks)} samples ({describe_layout(spec.name, spec.names)}) to {args.out}")
        return {"samples": len(oks)}
    if args.cmd == "train":
        parts = [load_training_data(p, spec) for p in args.data]
        poses = np.concatenate([p for p, _ in parts])
        oks = np.concatenate([o for _, o in parts])
        model = train_rescorer(poses, oks, spec, args.hidden, args.epochs, args.lr, args.batch_size)
        model.save(args.out)
        print(f"trained on {len(oks)} samples ({describe_layout(spec.name, spec.names)}); weights in {args.out}")
        return {"samples": len(oks)}
    from omegaconf import OmegaConf

    from dekr.metrics import area_ranges_for, evaluate_keypoints, format_table

    ann = annotations()
    preds = read_predictions(args.predictions, spec)
    rescorer = Rescorer.from_file(args.weights, spec)
    rescored = rescore_predictions(preds, rescorer)
    from dekr.metrics import load_coco

    gt = load_coco(ann, spec)
    check_annotation_layout(gt.dataset, spec, str(ann))
    metric = OmegaConf.to_container(cfg.data.metric, resolve=True) if cfg.data.get("metric") else {}
    options = {
        "max_dets": int(cfg.test.max_dets),
        "crowd_split": metric.get("crowd_split"),
        "area_ranges": area_ranges_for(metric.get("area_ranges", "auto"), spec),
    }
    before = evaluate_keypoints(gt, preds, spec, **options)
    after = evaluate_keypoints(gt, rescored, spec, **options)
    print(f"{len(preds)} predictions, {ann}\nwithout rescoring:\n{format_table(before)}")
    print(f"rescored with {args.weights}:\n{format_table(after)}")
    if args.out:
        Path(args.out).write_text(json.dumps(rescored))
        print(f"rescored predictions in {args.out}")
    return {"before": before, "after": after}
