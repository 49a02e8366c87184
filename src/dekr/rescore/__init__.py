"""Pose rescoring: a small MLP that predicts a pose's OKS from its shape and joint scores.

Features of a pose (any keypoint layout): for every limb ``(a, b)`` of ``spec.skeleton`` the vector
``kpt[a] - kpt[b]`` (interleaved x, y) and its length, both divided by the mean length of the
``spec.torso_limbs`` (all limbs when none are declared; at least 1 px), then the K joint scores:
``3 * L + K`` numbers (74 for COCO, 59 for CrowdPose). Built-in skeleton orders match the reference,
so its published weights (``final_rescore_coco_kpt.pth``, state_dict keys ``l1/l2/l3.weight|bias``)
load directly. Final score = ``net(features) * person score`` (NaN predictions count as 0).

Command line (:mod:`dekr.rescore.cli`; the layout and the files come from the data config, as for
``src/train.py``: any Hydra override of ``conf/train.yaml``; ``data=coco`` when no ``data=...`` is given)::

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

import contextlib
import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dekr.keypoints import KeypointSpec

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
