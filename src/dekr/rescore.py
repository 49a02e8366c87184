"""Pose rescoring: a small MLP that predicts a pose's OKS from its shape and joint scores.

Features of a pose (any keypoint layout): for every limb ``(a, b)`` of ``spec.skeleton`` the vector
``kpt[a] - kpt[b]`` (interleaved x, y) and its length, both divided by the mean length of the
``spec.torso_limbs`` (all limbs when none are declared; at least 1 px), then the K joint scores:
``3 * L + K`` numbers (74 for COCO, 59 for CrowdPose). Built-in skeleton orders match the reference,
so its published weights (``final_rescore_coco_kpt.pth``, state_dict keys ``l1/l2/l3.weight|bias``)
load directly. Final score = ``net(features) * person score`` (NaN predictions count as 0).

Command line::

    python -m dekr.rescore dump  --predictions results.json --annotations gt.json --out data.npz [--layout coco]
    python -m dekr.rescore train --data data.npz --out rescore.pth [--layout coco] [--epochs 20]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dekr.keypoints import KeypointSpec, build_keypoint_spec


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
        """Load weights saved by the reference (a PredictOKSNet state_dict) or by :meth:`save`."""
        state = torch.load(str(path), map_location=map_location, weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        state = {key.removeprefix("module.").removeprefix("net."): v for key, v in state.items()}
        if "l1.weight" not in state:
            raise ValueError(f"{path}: not a rescoring state_dict (expected keys l1/l2/l3.weight|bias)")
        hidden, in_features = state["l1.weight"].shape
        if in_features != num_features(spec):
            raise ValueError(
                f"{path}: rescoring weights take {in_features} features but the '{spec.name}' layout gives "
                f"{num_features(spec)} (3 x {len(spec.skeleton)} limbs + {spec.num_keypoints} keypoints); "
                "use weights trained for this layout or retrain with `python -m dekr.rescore train`"
            )
        model = cls(spec, hidden)
        model.net.load_state_dict(state)
        return model.eval()

    def save(self, path: str | Path) -> None:
        """Save in the reference's state_dict layout (loadable by both codes)."""
        torch.save(self.net.state_dict(), str(path))

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
        annotations: COCO keypoint annotation file.

    Returns:
        poses float32 ``[D, K, 3]`` (x, y, joint score) and OKS float32 ``[D]``.
    """
    from dekr.metrics import coco_eval_for

    ev = coco_eval_for(annotations, predictions, spec, max_dets=max_dets)
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


def main(argv: list[str] | None = None) -> None:
    """``dump`` / ``train`` command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m dekr.rescore", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    dump = sub.add_parser("dump", help="predictions + GT → (poses, OKS) training data (.npz)")
    dump.add_argument("--predictions", required=True, help="COCO results JSON (e.g. from src/eval.py)")
    dump.add_argument("--annotations", required=True, help="COCO keypoint annotations JSON")
    dump.add_argument("--layout", default="coco", help="built-in keypoint layout (coco, crowdpose)")
    dump.add_argument("--out", required=True)
    train = sub.add_parser("train", help="train the rescoring net on dumped data")
    train.add_argument("--data", required=True, nargs="+", help="one or more .npz from `dump`")
    train.add_argument("--layout", default="coco")
    train.add_argument("--out", required=True)
    train.add_argument("--epochs", type=int, default=20)
    train.add_argument("--hidden", type=int, default=256)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--batch-size", type=int, default=1024)
    args = parser.parse_args(argv)
    spec = build_keypoint_spec(args.layout)
    if args.cmd == "dump":
        preds = json.loads(Path(args.predictions).read_text())
        poses, oks = dump_training_data(preds, args.annotations, spec)
        np.savez_compressed(args.out, poses=poses, oks=oks, layout=spec.name)
        print(f"wrote {len(oks)} samples to {args.out}")
    else:
        parts = [np.load(p) for p in args.data]
        poses = np.concatenate([p["poses"] for p in parts])
        oks = np.concatenate([p["oks"] for p in parts])
        model = train_rescorer(poses, oks, spec, args.hidden, args.epochs, args.lr, args.batch_size)
        model.save(args.out)
        print(f"trained on {len(oks)} samples; weights in {args.out}")


if __name__ == "__main__":
    main()
