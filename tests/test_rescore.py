"""Rescoring net: features for any layout, reference weight layout, training data dump, training; the
CLI on a custom layout from its data config, and the refusal of files made for another layout."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dekr.keypoints import COCO, CROWDPOSE, KeypointSpec, build_keypoint_spec
from dekr.rescore import (
    LayoutMismatchError,
    RescoreNet,
    Rescorer,
    dump_training_data,
    num_features,
    pose_features,
    train_rescorer,
)
from dekr.rescore.cli import main

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


# ----------------------------------------------------------------------------- data configs, layout checks

HAND5 = ("wrist", "thumb_tip", "index_tip", "middle_tip", "pinky_tip")  # conf/data/custom_example.yaml
AIC = (  # AI Challenger: 14 keypoints like CrowdPose, other order
    "right_shoulder",
    "right_elbow",
    "right_wrist",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "right_hip",
    "right_knee",
    "right_ankle",
    "left_hip",
    "left_knee",
    "left_ankle",
    "head_top",
    "neck",
)


def _hand_dataset(root: Path, names: tuple[str, ...] = HAND5) -> list[str]:
    """``write_custom_dataset`` (tests/test_data.py) with the category's keypoint names set to ``names``;
    returns the overrides selecting it as ``data=custom_example`` (train = val = that file)."""
    from test_data import write_custom_dataset

    write_custom_dataset(root)
    ann = root / "train.json"
    data = json.loads(ann.read_text())
    data["categories"][0]["keypoints"] = list(names)
    ann.write_text(json.dumps(data))
    return [
        "data=custom_example",
        f"data.root={root}",
        *(f"data.{s}_{t}={v}" for s in ("train", "val") for t, v in (("ann", "train.json"), ("images", "images"))),
        "data.input_size=128",
    ]


def _noisy_predictions(annotations: Path, k: int, seed: int = 1) -> list[dict]:
    """GT poses with growing noise and random joint scores (COCO results), as a network would give."""
    gt = json.loads(annotations.read_text())
    rng = np.random.default_rng(seed)
    preds = []
    for a in gt["annotations"]:
        if a["num_keypoints"] == 0:
            continue
        kp = np.asarray(a["keypoints"], np.float64).reshape(k, 3)
        for noise in (0.0, 2.0, 8.0, 25.0):
            p = kp.copy()
            p[:, :2] += rng.normal(0, noise, (k, 2))
            p[:, 2] = rng.uniform(0.2, 0.9, k)
            preds.append(
                {"image_id": a["image_id"], "category_id": 1, "keypoints": p.reshape(-1).tolist(), "score": 0.5}
            )
    return preds


def test_custom_layout_dump_train_eval_through_the_cli(tmp_path: Path) -> None:
    data = _hand_dataset(tmp_path / "hands")
    spec = build_keypoint_spec(
        {
            "name": "hand5",
            "names": HAND5,
            "skeleton": [[0, 1], [0, 2], [0, 3], [0, 4]],
            "torso_limbs": [0, 2],
            "sigmas": [0.05, 0.04, 0.04, 0.04, 0.04],
        }
    )
    preds_file = tmp_path / "results.json"
    preds = _noisy_predictions(tmp_path / "hands" / "train.json", 5)
    preds_file.write_text(json.dumps(preds))
    npz = tmp_path / "train.npz"
    assert main(["dump", *data, "--predictions", str(preds_file), "--out", str(npz)]) == {"samples": len(preds)}
    with np.load(npz, allow_pickle=False) as z:
        assert tuple(z["layout_names"]) == HAND5 and z["poses"].shape == (len(preds), 5, 3)
        assert z["oks"].max() == pytest.approx(1.0) and z["oks"].min() < 0.5  # OKS with the config's sigmas
        np.testing.assert_allclose(z["layout_sigmas"], spec.sigmas)
    weights = tmp_path / "rescore.pth"
    args = ["--out", str(weights), "--epochs", "30", "--hidden", "16", "--batch-size", "8", "--lr", "3e-3"]
    torch.manual_seed(0)  # the loader's shuffling
    main(["train", *data, "--data", str(npz), *args])
    stored = torch.load(weights, weights_only=True)
    assert stored["keypoints"]["names"] == list(HAND5) and stored["keypoints"]["name"] == "hand5"
    rescorer = Rescorer.from_file(weights, spec)
    assert num_features(spec) == 17 and rescorer.net.l1.in_features == 17
    out = tmp_path / "rescored.json"
    metrics = main(["eval", *data, "--predictions", str(preds_file), "--weights", str(weights), "--out", str(out)])
    assert set(metrics["before"]) == {"AP", "AP50", "AP75", "AR", "AR50", "AR75"}  # custom layout: one area range
    poses = torch.tensor([p["keypoints"] for p in preds]).reshape(-1, 5, 3)
    expected = rescorer(poses, torch.full((len(preds),), 0.5))
    rescored = json.loads(out.read_text())
    np.testing.assert_allclose([p["score"] for p in rescored], expected.numpy(), rtol=1e-5)
    # all scores equal before rescoring: the ranking, and so the AP, comes from the rescorer alone
    assert metrics["after"]["AP"] > metrics["before"]["AP"], metrics


def test_dump_runs_the_network_on_the_split(tmp_path: Path) -> None:
    data = _hand_dataset(tmp_path)
    npz = tmp_path / "net.npz"
    # untrained network (no checkpoint): a negative centre threshold keeps its candidates
    args = ["dump", *data, "codec.centers.threshold=-1e9", "--limit-images", "2", "--max-dets", "5"]
    assert main([*args, "--out", str(npz)])["samples"] == 10
    with np.load(npz, allow_pickle=False) as z:
        assert z["poses"].shape == (10, 5, 3) and tuple(z["layout_names"]) == HAND5
    with pytest.raises(FileNotFoundError):  # checkpoint=PATH reaches the inference factory
        main([*args, f"checkpoint={tmp_path / 'missing.ckpt'}", "--out", str(npz)])


def test_weights_layout_is_checked_on_load(tmp_path: Path) -> None:
    aic = KeypointSpec(name="aic", names=AIC, skeleton=CROWDPOSE.skeleton, torso_limbs=CROWDPOSE.torso_limbs)
    path = tmp_path / "crowdpose_rescore.pth"
    Rescorer(CROWDPOSE, 8).save(path)
    assert Rescorer.from_file(path, CROWDPOSE).net.l1.in_features == 59
    with pytest.raises(LayoutMismatchError) as err:
        Rescorer.from_file(path, aic)  # same K, same feature count: only the stored layout tells
    msg = str(err.value)
    assert "was trained for 'crowdpose' (14 keypoints: left_shoulder" in msg and "declares 'aic' (14 keypoints" in msg
    assert "keypoint 0 is 'left_shoulder' there and 'right_shoulder' here" in msg
    other_skeleton = KeypointSpec(name="crowdpose", names=CROWDPOSE.names, skeleton=CROWDPOSE.skeleton[::-1])
    with pytest.raises(LayoutMismatchError, match="skeleton"):
        Rescorer.from_file(path, other_skeleton)
    # an official-format file (bare state_dict, no layout) loads: only the feature count is checked
    bare = tmp_path / "final_rescore_crowd_pose_kpt.pth"
    torch.save(Rescorer(CROWDPOSE, 8).net.state_dict(), bare)
    assert Rescorer.from_file(bare, aic).net.l1.in_features == 59
    with pytest.raises(LayoutMismatchError, match="59 features"):
        Rescorer.from_file(bare, COCO)


def test_weights_files_are_read_as_plain_data(tmp_path: Path) -> None:
    path = tmp_path / "rescore.pth"
    torch.save({"state_dict": Rescorer(CUSTOM, 8).net.state_dict(), "keypoints": CUSTOM}, path)  # an object
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        Rescorer.from_file(path, CUSTOM)


def test_cli_refuses_files_of_another_layout(tmp_path: Path) -> None:
    data = _hand_dataset(tmp_path / "hands")
    preds_file = tmp_path / "results.json"
    preds_file.write_text(json.dumps(_noisy_predictions(tmp_path / "hands" / "train.json", 5)))
    # weights of another 5-keypoint layout with as many limbs (17 features, as hand5's)
    weights = tmp_path / "other.pth"
    Rescorer(CUSTOM, 8).save(weights)
    with pytest.raises(LayoutMismatchError, match=r"trained for 'hand' \(5 keypoints: a, b.*declares 'hand5'"):
        main(["eval", *data, "--predictions", str(preds_file), "--weights", str(weights)])
    # predictions of another K
    coco_preds = tmp_path / "coco.json"
    coco_preds.write_text(json.dumps(_sample_predictions()))
    with pytest.raises(LayoutMismatchError, match=r"have 17 keypoints but the data config declares 'hand5'"):
        main(["dump", *data, "--predictions", str(coco_preds), "--out", str(tmp_path / "x.npz")])
    # an annotation file whose category names other keypoints (write_custom_dataset's k0..k4)
    wrong = _hand_dataset(tmp_path / "k", names=tuple(f"k{j}" for j in range(5)))
    with pytest.raises(LayoutMismatchError, match=r"category 'thing' has 5 keypoints: k0, k1.*declares 'hand5'"):
        main(["dump", *wrong, "--predictions", str(preds_file), "--out", str(tmp_path / "x.npz")])
    # training data dumped for another layout
    coco_npz = tmp_path / "coco.npz"
    main(
        ["dump", "--layout", "coco", "--predictions", str(coco_preds), "--annotations", str(COCO_ANN)]
        + [
            "--out",
            str(coco_npz),
        ]
    )
    with pytest.raises(LayoutMismatchError, match=r"training data .* was dumped for 'coco' \(17 keypoints"):
        main(["train", *data, "--data", str(coco_npz), "--out", str(tmp_path / "x.pth")])


def test_same_k_annotation_file_of_another_layout_is_refused(tmp_path: Path) -> None:
    """A 14-keypoint AI-Challenger file evaluated as CrowdPose: same K, other names."""
    gt = json.loads(COCO_ANN.read_text())
    gt["categories"] = [{"id": 1, "name": "person", "keypoints": list(AIC)}]
    for a in gt["annotations"]:
        a["keypoints"] = a["keypoints"][: 3 * 14]
        a["num_keypoints"] = sum(v > 0 for v in a["keypoints"][2::3])
    ann = tmp_path / "aic.json"
    ann.write_text(json.dumps(gt))
    preds = tmp_path / "results.json"
    preds.write_text(json.dumps([{**p, "keypoints": p["keypoints"][: 3 * 14]} for p in _sample_predictions()]))
    out = tmp_path / "x.npz"
    with pytest.raises(LayoutMismatchError) as err:
        main(["dump", "data=crowdpose", "--predictions", str(preds), "--annotations", str(ann), "--out", str(out)])
    assert "has 14 keypoints: right_shoulder, right_elbow" in str(err.value)
    assert "declares 'crowdpose' (14 keypoints: left_shoulder" in str(err.value)
    with pytest.raises(LayoutMismatchError):  # the former interface is checked the same way
        main(
            ["dump", "--layout", "crowdpose", "--predictions", str(preds), "--annotations", str(ann), "--out", str(out)]
        )


def test_layout_flag_takes_builtins_only() -> None:
    with pytest.raises(ValueError, match=r"give its data config instead: data=<name>"):
        main(["train", "--layout", "hand5", "--data", "x.npz", "--out", "x.pth"])
    with pytest.raises(ValueError, match="not both"):
        main(["train", "--layout", "coco", "data=crowdpose", "--data", "x.npz", "--out", "x.pth"])


def test_module_cli_exits_1_with_the_message(tmp_path: Path) -> None:
    weights = tmp_path / "coco.pth"
    Rescorer(COCO, 8).save(weights)
    preds = tmp_path / "results.json"
    preds.write_text(json.dumps([]))
    cmd = [sys.executable, "-m", "dekr.rescore", "eval", "data=crowdpose", "--predictions", str(preds)]
    proc = subprocess.run(
        [*cmd, "--weights", str(weights), "--annotations", str(COCO_ANN)], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert "error: rescoring weights file" in proc.stderr and "trained for 'coco'" in proc.stderr


def test_config_defaults_follow_eval_and_experiments() -> None:
    from dekr.rescore.cli import compose_config, layout_from_config

    assert layout_from_config(compose_config([])).name == "coco"  # as conf/eval.yaml
    assert layout_from_config(compose_config(["experiment=crowdpose_w32_512"])).name == "crowdpose"
    cfg = compose_config(["data=custom_example", "checkpoint=net.ckpt", "device=cpu"])
    assert layout_from_config(cfg).names == HAND5 and (cfg.checkpoint, cfg.device) == ("net.ckpt", "cpu")
