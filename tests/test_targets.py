"""DEKR target encoder: equality with the reference generators (stored digests) and invariants."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dekr.codec.encode import TargetEncoder, person_centers_and_areas
from dekr.keypoints import COCO, CROWDPOSE, KeypointSpec

GOLDEN = Path(__file__).parent / "data" / "golden_targets.npz"
FIVE = KeypointSpec(name="five", names=("a", "b", "c", "d", "e"), flip_pairs=((1, 2),))


def digest(arr: np.ndarray) -> np.ndarray:
    """Same per-channel digest as benchmarks/make_golden_targets.py."""
    a = arr.astype(np.float64)
    _, h, w = a.shape
    ys, xs = np.mgrid[0:h, 0:w]
    position = 1.0 + xs + 1000.0 * ys
    return np.stack([a.sum((1, 2)), (a * position).sum((1, 2)), (a != 0).sum((1, 2))], axis=1)


@pytest.fixture(scope="module")
def golden() -> np.lib.npyio.NpzFile:
    return np.load(GOLDEN)


def test_matches_reference_generators(golden) -> None:
    """Heatmaps, weights, offsets and offset weights equal the official generators' output."""
    for name in golden["names"]:
        joints = golden[f"{name}/joints"].astype(np.float64)
        area = golden[f"{name}/area"]
        size = int(golden[f"{name}/meta"][0])
        spec = CROWDPOSE if joints.shape[1] == CROWDPOSE.num_keypoints + 1 else COCO
        out = TargetEncoder(spec, size)(joints[:, :-1], joints[:, -1], area)
        for key in ("heatmaps", "heatmap_weights", "offsets", "offset_weights"):
            ours, ref = digest(out[key]), golden[f"{name}/{key}"]
            np.testing.assert_array_equal(ours[:, 2], ref[:, 2], err_msg=f"{name} {key}: non-zero counts")
            np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6, err_msg=f"{name} {key}")


def test_centers_and_areas_match_reference_get_joints(golden) -> None:
    names = [n for n in golden["names"] if f"{n}/raw_keypoints" in golden.files]
    assert names
    for name in names:
        raw, ann_area = golden[f"{name}/raw_keypoints"], golden[f"{name}/ann_area"]
        centers, areas = person_centers_and_areas(raw, ann_area, fix_zero_keypoint_center=False)
        np.testing.assert_array_equal(centers, golden[f"{name}/ref_centers"])
        np.testing.assert_array_equal(areas, golden[f"{name}/ref_areas"])
        # default: the (0, 0) centre of people without keypoints is removed, nothing else changes
        fixed, _ = person_centers_and_areas(raw, ann_area)
        empty = (raw[:, :, 2] == 0).all(1)
        assert (fixed[empty, 2] == 0).all()
        np.testing.assert_array_equal(fixed[~empty], centers[~empty])


def random_people(rng: np.random.Generator, n: int, k: int, size: int, integer: bool = False) -> np.ndarray:
    kp = np.zeros((n, k, 3))
    centre = rng.uniform(10, size - 10, (n, 1, 2))
    kp[:, :, :2] = centre + rng.uniform(-6, 6, (n, k, 2))
    if integer:
        kp[:, :, :2] = np.round(kp[:, :, :2])
    kp[:, :, 2] = rng.integers(0, 3, (n, k))
    kp[:, 0, 2] = 2
    return kp


def test_invariants_peaks_weights_offsets() -> None:
    rng = np.random.default_rng(0)
    size = 64
    kp = random_people(rng, 4, COCO.num_keypoints, size, integer=True)
    enc = TargetEncoder(COCO, size)
    centers, areas = enc.centers_and_areas(kp)
    mask = np.ones((size, size), np.float32)
    mask[:, :5] = 0
    out = enc(kp, centers, areas, mask)
    hm, hw, off, ow = out["heatmaps"], out["heatmap_weights"], out["offsets"], out["offset_weights"]
    assert hm.shape == hw.shape == (18, size, size) and off.shape == ow.shape == (34, size, size)
    assert all(a.dtype == np.float32 for a in out.values())
    assert hm.max() <= 1.0 and hm.min() >= 0.0
    for p, j in zip(*np.nonzero(kp[:, :, 2] > 0)):
        x, y = kp[p, j, :2].astype(int)
        assert hm[j, y, x] == 1.0  # peak 1 at every visible (integer) keypoint
    assert set(np.unique(hw[:, :, 5:])) <= {np.float32(0.1), np.float32(1.0)}
    assert (hw[:, :, :5] == 0).all()  # the loss mask zeroes ignored pixels
    assert (hw[:, :, 5:][hm[:, :, 5:] > 0] == 1).all()  # inside every Gaussian window
    # offsets point at keypoints: pixel - offset is a labelled keypoint of some person
    ys, xs = np.mgrid[0:size, 0:size]
    for j in range(COCO.num_keypoints):
        set_ = ow[2 * j] > 0
        assert (ow[2 * j] == ow[2 * j + 1]).all()
        target = np.stack([xs[set_] - off[2 * j][set_], ys[set_] - off[2 * j + 1][set_]], 1)
        labelled = kp[kp[:, j, 2] > 0, j, :2]
        dist = np.abs(target[:, None] - labelled[None]).max(-1).min(1)
        assert (dist < 1e-4).all()
    weights = set(np.unique(ow[ow > 0]).tolist())
    assert weights <= set((1 / np.sqrt(areas)).astype(np.float32).tolist())


