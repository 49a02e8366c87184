"""One benchmark command: a table per model config and backend (eager, compiled, onnxruntime).

    python benchmarks/run.py                 # w18_small + w32 at 512, CPU rows (+ GPU rows on a GPU)
    python benchmarks/run.py --quick         # 256 input, fewer repeats: a few minutes on 2 CPU cores
    python benchmarks/run.py --w48           # add w48 (640 input; slow on CPU)
    python benchmarks/run.py --backends eager onnxruntime --no-train

Columns (one row per backend; every row runs in a fresh subprocess so its peak memory is its own):

* ``fwd ms``: one forward pass, batch 1, ``S x S`` input (median of ``--repeats``).
* ``e2e img/s``: :class:`dekr.inference.predictor.PoseEstimator` on an ``S x S`` uint8 image, batch 1,
  no flip: warp + normalise + forward + decoding + NMS.
* ``decode ms``: decoding alone (``benchmarks/bench_decode.py``: fabricated outputs of 10 people at
  ``S/4``, flip maps, rescoring), the same for every backend of a config; ``decode %`` its share of
  the e2e time.
* ``train img/s``: batch 2, forward + backward + Adam step with :class:`dekr.losses.DEKRLoss`
  (torch backends only).
* ``loader smp/s``: one process of the training data pipeline (read, augment, targets) at ``S`` on the
  COCO sample images (from ``benchmarks/bench_data.py``; a loader with W workers does about W times
  that).
* ``peak MiB inf / train``: CPU: ``ru_maxrss`` of the row's process after the inference part, then
  after training; GPU: ``torch.cuda.max_memory_allocated``.

CPU rows: ``eager`` (the config's CPU kernel, ``grid_sample``), ``compiled`` (``torch.compile``,
falls back to eager with a note), ``ort-deform`` and ``ort-grid_sample`` (onnxruntime, ``DeformConv``
or ``GridSample`` + ``MatMul`` graph, graph optimisation ``all``, ``--threads`` intra-op threads).
GPU rows: eager fp32, eager bf16 + channels_last, compiled bf16 + channels_last, onnxruntime CUDA
(when the onnxruntime build has it).

After the tables, ``side by side``: eager and the onnxruntime graphs timed *interleaved* in one process
(round-robin, median), at 1 thread and at ``--threads``: the honest way to compare on a shared machine;
``--explore-ort`` adds every graph optimisation level there. ``--passive`` makes idle threads sleep
(``OMP_WAIT_POLICY=PASSIVE``, no onnxruntime spinning): use it when other processes share the cores.

Networks have untrained weights with small random adaptive transforms (off-grid sampling, as a
trained model); speed does not depend on the values.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from timing import median_seconds, random_targets

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent

CONFIGS = {  # name: (backbone, heatmap channels, input size of the recipe)
    "w18_small": ("hrnet_w18_small", 32, 512),
    "w32": ("hrnet_w32", 32, 512),
    "w48": ("hrnet_w48", 48, 640),
}
CPU_BACKENDS = ("eager", "compiled", "ort-deform", "ort-grid_sample")
GPU_BACKENDS = ("gpu-eager-fp32", "gpu-eager-bf16-cl", "gpu-compiled-bf16-cl", "gpu-ort")


# --------------------------------------------------------------------------- helpers
def median_ms(fn: Callable[[], Any], repeats: int, sync: Callable[[], None] = lambda: None, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in milliseconds."""
    return 1e3 * median_seconds(fn, repeats, warmup, sync)


