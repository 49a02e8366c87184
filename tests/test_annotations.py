"""Ground-truth reading shared by the data pipeline and the metric, and ``python -m dekr.data.check``."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dekr.data.annotations import AnnotationError, load_annotations
from dekr.keypoints import COCO, CROWDPOSE
from dekr.metrics import COCO_NAMES, KeypointAP, evaluate_keypoints, load_coco, results_to_coco

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_JSON = "person_keypoints_sample.json"
OPTIONAL = ("area", "iscrowd", "num_keypoints", "bbox")


def _sample(coco_sample: Path) -> dict:
    return json.loads((coco_sample / SAMPLE_JSON).read_text())


def _bare(coco_sample: Path) -> dict:
    """The COCO sample as many exporters write it: no area, iscrowd, num_keypoints or bbox."""
    data = _sample(coco_sample)
    for ann in data["annotations"]:
        for key in OPTIONAL:
            ann.pop(key)
    return data


def _write(path: Path, data: dict | list | str) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _gt_predictions(data: dict) -> list[dict]:
    """Every person with labelled keypoints, predicted exactly."""
    by_image: dict[int, list] = {}
    for a in data["annotations"]:
        kp = np.asarray(a["keypoints"], np.float64).reshape(17, 3)
        if (kp[:, 2] > 0).any():
            by_image.setdefault(a["image_id"], []).append(kp)
    ids = sorted(by_image)
    return results_to_coco(ids, [np.stack(by_image[i]) for i in ids], [np.ones(len(by_image[i])) for i in ids])


# ----------------------------------------------------------------------------- normalisation


def test_missing_fields_are_filled_and_reported_once(coco_sample: Path, tmp_path: Path, caplog) -> None:
    bare = _bare(coco_sample)
    path = _write(tmp_path / "bare.json", bare)
    untouched = copy.deepcopy(bare)
    with caplog.at_level(logging.INFO, logger="dekr.data.annotations"):
        data, report = load_annotations(path, COCO)
        load_annotations(path, COCO)  # a second reader of the same file logs nothing new
    lines = [r.getMessage() for r in caplog.records if r.name == "dekr.data.annotations"]
    assert len(lines) == 1 and lines[0].startswith("bare.json: filled ")
    assert "num_keypoints for 14 of 14 annotations" in lines[0] and "area for 14" in lines[0]
    assert "iscrowd for 14 (as 0)" in lines[0] and "bbox for 14" in lines[0]
    assert {k: n for k, (n, _) in report.filled.items()} == {"num_keypoints": 14, "bbox": 14, "area": 14, "iscrowd": 14}
    assert bare == untouched  # the caller's dict is not modified

    original = _sample(coco_sample)["annotations"]
    for ann, ref in zip(data["annotations"], original):
        kp = np.asarray(ann["keypoints"], np.float64).reshape(17, 3)
        lab = kp[:, 2] > 0
        assert ann["iscrowd"] == 0
        assert ann["num_keypoints"] == lab.sum() == ref["num_keypoints"]
        if lab.any():
            lo, hi = kp[lab, :2].min(0), kp[lab, :2].max(0)
            assert ann["bbox"] == pytest.approx([lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]])
        else:
            assert ann["bbox"] == [0.0, 0.0, 0.0, 0.0]
        assert ann["area"] == pytest.approx(ann["bbox"][2] * ann["bbox"][3])
    assert report.num_images == 4 and report.num_people == 14 and report.num_labelled == 181

    complete, report = load_annotations(coco_sample / SAMPLE_JSON, COCO)
    assert report.filled == {} and complete["annotations"][0]["area"] == original[0]["area"]


def test_metric_and_loader_read_the_same_filled_file(coco_sample: Path, tmp_path: Path) -> None:
    bare = _bare(coco_sample)
    path = _write(tmp_path / "bare.json", bare)
    preds = _gt_predictions(bare)
    stats = evaluate_keypoints(path, preds, COCO)  # was KeyError: 'num_keypoints' / 'area'
    assert list(stats) == list(COCO_NAMES) and stats["AP"] == pytest.approx(1.0) and stats["AR"] == pytest.approx(1.0)
    metric = KeypointAP(bare, COCO)
    by_image: dict[int, list] = {}
    for p in preds:
        by_image.setdefault(p["image_id"], []).append(np.asarray(p["keypoints"]).reshape(17, 3))
    for im in bare["images"]:
        poses = np.stack(by_image[im["id"]]) if im["id"] in by_image else np.zeros((0, 17, 3))
        metric.update([im["id"]], [poses], [np.ones(len(poses))])
    assert float(metric.compute()["AP"]) == pytest.approx(1.0)

    from dekr.data.coco import CocoKeypointDataset

    ds = CocoKeypointDataset(path, coco_sample, COCO, train=False)
    gt = load_coco(path, COCO)
    for ann_id, ann in ds.coco.anns.items():
        assert {k: ann[k] for k in OPTIONAL} == {k: gt.anns[ann_id][k] for k in OPTIONAL}
    raw = ds.raw_sample(0)
    assert raw is not None and np.isfinite(raw["ann_areas"]).all()


def test_normaliser_is_vectorised() -> None:
    rng = np.random.default_rng(0)
    n = 26_000  # a tenth of COCO train; the full 260k take about 1.4 s (bare) on one core
    kp = rng.uniform(0, 400, (n, 17, 3)).round(1)
    kp[..., 2] = rng.integers(0, 3, (n, 17))
    data = {
        "images": [{"id": i, "file_name": f"{i}.jpg"} for i in range(1000)],
        "annotations": [
            {"id": j + 1, "image_id": j % 1000, "category_id": 1, "keypoints": kp[j].ravel().tolist()} for j in range(n)
        ],
        "categories": [{"id": 1, "name": "person", "keypoints": list(COCO.names)}],
    }
    start = time.perf_counter()
    out, report = load_annotations(data, COCO)
    assert time.perf_counter() - start < 3.0
    assert report.filled["area"][0] == n
    assert out["annotations"][5]["num_keypoints"] == int((kp[5, :, 2] > 0).sum())


# ----------------------------------------------------------------------------- bad files


def _many(coco_sample: Path, n: int = 80) -> dict:
    """The sample with its annotations repeated to ``n`` (fresh ids 1..n)."""
    data = _sample(coco_sample)
    anns = data["annotations"]
    data["annotations"] = [{**copy.deepcopy(anns[i % len(anns)]), "id": i + 1} for i in range(n)]
    return data


def test_wrong_length_in_the_70th_annotation(coco_sample: Path, tmp_path: Path) -> None:
    data = _many(coco_sample)
    data["annotations"][69]["keypoints"] = data["annotations"][69]["keypoints"][:48]
    path = _write(tmp_path / "seventy.json", data)
    with pytest.raises(
        AnnotationError,
        match=r"seventy\.json.*expected 3\*K = 51.*'coco' layout.*id 70 has 48"
        r".*data\.keypoints",
    ):
        load_annotations(path, COCO)


def test_nan_keypoint_names_ids_and_the_fix(coco_sample: Path, tmp_path: Path) -> None:
    data = _many(coco_sample)
    for i in range(1, 8):  # seven bad annotations: five ids listed, and the total
        data["annotations"][i * 10]["keypoints"][4] = float("nan")
    data["annotations"][70]["keypoints"][0] = float("inf")
    path = _write(tmp_path / "nan.json", data)  # json writes NaN / Infinity literals, as numpy exporters do
    with pytest.raises(AnnotationError) as info:
        load_annotations(path, COCO)
    msg = str(info.value)
    assert "nan.json" in msg and "NaN/inf" in msg and "ids 11, 21, 31, 41, 51 ... (7 in all)" in msg
    assert "fix the file or drop those annotations" in msg
    # the metric refuses it too (was: a silently wrong AP)
    with pytest.raises(AnnotationError, match="NaN"):
        evaluate_keypoints(path, [], COCO)


@pytest.mark.parametrize(
    ("case", "pattern"),
    [
        ("truncated", r"broken\.json: not valid JSON \(.* at line 1, column \d+\).*truncated"),
        ("empty_object", r"broken\.json: no 'images' list"),
        ("top_list", r"broken\.json: the top level is a JSON list"),
        ("annotations_dict", r"broken\.json: 'annotations' is a JSON dict, expected a list"),
        ("orphan", r"broken\.json: 1 annotations refer to an image_id that is not in 'images' \(annotation ids 7\)"),
        ("null_keypoint", r"broken\.json: 1 annotations have keypoint values that are not numbers.*ids 7"),
        ("bad_bbox", r"broken\.json: 1 annotations have a 'bbox' that is not \[x, y, w, h\].*ids 7"),
        ("duplicate_id", r"broken\.json: 1 annotation ids are used more than once \(7\)"),
        ("no_file_name", r"broken\.json: 1 images have no 'file_name' \(image ids 785\)"),
    ],
)
def test_bad_files_name_the_file_the_id_and_the_fix(coco_sample: Path, tmp_path: Path, case: str, pattern: str) -> None:
    data = _many(coco_sample, 20)
    ann = data["annotations"][6]  # id 7
    content: dict | list | str = data
    if case == "truncated":
        content = json.dumps(data)[:3000]
    elif case == "empty_object":
        content = {}
    elif case == "top_list":
        content = data["annotations"]
    elif case == "annotations_dict":
        data["annotations"] = {"1": ann}
    elif case == "orphan":
        ann["image_id"] = 123456789
    elif case == "null_keypoint":
        ann["keypoints"][3] = None
    elif case == "bad_bbox":
        ann["bbox"] = [1.0, 2.0, -3.0, 4.0]
    elif case == "duplicate_id":
        data["annotations"][7]["id"] = 7
    elif case == "no_file_name":
        del data["images"][0]["file_name"]
    path = _write(tmp_path / "broken.json", content)
    with pytest.raises(AnnotationError, match=pattern):
        load_annotations(path, COCO, need_file_names=True)


def test_category_keypoint_count_against_the_layout(coco_sample: Path) -> None:
    with pytest.raises(
        ValueError, match="declares 17 keypoints but the keypoint spec 'crowdpose' has 14.*data.keypoints"
    ):
        load_annotations(coco_sample / SAMPLE_JSON, CROWDPOSE)


def test_data_pipeline_fails_at_set_up(coco_sample: Path, tmp_path: Path) -> None:
    from dekr.data.coco import CocoKeypointDataset

    data = _many(coco_sample)
    data["annotations"][69]["keypoints"][1] = float("nan")
    path = _write(tmp_path / "train.json", data)
    with pytest.raises(AnnotationError, match=r"train\.json.*ids 70"):
        CocoKeypointDataset(path, coco_sample, COCO, train=False)
    with pytest.raises(FileNotFoundError, match="annotation file not found.*missing.json"):
        CocoKeypointDataset(tmp_path / "missing.json", coco_sample, COCO, train=False)


# ----------------------------------------------------------------------------- area ranges


def test_area_ranges(coco_sample: Path) -> None:
    data = _sample(coco_sample)
    preds = _gt_predictions(data)
    shifted = [{**p, "keypoints": (np.asarray(p["keypoints"]) + np.tile([4.0, 0.0, 0.0], 17)).tolist()} for p in preds]
    default = evaluate_keypoints(data, shifted, COCO)
    same = evaluate_keypoints(
        data, shifted, COCO, area_ranges={"all": [0, 1e10], "medium": [32**2, 96**2], "large": [96**2, 1e10]}
    )
    assert list(default) == list(COCO_NAMES) and same == default
    single = evaluate_keypoints(data, shifted, COCO, area_ranges={"all": [0, 1e10]})
    assert list(single) == ["AP", "AP50", "AP75", "AR", "AR50", "AR75"]
    assert all(single[k] == default[k] for k in single)
    custom = evaluate_keypoints(data, shifted, COCO, area_ranges={"small": [0, 32**2], "huge": [1e9, 1e10]})
    assert list(custom) == ["AP", "AP50", "AP75", "APs", "AP_huge", "AR", "AR50", "AR75", "ARs", "AR_huge"]
    assert custom["AP"] == default["AP"] and custom["AP_huge"] == -1.0  # no person that large
    metric = KeypointAP(data, COCO, area_ranges={"all": [0, 1e10]})
    metric.update([data["images"][0]["id"]], [np.zeros((0, 17, 3))], [np.zeros(0)])
    assert set(metric.compute()) == set(single)
    with pytest.raises(ValueError, match="area range 'bad'"):
        KeypointAP(data, COCO, area_ranges={"bad": [5, 1]})


# ----------------------------------------------------------------------------- check CLI


def _check(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "dekr.data.check", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def _sample_overrides(root: Path) -> list[str]:
    return [
        "data=coco",
        f"data.root={root}",
        f"data.train_ann={SAMPLE_JSON}",
        "data.train_images=.",
        f"data.val_ann={SAMPLE_JSON}",
        "data.val_images=.",
    ]


def test_check_cli_on_the_sample(coco_sample: Path) -> None:
    run = _check(*_sample_overrides(coco_sample))
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "layout 'coco': 17 keypoints, 8 flip pairs" in out and "split train = val = test" in out
    assert "images                   ok      4" in out and "labelled keypoints       ok      181" in out
    assert "0 error(s), 0 warning(s)" in out


def test_check_cli_on_a_broken_copy(coco_sample: Path, tmp_path: Path) -> None:
    root = tmp_path / "broken"
    shutil.copytree(coco_sample, root)
    data = _bare(coco_sample)
    data["images"][1]["file_name"] = "gone.jpg"
    data["annotations"][0]["keypoints"][0] = 9999  # labelled nose outside its 640-px image
    _write(root / SAMPLE_JSON, data)
    (root / "000000196141.jpg").write_bytes(b"not a jpeg")
    names = json.dumps(list(COCO.names))
    run = _check(
        *_sample_overrides(root),
        "~data.keypoints.builtin",
        "+data.keypoints.name=mine",
        f"+data.keypoints.names={names}",
        "+data.keypoints.skeleton=[[1,2],[2,3],[6,7]]",
        "+data.keypoints.flip_pairs=[[1,2],[3,4]]",
        f"+data.keypoints.sigmas={[0.05] * 16 + [1.5]}",
    )
    out = run.stdout
    assert run.returncode == 1, out + run.stderr
    assert "looks 1-based" in out and "subtract 1" in out  # skeleton
    assert "left_shoulder/right_shoulder: add [5, 6] to flip_pairs" in out
    assert "OKS sigmas  ERROR   must be 0 < s < 1" in out and "right_ankle=1.5" in out
    assert "missing fields           WARN    filled as the loader and the metric do: num_keypoints: 14 of 14" in out
    assert "area: 14 of 14 (from bbox w*h)" in out
    assert "1 of 4 missing" in out and "gone.jpg" in out and "1 of 4 unreadable: 000000196141.jpg" in out
    assert "keypoints outside image  WARN" in out and "(9999, 81)" in out

    data["annotations"][3]["keypoints"][1] = float("nan")
    _write(root / SAMPLE_JSON, data)
    run = _check("--ann", str(root / SAMPLE_JSON), "--layout", "coco")
    assert run.returncode == 1 and "non-finite keypoint values (NaN/inf): ids 1202706" in run.stdout, run.stdout
