"""Pose rescoring: a small MLP that predicts a pose's OKS from its shape and joint scores.

Features of a pose (any keypoint layout): for every limb ``(a, b)`` of ``spec.skeleton`` the vector
``kpt[a] - kpt[b]`` (interleaved x, y) and its length, both divided by the mean length of the
``spec.torso_limbs`` (all limbs when none are declared; at least 1 px), then the K joint scores:
``3 * L + K`` numbers (74 for COCO, 59 for CrowdPose). Built-in skeleton orders match the reference,
so its published weights (``final_rescore_coco_kpt.pth``, state_dict keys ``l1/l2/l3.weight|bias``)
load directly. Final score = ``net(features) * person score`` (NaN predictions count as 0).

Command line (the layout and the files come from the data config, as for ``src/train.py``: any
Hydra override of ``conf/train.yaml``; ``data=coco`` when no ``data=...`` is given)::

    # predictions (COCO results, e.g. the results.json of src/eval.py run without rescore.weights)
    # + the split's GT (train by default; --split, --annotations FILE) -> training data
    python -m dekr.rescore dump  data=custom_example data.root=/data/hands --predictions results.json --out train.npz
    # or run the network on the split's images (train by default) instead of reading predictions
    python -m dekr.rescore dump  data=crowdpose model=dekr_w32 checkpoint=model.ckpt --out train.npz
    python -m dekr.rescore train data=custom_example --data train.npz --out rescore.pth [--epochs 20]
    # AP of a predictions file before and after rescoring (the val split's GT by default)
    python -m dekr.rescore eval  data=custom_example --predictions val_results.json --weights rescore.pth

``--annotations FILE`` replaces the split's annotation file (``--images DIR`` its image folder for a
network run); ``--layout coco|crowdpose`` (the former interface) replaces the data config's layout by
a built-in one. Every file is checked against the
layout: an annotation file's category keypoint names, a predictions file's keypoint count, the layout
stored in a ``dump`` file and in a ``train`` weights file; a mismatch is refused naming both sides.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dekr.keypoints import KeypointSpec, build_keypoint_spec, get_keypoint_spec

log = logging.getLogger(__name__)


def num_features(spec: KeypointSpec) -> int:
    """Length of the feature vector: 3 per limb plus one per keypoint."""
    return 3 * len(spec.skeleton) + spec.num_keypoints


def pose_features(poses: torch.Tensor, spec: KeypointSpec) -> torch.Tensor:
    """Rescoring features.

    Args:
        poses: float ``[..., K, 3]``: x, y (any pixel frame; the reference uses original pixels) and
            joint score.

    Returns:
        float32 ``[..., 3 * L + K]``: normalised limb vectors (x, y per limb), normalised lengths,
        joint scores.
    """
    poses = poses.float()
    if not spec.skeleton:
        return poses[..., 2]
    limbs = torch.as_tensor(spec.skeleton, device=poses.device)
    vec = poses[..., limbs[:, 0], :2] - poses[..., limbs[:, 1], :2]  # [..., L, 2]
    length = torch.sqrt((vec * vec).sum(-1))  # [..., L]
    torso = list(spec.torso_limbs) or list(range(len(spec.skeleton)))
    norm = length[..., torso].mean(-1, keepdim=True).clamp(min=1.0)  # [..., 1]
    vec = (vec / norm[..., None]).flatten(-2)
    return torch.cat((vec, length / norm, poses[..., 2]), dim=-1)


# ----------------------------------------------------------------------------- layout records


class LayoutMismatchError(ValueError):
    """A file (predictions, annotations, training data, weights) does not fit the configured layout."""


def layout_record(spec: KeypointSpec) -> dict[str, Any]:
    """The layout as plain data (stored in ``dump`` and ``train`` files; ``torch.load(weights_only=True)``
    and ``np.load(allow_pickle=False)`` read it back)."""
    return {
        "name": spec.name,
        "names": list(spec.names),
        "skeleton": [list(limb) for limb in spec.skeleton],
        "torso_limbs": list(spec.torso_limbs),
        "sigmas": [float(s) for s in spec.sigmas],
    }


def describe_layout(name: Any, names: Sequence[str]) -> str:
    """``'crowdpose' (14 keypoints: left_shoulder, right_shoulder, ...)`` for messages."""
    return f"'{name}' ({_names_text(names)})"


def _names_text(names: Sequence[str]) -> str:
    names = [str(n) for n in names]
    return f"{len(names)} keypoints: " + ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")


def check_layout_record(stored: Mapping[str, Any], spec: KeypointSpec, origin: str, fix: str) -> None:
    """A stored layout record (see :func:`layout_record`) must be ``spec``: same keypoint names (so same
    K) and, where stored, the same skeleton and torso limbs (they define the features). Different OKS
    sigmas only warn (they changed the training targets, not the features).

    Args:
        origin: what the record belongs to, as the start of a sentence ending in "for", e.g.
            ``"weights file X was trained for"``.
        fix: what to do, appended to the message.

    Raises:
        LayoutMismatchError: naming both layouts and ``fix``.
    """
    names = tuple(str(n) for n in stored.get("names") or ())
    mine = f"the data config declares {describe_layout(spec.name, spec.names)}"
    if names != spec.names:
        raise LayoutMismatchError(
            f"{origin} {describe_layout(stored.get('name'), names)} but {mine}{_first_diff(names, spec.names)}; {fix}"
        )
    for key, ours in (("skeleton", [list(limb) for limb in spec.skeleton]), ("torso_limbs", list(spec.torso_limbs))):
        if key in stored and [list(v) if isinstance(v, (list, tuple)) else v for v in stored[key]] != ours:
            raise LayoutMismatchError(
                f"{origin} '{stored.get('name')}' with {key} {stored[key]} but {mine} with {key} "
                f"{ours} (the rescoring features follow the skeleton); {fix}"
            )
    sigmas = stored.get("sigmas")
    if sigmas is not None and not np.allclose(np.asarray(sigmas, np.float64), spec.sigmas_array):
        log.warning("%s OKS sigmas %s; the data config's are %s", origin, list(sigmas), list(spec.sigmas))


def _first_diff(a: Sequence[str], b: Sequence[str]) -> str:
    if len(a) != len(b):
        return ""
    i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    return "" if i is None else f" (keypoint {i} is '{a[i]}' there and '{b[i]}' here)"


def check_annotation_layout(dataset: Mapping[str, Any], spec: KeypointSpec, origin: str) -> None:
    """The categories' ``keypoints`` names of a COCO annotation file (where given) must be the layout's."""
    for cat in dataset.get("categories") or ():
        names = tuple(str(n) for n in cat.get("keypoints") or ())
        if names and names != spec.names:
            raise LayoutMismatchError(
                f"annotation file {origin}: category '{cat.get('name')}' has {_names_text(names)} but the data "
                f"config declares {describe_layout(spec.name, spec.names)}"
                f"{_first_diff(names, spec.names)}; choose the data=... config of this dataset"
            )


def check_prediction_layout(predictions: Sequence[Mapping[str, Any]], spec: KeypointSpec, origin: str) -> None:
    """Every prediction must hold ``3 K`` keypoint numbers (results files carry no names: K only)."""
    k = spec.num_keypoints
    wrong = [p for p in predictions if len(p.get("keypoints") or ()) != 3 * k]
    if wrong:
        raise LayoutMismatchError(
            f"predictions {origin}: {len(wrong)} of {len(predictions)} poses have "
            f"{len(wrong[0].get('keypoints') or ()) / 3:g} keypoints but the data config declares "
            f"{describe_layout(spec.name, spec.names)}; choose the data=... config the model was trained with"
        )


class RescoreNet(nn.Module):
    """MLP ``features -> predicted OKS`` (reference layout: Linear-ReLU-Linear-ReLU-Linear)."""

    def __init__(self, in_features: int, hidden: int = 256) -> None:
        super().__init__()
        self.l1 = nn.Linear(in_features, hidden)
        self.l2 = nn.Linear(hidden, hidden)
        self.l3 = nn.Linear(hidden, 1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., F] -> [...]`` predicted OKS."""
        return self.l3(self.relu(self.l2(self.relu(self.l1(x))))).squeeze(-1)


