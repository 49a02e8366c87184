"""The notebooks run top to bottom (nbclient, ``python3`` kernel) on the COCO sample, without a trained
checkpoint, from either working directory, and show what they claim to show."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = ROOT / "notebooks"
CELL_TIMEOUT = 180


def _kernel_name() -> str:
    """``python3``: ipykernel's kernel, which jupyter_client starts with this interpreter (``sys.executable``)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.fail(f"no 'python3' Jupyter kernel; install one with `{sys.executable} -m ipykernel install --user`")
    return "python3"


def execute(name: str, cwd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, float]:
    """Run ``notebooks/<name>`` in a fresh kernel started in ``cwd``; returns the executed notebook and
    the wall time. The executed copy is kept under ``tmp_path`` for inspection (the committed file is
    not touched)."""
    for var in ("DEKR_CHECKPOINT", "DEKR_IMAGES", "DEKR_SAMPLE_DATA", "MPLBACKEND"):
        monkeypatch.delenv(var, raising=False)  # the kernel inherits the environment
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the quickstart's untrained checkpoint goes there
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name=_kernel_name(), resources={"metadata": {"path": str(cwd)}}
    )
    start = time.perf_counter()
    try:
        client.execute()
    finally:
        nbformat.write(nb, tmp_path / name)
    return nb, time.perf_counter() - start


def stored_outputs(name: str) -> list:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]


def text(nb: dict) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            elif "data" in out:
                parts.append(out["data"].get("text/plain", ""))
    return "".join(parts)


def figures(nb: dict) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", []))


@pytest.mark.parametrize("name", ["quickstart.ipynb", "targets_and_decoding.ipynb"])
def test_committed_without_outputs(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    assert stored_outputs(name) == [], f"clear the outputs of notebooks/{name} before committing"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.slow
def test_quickstart_notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No checkpoint: the notebook saves an untrained tiny model in train.py's layout, loads it, predicts
    the four sample images and plots their overlays (run from notebooks/)."""
    nb, seconds = execute("quickstart.ipynb", NOTEBOOKS, tmp_path, monkeypatch)
    out = text(nb)
    print(f"quickstart.ipynb: {seconds:.1f} s")
    assert "no DEKR_CHECKPOINT: saved an untrained tiny model" in out
    match = re.search(r"QUICKSTART images=(\d+) poses=\[([\d, ]*)\]", out)
    assert match, out[-2000:]
    assert int(match.group(1)) == 4  # the COCO sample images
    assert figures(nb) >= 1


@pytest.mark.slow
def test_targets_and_decoding_notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Targets decoded as network outputs give back every decodable ground-truth person to well under
    one output pixel (run from the project root)."""
    nb, seconds = execute("targets_and_decoding.ipynb", ROOT, tmp_path, monkeypatch)
    out = text(nb)
    print(f"targets_and_decoding.ipynb: {seconds:.1f} s")
    match = re.search(r"TARGETS_DECODING decodable=(\d+) decoded=(\d+) max_error_px=(\S+)", out)
    assert match, out[-2000:]
    decodable, decoded, max_error = int(match.group(1)), int(match.group(2)), float(match.group(3))
    assert decodable >= 3 and decoded == decodable
    assert max_error < 1.0
    assert figures(nb) >= 4  # ground truth, augmentation, targets, decoding steps