def peak_mib(device: str) -> float:
    """Peak memory so far: CUDA allocator peak on GPU, process ru_maxrss on CPU (MiB)."""
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_network(config: str, impl: str) -> Any:
    """Untrained DEKR of ``config`` with small random adaptive transforms (seeded) and BN statistics
    from two random batches (without them a random HRNet-W32 reaches activations of 1e9)."""
    import torch

    from dekr.model import DEKR, GroupedAdaptiveBlock

    backbone, heat_ch, _ = CONFIGS[config]
    model = DEKR(17, backbone, heatmap_channels=heat_ch, adaptive_impl=impl)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, GroupedAdaptiveBlock):
                m.transform.weight.copy_(torch.randn(m.transform.weight.shape, generator=g) * 1e-3)
                m.transform.bias.copy_(torch.randn(m.transform.bias.shape, generator=g) * 0.3)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None  # cumulative average over the calibration batches
        model.train()
        for _ in range(2):
            model(torch.randn(2, 3, 128, 128, generator=g))
    return model.eval()


def passive() -> bool:
    """Whether idle worker threads sleep (``--passive``): ``OMP_WAIT_POLICY=PASSIVE`` for torch, no
    spinning for onnxruntime. On a shared, loaded machine spinning threads collapse multi-threaded
    torch (a 2-thread eager forward measured 10x slower than 1 thread under a load of 3 on 2 cores)."""
    return os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"


def onnx_file(cache: Path, config: str, impl: str, size: int) -> Path:
    return cache / f"dekr_{config}_{impl}_{size}.onnx"


# --------------------------------------------------------------------------- one row (subprocess)
def run_row(config: str, backend: str, size: int, repeats: int, threads: int, train: bool, cache: Path) -> dict:
    """Measure one (config, backend) row in this process."""
    import numpy as np
    import torch

    from dekr.inference.predictor import PoseEstimator, TestConfig
    from dekr.keypoints import COCO

    torch.set_num_threads(threads)
    gpu = backend.startswith("gpu-")
    device = "cuda" if gpu else "cpu"
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    row: dict[str, Any] = {"config": config, "backend": backend, "size": size, "device": device, "note": ""}
    x1 = torch.randn(1, 3, size, size, device=device)
    image = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)

    is_ort = backend.startswith("ort") or backend == "gpu-ort"
    if is_ort:
        from dekr.deploy.onnx_backend import OnnxModel

        impl = "deform" if backend in ("ort-deform", "gpu-ort") else "grid_sample"
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpu else ["CPUExecutionProvider"]
        runner = OnnxModel(
            onnx_file(cache, config, impl, size),
            providers=providers,
            intra_op_num_threads=None if gpu else threads,
            allow_spinning=not passive(),
        )
        xn = x1.cpu().numpy()
        row["fwd_ms"] = median_ms(lambda: runner.run_numpy(xn), repeats)
        model: Any = runner
        row["peak_inf_mib"] = peak_mib("cpu")
    else:
        from dekr.deploy.speed import optimize_for_inference

        impl = "deform" if gpu else "grid_sample"
        net = build_network(config, impl).to(device)
        cl = backend.endswith("-cl")
        precision = "bf16" if "bf16" in backend else "fp32"
        compiled = "compiled" in backend
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = optimize_for_inference(net, channels_last=cl, compile=compiled, precision=precision)
            with torch.inference_mode():
                t0 = time.perf_counter()
                model(x1)  # compiles, for the compiled backend
                sync()
                if compiled:
                    row["compile_s"] = time.perf_counter() - t0
                row["fwd_ms"] = median_ms(lambda: model(x1), repeats, sync)
        if compiled and not model.compiled:
            row["note"] = "compile failed: eager fallback; "
        row["note"] += "; ".join(str(w.message)[:80] for w in caught if issubclass(w.category, RuntimeWarning))
        row["peak_inf_mib"] = peak_mib(device)

    test = TestConfig(input_size=size, flip=False, scales=(1.0,), batch_size=1, max_dets=20)
    estimator = PoseEstimator(model, COCO, None, test, device=device)
    row["e2e_ips"] = 1e3 / median_ms(lambda: estimator.predict_batch([image]), repeats, sync)

    if train and not is_ort:
        row.update(train_row(config, backend, size, repeats, device, sync))
    return row