class Rescorer(nn.Module):
    """Rescoring net bound to a keypoint layout; call once per batch.

    Args:
        spec: keypoint layout (defines the features).
        hidden: hidden width (256 in the reference).
    """

    def __init__(self, spec: KeypointSpec, hidden: int = 256) -> None:
        super().__init__()
        self.spec = spec
        self.net = RescoreNet(num_features(spec), hidden)

    @classmethod
    def from_file(cls, path: str | Path, spec: KeypointSpec, map_location: str | torch.device = "cpu") -> Rescorer:
        """Load weights saved by :meth:`save` (``python -m dekr.rescore train``) or by the reference.

        A file written by :meth:`save` stores its layout, which must be ``spec`` (names, skeleton,
        torso limbs; see :func:`check_layout_record`). The reference's files (``final_rescore_*.pth``,
        a bare PredictOKSNet state_dict) store no layout: for them only the feature count
        (``3 * limbs + K``) can be checked, so a same-size layout of other keypoints is not detected.
        Read with ``torch.load(weights_only=True)``: tensors and plain data only, never code.

        Raises:
            LayoutMismatchError: the stored layout or the feature count is not ``spec``'s.
            ValueError: not a rescoring file.
        """
        state = torch.load(str(path), map_location=map_location, weights_only=True)
        layout = None
        if isinstance(state, dict) and "state_dict" in state:
            layout = state.get("keypoints")
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(f"{path}: not a rescoring state_dict (expected keys l1/l2/l3.weight|bias)")
        state = {key.removeprefix("module.").removeprefix("net."): v for key, v in state.items()}
        if "l1.weight" not in state:
            raise ValueError(f"{path}: not a rescoring state_dict (expected keys l1/l2/l3.weight|bias)")
        fix = "choose the data=... config the weights were trained with, or retrain with `python -m dekr.rescore train`"
        if isinstance(layout, Mapping):
            check_layout_record(layout, spec, f"rescoring weights file {path} was trained for", fix)
        hidden, in_features = state["l1.weight"].shape
        if in_features != num_features(spec):
            raise LayoutMismatchError(
                f"{path}: rescoring weights take {in_features} features but the '{spec.name}' layout gives "
                f"{num_features(spec)} (3 x {len(spec.skeleton)} limbs + {spec.num_keypoints} keypoints); {fix}"
            )
        model = cls(spec, hidden)
        model.net.load_state_dict(state)
        return model.eval()

    def save(self, path: str | Path) -> None:
        """Save ``{"state_dict": <reference PredictOKSNet keys>, "keypoints": layout_record(spec)}`` (plain
        data). The reference code loads it as ``torch.load(path)["state_dict"]``."""
        torch.save({"state_dict": self.net.state_dict(), "keypoints": layout_record(self.spec)}, str(path))

    @torch.no_grad()
    def forward(self, poses: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Rescored person scores.

        Args:
            poses: float ``[..., K, 3]`` (original pixels, joint scores).
            scores: float ``[...]`` person scores (mean joint score).

        Returns:
            float32 ``[...]``: ``predicted OKS * scores`` (NaN → 0).
        """
        if poses.numel() == 0:
            return scores.float()
        device = next(self.net.parameters()).device
        pred = self.net(pose_features(poses.to(device), self.spec)).to(scores.device)
        return torch.nan_to_num(pred, nan=0.0) * scores.float()


# ----------------------------------------------------------------------------- training data


def dump_training_data(
    predictions: list[dict], annotations: str | Path, spec: KeypointSpec, max_dets: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """Pair every prediction with the OKS of its best-matching ground truth.

    Follows the reference: detections sorted by score, top ``max_dets`` per image, each paired with
    the highest OKS (layout's sigmas) over the non-ignored GT of its image (over the ignored ones when
    there are none). Two reference quirks are not reproduced: its dump repeats every detection once
    per COCO area range (3 times), and it sets an OKS of exactly 1 to 0.

    Args:
        predictions: COCO results (``image_id``, ``keypoints`` [3K], ``score``).
        annotations: COCO keypoint annotation file (or its content).

    Returns:
        poses float32 ``[D, K, 3]`` (x, y, joint score) and OKS float32 ``[D]``.

    Raises:
        LayoutMismatchError: the predictions do not have K keypoints, or the file's category keypoint
            names are not the layout's.
    """
    from dekr.metrics import coco_eval_for, load_coco

    origin = str(annotations) if isinstance(annotations, (str, Path)) else "<annotations>"
    check_prediction_layout(predictions, spec, "<predictions>")
    gt = load_coco(annotations, spec)
    check_annotation_layout(gt.dataset, spec, origin)
    ev = coco_eval_for(gt, predictions, spec, max_dets=max_dets)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' progress lines
        ev.evaluate()
    k = spec.num_keypoints
    poses, targets = [], []
    for (img_id, cat_id), ious in ev.ious.items():
        dts = ev._dts[img_id, cat_id]
        gts = ev._gts[img_id, cat_id]
        if not len(dts):
            continue
        order = np.argsort([-d["score"] for d in dts], kind="mergesort")[:max_dets]
        if len(ious) == 0 or not len(gts):
            best = np.zeros(len(order))
        else:
            ignore = np.array([bool(g.get("ignore", 0)) for g in gts])
            usable = np.where(ignore[None, :], -1.0, np.asarray(ious))
            best = np.where((~ignore).any(), usable.max(1), np.asarray(ious).max(1))
        for rank, i in enumerate(order):
            poses.append(np.asarray(dts[i]["keypoints"], np.float32).reshape(k, 3))
            targets.append(float(best[rank]))
    return np.asarray(poses, np.float32).reshape(-1, k, 3), np.asarray(targets, np.float32)


# ----------------------------------------------------------------------------- training


def train_rescorer(
    poses: np.ndarray,
    oks: np.ndarray,
    spec: KeypointSpec,
    hidden: int = 256,
    epochs: int = 20,
    lr: float = 1e-3,
    batch_size: int = 1024,
    max_steps: int = -1,
) -> Rescorer:
    """Fit the rescoring net (MSE to OKS, Adam) with Lightning; returns the trained model."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    if len(poses) == 0:
        raise ValueError(
            "the rescoring training data holds no poses: the predictions it was dumped from are empty (an "
            "untrained or badly trained network, or a centre threshold above every score); dump from a trained "
            "checkpoint's predictions"
        )
    rescorer = Rescorer(spec, hidden)
    feats = pose_features(torch.from_numpy(poses), spec)
    data = TensorDataset(feats, torch.from_numpy(oks).float())
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=len(data) >= batch_size)

    class _Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = rescorer.net

        def training_step(self, batch, _):
            x, y = batch
            loss = nn.functional.mse_loss(self.net(x), y)
            self.log("rescore/loss", loss, prog_bar=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.net.parameters(), lr=lr)

    trainer = pl.Trainer(
        max_epochs=epochs,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        accelerator="auto",
        devices=1,
    )
    trainer.fit(_Module(), loader)
    return rescorer.eval()