def test_decode_recovers_ground_truth() -> None:
    """Reading the offsets at each centre's heatmap peak gives back every visible keypoint."""
    rng = np.random.default_rng(1)
    size = 128
    k = COCO.num_keypoints
    kp = np.zeros((5, k, 3))
    for i, (cx, cy) in enumerate([(20, 20), (100, 30), (60, 64), (25, 105), (100, 100)]):
        kp[i, :, :2] = np.array([cx, cy]) + rng.uniform(-10, 10, (k, 2))
        kp[i, :, 2] = 2
    enc = TargetEncoder(COCO, size)
    centers, areas = enc.centers_and_areas(kp)
    out = enc(kp, centers, areas)
    ctr = out["heatmaps"][k]
    padded = np.pad(ctr, 1)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3)).max((-1, -2))
    peaks = np.argwhere((ctr == windows) & (ctr > 0.5))
    assert len(peaks) == len(kp)
    for y, x in peaks:
        pose = np.stack([x - out["offsets"][0::2, y, x], y - out["offsets"][1::2, y, x]], 1)
        err = np.abs(pose[None] - kp[:, :, :2]).max((1, 2))
        person = err.argmin()
        assert err[person] < 1e-3  # exact up to float32; the peak is within half a pixel of the centre
        assert np.abs(np.array([x, y]) - centers[person, :2]).max() <= 0.5


def test_batch_equals_single_and_custom_k() -> None:
    rng = np.random.default_rng(2)
    enc = TargetEncoder(FIVE, (40, 48), window="symmetric", area_mode="box")
    people = [random_people(rng, n, 5, 40) for n in (0, 3, 6, 12, 70, 30)]  # > PEOPLE_PER_STEP: in steps
    prepared = [enc.centers_and_areas(p) for p in people]
    batch = enc.encode_batch(people, [c for c, _ in prepared], [a for _, a in prepared])
    assert batch["heatmaps"].shape == (6, 6, 40, 48)
    assert batch["offset_counts"].sum() == len(batch["offset_pixel"]) and batch["offset_counts"][0] == 0
    assert (np.diff(batch["offset_pixel"]) > 0).all()  # ascending: grouped by image
    dense = enc.densify(batch)
    assert dense["offsets"].shape == (6, 10, 40, 48)
    for i, p in enumerate(people):
        single = enc(p, *prepared[i])
        for key, value in single.items():
            np.testing.assert_array_equal(dense[key][i], value, err_msg=key)
    assert not dense["heatmaps"][0].any() and (dense["heatmap_weights"][0] == np.float32(0.1)).all()