def train_row(config: str, backend: str, size: int, repeats: int, device: str, sync: Callable[[], None]) -> dict:
    """Training images/s at batch 2 (forward, DEKRLoss, backward, Adam step) and peak memory."""
    import torch

    from dekr.losses import DEKRLoss

    impl = "deform" if device == "cuda" else "grid_sample"
    net = build_network(config, impl).to(device).train()
    cl = backend.endswith("-cl")
    dtype = torch.bfloat16 if "bf16" in backend else None
    if cl:
        net = net.to(memory_format=torch.channels_last)
    fn = net
    out: dict[str, Any] = {}
    if "compiled" in backend:
        fn = torch.compile(net)
    batch = random_targets(17, size, 2, device)
    x2 = torch.randn(2, 3, size, size, device=device)
    if cl:
        x2 = x2.contiguous(memory_format=torch.channels_last)
    loss_fn = DEKRLoss()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def step() -> None:
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype is not None):
            heatmaps, offsets = fn(x2)
        loss = loss_fn(heatmaps, offsets, batch)["total"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    if "compiled" in backend:
        t0 = time.perf_counter()
        try:
            step()
        except Exception as err:  # inductor unavailable or failing: measure eager instead
            out["note_train"] = f"train compile failed ({type(err).__name__}): eager"
            fn = net
            step()
        out["train_compile_s"] = time.perf_counter() - t0
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    out["train_ips"] = 2e3 / median_ms(step, repeats, sync)
    out["peak_train_mib"] = peak_mib(device)
    return out


def export_file(config: str, impl: str, size: int, cache: Path) -> dict:
    """Export (and verify at ``size``) the ONNX file a row will time."""
    import torch

    from dekr.deploy.export import export_onnx

    torch.set_num_threads(2)
    path = onnx_file(cache, config, impl, size)
    result = export_onnx(
        build_network(config, "grid_sample"), path, impl=impl, input_size=size, verify=True, verify_dynamic=False
    )
    return {"export_s": result.export_s, "max_abs_diff": result.max_abs_diff}


def side_by_side(config: str, size: int, repeats: int, threads: int, cache: Path, explore: bool) -> list[dict]:
    """Eager vs onnxruntime forward times, interleaved round-robin in one process (batch 1), at 1 thread
    and at ``threads`` threads."""
    rows = []
    for n in sorted({1, threads}):
        rows.extend(_side_by_side(config, size, repeats, n, cache, explore))
    return rows


def _side_by_side(config: str, size: int, repeats: int, threads: int, cache: Path, explore: bool) -> list[dict]:
    import torch

    from dekr.deploy.onnx_backend import OnnxModel

    torch.set_num_threads(threads)
    net = build_network(config, "grid_sample")
    x = torch.randn(1, 3, size, size)
    xn = x.numpy()
    runs: dict[str, Callable[[], Any]] = {}

    def eager() -> None:
        with torch.inference_mode():
            net(x)

    runs["eager (grid_sample)"] = eager
    levels = ("basic", "extended", "all") if explore else ("all",)
    for impl in ("deform", "grid_sample"):
        path = onnx_file(cache, config, impl, size)
        if not path.is_file():
            continue
        for level in levels:
            m = OnnxModel(
                path,
                providers=["CPUExecutionProvider"],
                intra_op_num_threads=threads,
                graph_optimization_level=level,
                allow_spinning=not passive(),
            )
            runs[f"ort {impl}, level {level}"] = lambda m=m: m.run_numpy(xn)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for fn in runs.values():
        fn()  # warm-up
    for _ in range(max(repeats, 3)):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["eager (grid_sample)"])
    return [
        {
            "config": config,
            "size": size,
            "threads": threads,
            "run": k,
            "fwd_ms": 1e3 * statistics.median(v),
            "speedup": base / statistics.median(v),
        }
        for k, v in times.items()
    ]