# ----------------------------------------------------------------------------- command line

#: top-level keys the inference factory reads that conf/train.yaml does not have (``checkpoint=PATH``
#: is accepted as ``+checkpoint=PATH``)
INFERENCE_KEYS = (
    "checkpoint",
    "device",
    "backend",
    "onnx",
    "onnx_providers",
    "threads",
    "speed",
    "model_from_checkpoint",
)


def compose_config(overrides: Sequence[str], config_dir: str | Path | None = None, layout: str | None = None) -> Any:
    """``conf/train.yaml`` composed with ``overrides``; unless they select an ``experiment=...`` (which
    brings its data config), with ``~experiment`` and ``data=coco`` (as ``conf/eval.yaml``) when no
    ``data=...`` is given. :data:`INFERENCE_KEYS` get the ``+`` Hydra needs for new keys.

    ``layout``: a built-in layout name that replaces ``data.keypoints`` (the former ``--layout``).
    """
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    import dekr  # noqa: F401 - registers the resolvers
    from dekr.data.check import _default_config_dir

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
    folder = _default_config_dir()
    if config_dir is not None:  # as Hydra's --config-dir: the user's folder joins the search path
        overrides.append(f"hydra.searchpath=[file://{Path(config_dir).resolve()}]")
    if not any(o.split("=")[0].lstrip("+~") == "experiment" for o in overrides):
        if not selects_data:
            overrides.insert(0, "data=coco")  # as conf/eval.yaml
        overrides.insert(0, "~experiment")  # train.yaml's default experiment is the synthetic quickstart
    with initialize_config_dir(config_dir=str(folder.resolve()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
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
    common.add_argument("--config-dir", type=Path, default=None, help="an extra folder of configs (e.g. your data/NAME.yaml), searched after conf/")
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


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