def naive_heatmaps(points: np.ndarray, size: int, sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-window loops in float64, as the reference draws: (heatmaps, window mask)."""
    heat = np.zeros((points.shape[1], size, size))
    window = np.zeros(heat.shape, dtype=bool)
    for person in points:
        for c, (x, y, v) in enumerate(person):
            if v <= 0 or not (0 <= x < size and 0 <= y < size):
                continue
            s = sigmas[c]
            x0, y0 = max(0, int(np.floor(x - 3 * s - 1))), max(0, int(np.floor(y - 3 * s - 1)))
            x1, y1 = min(size, int(np.ceil(x + 3 * s + 2))), min(size, int(np.ceil(y + 3 * s + 2)))
            ys, xs = np.mgrid[y0:y1, x0:x1]
            g = np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * s * s))
            heat[c, y0:y1, x0:x1] = np.maximum(heat[c, y0:y1, x0:x1], g)
            window[c, y0:y1, x0:x1] = True
    return heat, window


@pytest.mark.parametrize("people", [1, 4, 25])
def test_heatmaps_equal_direct_drawing_to_rounding(people: int) -> None:
    """Separable drawing (matrix product + max-merge of meeting windows) gives the directly drawn
    Gaussians to float32 rounding, and the weights rebuilt from them mark exactly the windows."""
    rng = np.random.default_rng(people)
    size = 48
    kp = random_people(rng, people, COCO.num_keypoints, size)
    kp[0, 0, :2] = [0.3, size - 0.6]  # windows crossing the border
    enc = TargetEncoder(COCO, size)
    centers, areas = enc.centers_and_areas(kp)
    out = enc(kp, centers, areas)
    sigmas = np.r_[np.full(17, 2.0), 4.0]
    heat, window = naive_heatmaps(np.concatenate([kp, centers[:, None]], 1), size, sigmas)
    np.testing.assert_allclose(out["heatmaps"], heat.astype(np.float32), rtol=3e-7, atol=0)
    np.testing.assert_array_equal(out["heatmap_weights"], np.where(window, 1.0, 0.1).astype(np.float32))
    exact = TargetEncoder(COCO, size, exact_heatmaps=True)(kp, centers, areas)
    np.testing.assert_array_equal(exact["heatmaps"], heat.astype(np.float32))  # bit for bit
    for key in ("heatmap_weights", "offsets", "offset_weights"):
        np.testing.assert_array_equal(exact[key], out[key])


def test_window_modes() -> None:
    kp = np.zeros((1, 5, 3))
    kp[0, :, :2] = [[30.2, 30.7]] * 5
    kp[0, :, 2] = 2
    centers = np.array([[30.6, 30.2, 1.0]])
    ref = TargetEncoder(FIVE, 64)(kp, centers, [100.0])
    ys, xs = np.nonzero(ref["offset_weights"][0])
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (26, 33, 26, 33)  # [int(c)-4, int(c)+4)
    sym = TargetEncoder(FIVE, 64, window="symmetric")(kp, centers, [100.0])
    ys, xs = np.nonzero(sym["offset_weights"][0])
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (27, 35, 26, 34)  # round(c) +- 4
    np.testing.assert_allclose(ref["offset_weights"][0][ref["offset_weights"][0] > 0], 0.1)


def test_smaller_person_wins_overlap() -> None:
    kp = np.zeros((2, 5, 3))
    kp[0, :, :2], kp[1, :, :2] = [10.0, 10.0], [12.0, 11.0]
    kp[..., 2] = 2
    centers = np.array([[20.5, 20.5, 1], [21.5, 20.5, 1]])
    for order in ([0, 1], [1, 0]):
        out = TargetEncoder(FIVE, 48)(kp[order], centers[order], np.array([400.0, 100.0])[order])
        # at a shared pixel the person with area 100 (keypoints at (12, 11)) keeps the offsets
        assert out["offsets"][0, 20, 20] == 20 - 12 and out["offsets"][1, 20, 20] == 20 - 11
        assert out["offset_weights"][0, 20, 20] == np.float32(0.1)


def test_zero_keypoint_people_and_small_people() -> None:
    kp = np.zeros((3, 17, 3))
    kp[1, :, :] = [50, 60, 2]
    kp[2, :, :] = [10, 20, 1]
    centers, areas = person_centers_and_areas(kp, np.array([5000.0, 5000.0, 100.0]))
    assert centers[:, 2].tolist() == [0.0, 1.0, 0.0]  # fixed bug; small person: no centre
    assert centers[1, :2].tolist() == [50, 60]
    assert areas[1] == 50**2 + 60**2  # position-dependent reference "area"
    buggy, _ = person_centers_and_areas(kp, np.array([5000.0, 5000.0, 100.0]), fix_zero_keypoint_center=False)
    assert buggy[0].tolist() == [0.0, 0.0, 1.0]
    _, box = person_centers_and_areas(kp, area_mode="box")
    assert box[1] == 1.0  # degenerate box floored at 1


def test_input_errors() -> None:
    enc = TargetEncoder(COCO, 32)
    with pytest.raises(ValueError, match="same people"):
        enc(np.zeros((2, 17, 3)), np.zeros((1, 3)), np.ones(2))
    with pytest.raises(ValueError, match="output size"):
        enc(np.zeros((0, 17, 3)), np.zeros((0, 3)), np.ones(0), np.ones((16, 16)))
    with pytest.raises(ValueError, match="window"):
        TargetEncoder(COCO, 32, window="round")