# --------------------------------------------------------------------------- per-config extras
def decode_ms(size: int) -> float | None:
    """Decoding ms/image from benchmarks/bench_decode.py (10 people, flip maps, rescoring), or None."""
    try:
        sys.path.insert(0, str(BENCH))
        import bench_decode
        import torch

        from dekr.codec.synthetic import fabricate_outputs
        from dekr.keypoints import COCO
        from dekr.rescore import Rescorer
    except Exception:
        return None
    out = fabricate_outputs(COCO, 10, size // 4, size // 4, seed=10)
    return 1e3 * bench_decode.ours(out, 1, Rescorer(COCO).eval(), torch.device("cpu"))


def loader_samples_per_s(size: int, reps: int = 3) -> float | None:
    """One-process training-sample throughput at ``size`` from benchmarks/bench_data.py, or None.

    Hook: uses ``bench_data.loader_samples_per_s(size)`` when that function exists, else the dataset
    it builds (COCO sample images, yaml augmentation, targets).
    """
    try:
        sys.path.insert(0, str(BENCH))
        import bench_data
    except Exception:
        return None
    if hasattr(bench_data, "loader_samples_per_s"):
        return float(bench_data.loader_samples_per_s(size))
    try:
        ds = bench_data.CocoKeypointDataset(
            bench_data.ANN,
            bench_data.COCO_SAMPLE,
            bench_data.COCO,
            train=True,
            transform=bench_data.TrainTransform(
                bench_data.COCO, size, bench_data.default_codec_config().stride, seed=0
            ),
            encoder=bench_data.TargetEncoder(bench_data.COCO, size // 4),
        )
        n = len(ds)
        return 1e3 * n / median_ms(lambda: [ds[i] for i in range(n)], reps)
    except Exception:
        return None


def extras_row(size: int) -> dict:
    import torch

    torch.set_num_threads(1)
    return {"decode_ms": decode_ms(size), "loader_sps": loader_samples_per_s(size)}


# --------------------------------------------------------------------------- driver
def child(args: list[str], timeout: float) -> dict:
    """Run this script with ``args`` in a fresh process; return its JSON (or an error row)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{") or line.startswith("["):
            return json.loads(line)
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": " | ".join(tail)[:300]}


def fmt(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def machine_line() -> str:
    import numpy
    import onnxruntime
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores, {gpu}; Python {platform.python_version()}, torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, numpy {numpy.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="256 input, 3 repeats")
    parser.add_argument("--models", nargs="+", default=["w18_small", "w32"], choices=sorted(CONFIGS))
    parser.add_argument("--w48", action="store_true", help="add w48 (slow on CPU)")
    parser.add_argument(
        "--backends",
        nargs="+",
        default=None,
        help=f"subset of {CPU_BACKENDS + GPU_BACKENDS} (default: CPU rows, + GPU rows on a GPU)",
    )
    parser.add_argument("--size", type=int, default=None, help="input side (default: the config's; 256 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5; 3 with --quick)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads and onnxruntime intra-op threads")
    parser.add_argument("--no-train", action="store_true", help="skip the training columns")
    parser.add_argument("--explore-ort", action="store_true", help="side by side: every ORT optimisation level")
    parser.add_argument(
        "--passive",
        action="store_true",
        help="idle threads sleep: OMP_WAIT_POLICY=PASSIVE, no onnxruntime spinning (shared machines)",
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per row")
    parser.add_argument("--json", type=Path, default=None, help="also write every row to this file")
    parser.add_argument("--_row", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--_export", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--_side", nargs=1, help=argparse.SUPPRESS)
    parser.add_argument("--_extras", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 5)

    if args._row:
        config, backend, size = args._row
        print(json.dumps(run_row(config, backend, int(size), repeats, args.threads, not args.no_train, args.cache)))
        return
    if args._export:
        print(json.dumps(export_file(args._export[0], args._export[1], args.size, args.cache)))
        return
    if args._side:
        print(json.dumps(side_by_side(args._side[0], args.size, repeats, args.threads, args.cache, args.explore_ort)))
        return
    if args._extras:
        print(json.dumps(extras_row(args.size)))
        return

    if args.passive:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # inherited by the row processes
    import torch

    models = list(dict.fromkeys(args.models + (["w48"] if args.w48 else [])))
    gpu = torch.cuda.is_available()
    backends = args.backends or (list(CPU_BACKENDS) + (list(GPU_BACKENDS) if gpu else []))
    cache = args.cache or Path(tempfile.mkdtemp(prefix="dekr_bench_"))
    common = ["--threads", str(args.threads), "--repeats", str(repeats), "--cache", str(cache)]
    if args.no_train:
        common.append("--no-train")
    if args.explore_ort:
        common.append("--explore-ort")
    print(f"# DEKR benchmark ({'quick' if args.quick else 'full'}), {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"# {machine_line()}")
    print(
        f"# {args.threads} threads, {repeats} repeats (median), idle threads "
        f"{'sleep (--passive)' if passive() else 'spin (default)'}, load average at start {os.getloadavg()[0]:.2f}"
    )
    all_rows: list[dict] = []
    for config in models:
        size = args.size or (256 if args.quick else CONFIGS[config][2])
        sized = [*common, "--size", str(size)]
        t0 = time.perf_counter()
        exports = {}
        for impl in ("deform", "grid_sample"):
            if any(b.endswith(impl) or (impl == "deform" and b == "gpu-ort") for b in backends):
                exports[impl] = child(["--_export", config, impl, *sized], args.timeout)
        extras = child(["--_extras", *sized], args.timeout)
        rows = [dict(child(["--_row", config, b, str(size), *sized], args.timeout), backend=b) for b in backends]
        side = child(["--_side", config, *sized], args.timeout)
        print(
            f"\n## {config} ({CONFIGS[config][0]}), input {size}x{size}, batch 1 (train: batch 2)"
            f"  [{time.perf_counter() - t0:.0f} s]"
        )
        for impl, e in exports.items():
            if "error" in e:
                print(f"  export {impl}: FAILED: {e['error']}")
            else:
                print(
                    f"  export {impl}: {e['export_s']:.0f} s, onnxruntime vs PyTorch max |diff| {e['max_abs_diff']:.1e}"
                )
        print(
            "| backend | fwd ms | e2e img/s | decode ms | decode % | train img/s | loader smp/s "
            "| peak MiB inf | peak MiB train | notes |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        dec = extras.get("decode_ms")
        for r in rows:
            if "error" in r:
                print(f"| {r['backend']} | error: {r['error']} |")
                continue
            share = 100 * dec * r["e2e_ips"] / 1e3 if dec and r.get("e2e_ips") else None
            notes = [r.get("note", ""), r.get("note_train", "")]
            if "compile_s" in r:
                notes.append(f"compile {r['compile_s']:.0f} s")
            if "train_compile_s" in r:
                notes.append(f"train compile {r['train_compile_s']:.0f} s")
            print(
                f"| {r['backend']} | {fmt(r.get('fwd_ms'))} | {fmt(r.get('e2e_ips'), '.2f')} | {fmt(dec, '.2f')} "
                f"| {fmt(share)} | {fmt(r.get('train_ips'), '.2f')} | {fmt(extras.get('loader_sps'))} "
                f"| {fmt(r.get('peak_inf_mib'), '.0f')} | {fmt(r.get('peak_train_mib'), '.0f')} "
                f"| {'; '.join(n for n in notes if n)} |"
            )
            all_rows.append({**r, **extras})
        if isinstance(side, list):
            print(f"side by side, interleaved in one process (batch 1, {size}x{size}):")
            for s in side:
                print(f"  {s['threads']} thread(s)  {s['run']:<32} {s['fwd_ms']:8.1f} ms   {s['speedup']:.2f}x eager")
            all_rows.extend({"side_by_side": True, **s} for s in side)
        elif "error" in side:
            print(f"side by side: error: {side['error']}")
    print(f"\n# load average at end {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(all_rows, indent=1))


if __name__ == "__main__":
    main()
