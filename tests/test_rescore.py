"""Rescoring net: features for any layout, reference weight layout, training data dump, training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dekr.keypoints import COCO, CROWDPOSE, KeypointSpec
from dekr.rescore import RescoreNet, Rescorer, dump_training_data, main, num_features, pose_features, train_rescorer

torch.set_num_threads(1)
COCO_ANN = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_sample" / "person_keypoints_sample.json"
CUSTOM = KeypointSpec(name="hand", names=("a", "b", "c", "d", "e"), skeleton=((0, 1), (1, 2), (2, 3), (3, 4)))


def _reference_features(x: np.ndarray, link1: list[int], link2: list[int], torso: tuple[int, int]) -> np.ndarray:
    """The published feature recipe, written out in numpy for one layout (independent check)."""
    rel = x[:, link1, :2] - x[:, link2, :2]
    length = np.sqrt((rel**2).sum(-1))
    norm = np.maximum((length[:, torso[0]] + length[:, torso[1]]) / 2, 1.0)[:, None]
    return np.concatenate([(rel / norm[..., None]).reshape(len(x), -1), length / norm, x[:, :, 2]], 1)


@pytest.mark.parametrize("spec,expected", [(COCO, 74), (CROWDPOSE, 59), (CUSTOM, 17)])
def test_feature_size(spec: KeypointSpec, expected: int) -> None:
    assert num_features(spec) == expected
    poses = torch.rand(4, spec.num_keypoints, 3) * 100
    assert pose_features(poses, spec).shape == (4, expected)


def test_features_match_published_recipe() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 300, (6, 17, 3)).astype(np.float32)
    x[0, :, :2] = 5.0  # degenerate pose: normaliser clamped to 1
    a, b = zip(*COCO.skeleton)
    ref = _reference_features(x, list(a), list(b), (9, 11))
    np.testing.assert_allclose(pose_features(torch.from_numpy(x), COCO).numpy(), ref, rtol=1e-5, atol=1e-5)


def test_reference_state_dict_loads_and_rescales(tmp_path: Path) -> None:
    net = RescoreNet(74, 256)
    path = tmp_path / "final_rescore_coco_kpt.pth"
    torch.save(net.state_dict(), path)  # keys l1/l2/l3.weight|bias, as PredictOKSNet
    r = Rescorer.from_file(path, COCO)
    poses = torch.rand(5, 17, 3) * 100
    scores = torch.rand(5)
    expected = net(pose_features(poses, COCO)).detach() * scores
    torch.testing.assert_close(r(poses, scores), expected)
    with pytest.raises(ValueError, match="74 features"):
        Rescorer.from_file(path, CROWDPOSE)


def test_nan_predictions_count_as_zero() -> None:
    r = Rescorer(CUSTOM, 8)
    with torch.no_grad():
        r.net.l3.bias.fill_(float("nan"))
    out = r(torch.rand(3, 5, 3), torch.ones(3))
    assert torch.equal(out, torch.zeros(3))


def _sample_predictions() -> list[dict]:
    gt = json.loads(COCO_ANN.read_text())
    rng = np.random.default_rng(1)
    preds = []
    for a in gt["annotations"]:
        if a["num_keypoints"] == 0:
            continue
        k = np.asarray(a["keypoints"], np.float64).reshape(17, 3)
        for noise in (0.0, 5.0, 20.0):
            p = k.copy()
            p[:, :2] += rng.normal(0, noise, (17, 2))
            p[:, 2] = rng.uniform(0.2, 0.9, 17)
            preds.append(
                {
                    "image_id": a["image_id"],
                    "category_id": 1,
                    "keypoints": p.reshape(-1).tolist(),
                    "score": float(p[:, 2].mean()),
                }
            )
    return preds


def test_dump_pairs_predictions_with_oks() -> None:
    poses, oks = dump_training_data(_sample_predictions(), COCO_ANN, COCO)
    assert poses.shape == (len(oks), 17, 3) and len(oks) == 36
    assert oks.max() == pytest.approx(1.0) and 0.0 <= oks.min() < 0.9


def test_train_and_cli_round_trip(tmp_path: Path) -> None:
    preds = tmp_path / "results.json"
    preds.write_text(json.dumps(_sample_predictions()))
    data = tmp_path / "data.npz"
    main(["dump", "--predictions", str(preds), "--annotations", str(COCO_ANN), "--out", str(data)])
    weights = tmp_path / "rescore.pth"
    main(
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(weights),
            "--epochs",
            "40",
            "--hidden",
            "32",
            "--batch-size",
            "16",
            "--lr",
            "3e-3",
        ]
    )
    z = np.load(data)
    model = Rescorer.from_file(weights, COCO)
    with torch.no_grad():
        pred = model.net(pose_features(torch.from_numpy(z["poses"]), COCO)).numpy()
    untrained = Rescorer(COCO, 32)
    with torch.no_grad():
        base = untrained.net(pose_features(torch.from_numpy(z["poses"]), COCO)).numpy()
    assert np.mean((pred - z["oks"]) ** 2) < np.mean((base - z["oks"]) ** 2)


def test_train_rescorer_returns_eval_model() -> None:
    poses = np.random.default_rng(0).uniform(0, 100, (64, 5, 3)).astype(np.float32)
    model = train_rescorer(poses, np.full(64, 0.5, np.float32), CUSTOM, hidden=8, epochs=1, batch_size=32)
    assert not model.training
