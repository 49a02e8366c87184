"""Network benchmark: parameters, forward time, training-step time and peak memory.

Each (model, adaptive-conv kernel) row runs in a fresh subprocess so that its peak resident
memory (``ru_maxrss``; ``torch.cuda.max_memory_allocated`` on GPU) is its own.

    python benchmarks/bench_model.py                      # w18_small, w32 (512), both kernels
    python benchmarks/bench_model.py --models w32 w48 --checkpoint
    DEKR_REF=/path/to/HRNet/DEKR python benchmarks/bench_model.py --reference   # + official W32

The official model row (``--reference``) imports the official code through
``../shared/oracle/dekr_harness.py``; the project itself never does.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

from timing import median_seconds, random_targets, training_step

CONFIGS = {  # name: (backbone, heatmap channels, input size)
    "w18_small": ("hrnet_w18_small", 32, 512),
    "w32": ("hrnet_w32", 32, 512),
    "w48": ("hrnet_w48", 48, 640),
}
ORACLE = Path(__file__).resolve().parents[2] / "shared" / "oracle"


def _median_time(fn, repeats: int, sync) -> float:
    return median_seconds(fn, repeats, warmup=1, sync=sync)


def run_one(model_name: str, impl: str, size: int | None, repeats: int, checkpoint: bool, threads: int) -> dict:
    """Measure one row in this process and return it as a dict."""
    import torch

    from dekr.model import DEKR

    torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    backbone, heat_ch, default_size = CONFIGS[model_name]
    size = size or default_size
    if impl == "reference":
        model = _reference_model(model_name).to(device)
    else:
        model = DEKR(17, backbone, heatmap_channels=heat_ch, adaptive_impl=impl, checkpoint=checkpoint).to(device)
    params = sum(p.numel() for p in model.parameters())
    x1 = torch.randn(1, 3, size, size, device=device)
    x2 = torch.randn(2, 3, size, size, device=device)
    model.eval()
    with torch.no_grad():
        fwd = _median_time(lambda: model(x1), repeats, sync)
    model.train()
    step = training_step(model, x2, random_targets(17, size, 2, device))

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    train = _median_time(step, repeats, sync)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    label = impl + ("+ckpt" if checkpoint else "")
    return {
        "model": model_name,
        "impl": label,
        "size": size,
        "params": params,
        "forward_s": fwd,
        "train_step_s": train,
        "peak_mib": peak,
        "device": str(device),
    }


def _reference_model(model_name: str):
    """The official W32/W48 model (requires DEKR_REF)."""
    if not os.environ.get("DEKR_REF"):
        raise SystemExit("--reference needs DEKR_REF pointing at a checkout of the official HRNet/DEKR code")
    sys.path.insert(0, str(ORACLE))
    import dekr_harness

    dekr_harness.setup()
    import models
    from config import cfg

    ref = os.environ["DEKR_REF"]
    yaml = {
        "w32": f"{ref}/experiments/coco/w32/w32_4x_reg03_bs10_512_adam_lr1e-3_coco_x140.yaml",
        "w48": f"{ref}/experiments/coco/w48/w48_4x_reg03_bs5_640_adam_lr1e-3_coco_x140.yaml",
    }[model_name]
    c = cfg.clone()
    c.defrost()
    c.merge_from_file(yaml)
    c.freeze()
    model = models.hrnet_dekr.get_pose_net(c, is_train=True)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["w18_small", "w32"], choices=sorted(CONFIGS))
    parser.add_argument("--impls", nargs="+", default=["grid_sample", "deform"])
    parser.add_argument("--size", type=int, default=None, help="input side (default: the config's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint", action="store_true", help="also time grid_sample with recomputation")
    parser.add_argument("--reference", action="store_true", help="add the official W32 model (needs DEKR_REF)")
    parser.add_argument("--one", nargs=3, metavar=("MODEL", "IMPL", "CKPT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        row = run_one(args.one[0], args.one[1], args.size, args.repeats, args.one[2] == "1", args.threads)
        print("ROW " + json.dumps(row))
        return
    jobs = [(m, i, "0") for m in args.models for i in args.impls]
    if args.checkpoint:
        jobs += [(m, "grid_sample", "1") for m in args.models]
    if args.reference:
        jobs = [("w32", "reference", "0")] + jobs
    rows = []
    for model, impl, ckpt in jobs:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            model,
            impl,
            ckpt,
            "--repeats",
            str(args.repeats),
            "--threads",
            str(args.threads),
        ] + (["--size", str(args.size)] if args.size else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("ROW ")), None)
        if line is None:
            print(f"{model}/{impl}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(line[4:]))
        r = rows[-1]
        print(f"  measured {model}/{r['impl']}: fwd {r['forward_s']:.2f}s train {r['train_step_s']:.2f}s", flush=True)
    import torch

    print(
        f"\nDEKR network benchmark — torch {torch.__version__}, {args.threads} threads, "
        f"device {rows[0]['device'] if rows else '?'}; forward at batch 1, train step (fwd+loss+bwd+Adam) "
        f"at batch 2; medians of {args.repeats}"
    )
    header = f"{'model':10} {'kernel':18} {'input':>5} {'params':>12} {'forward s':>10} {'train s':>9} {'peak MiB':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['model']:10} {r['impl']:18} {r['size']:>5} {r['params']:>12,} {r['forward_s']:>10.2f} "
            f"{r['train_step_s']:>9.2f} {r['peak_mib']:>9.0f}"
        )
    ref = next((r for r in rows if r["impl"] == "reference"), None)
    if ref:
        for r in rows:
            if r["model"] == "w32" and r is not ref:
                print(
                    f"w32 {r['impl']}: forward {ref['forward_s'] / r['forward_s']:.2f}x, "
                    f"train step {ref['train_step_s'] / r['train_step_s']:.2f}x faster than the official model"
                )


if __name__ == "__main__":
    main()
