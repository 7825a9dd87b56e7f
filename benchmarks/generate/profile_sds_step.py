"""Where one SDS step's time goes, by ``torch.profiler``: iso3d's named ranges and the top operators.

The step is ``bench_sds_step``'s (same model, config, field states and optimizer), so the profile
explains its timings. For each render stage and field state this prints the samples per ray the grid
marched and the field evaluated after pruning, the step's median wall time, the device time inside
iso3d's ranges (``iso3d.render.march_and_prune``, ``iso3d.render.field``, ``iso3d.render.composite``,
``iso3d.sds.vae_encode``, ``iso3d.sds.unet``, and this script's ``backward`` and ``optimizer``),
and the operators with the most device time, forward and backward. Profiling adds overhead to the
wall time; the benchmarks, not this, give the timings.

Usage (repository root; a GPU profiles the official model, the CPU the tiny one, to check the script)::

    python benchmarks/generate/profile_sds_step.py --stages 64 256 --field-states blob surface --out /tmp/prof
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from iso3d.generation import sds_step
from iso3d.utils.torchvision_compat import patch_torchvision_if_needed

patch_torchvision_if_needed()  # before bench_sds_step imports open_clip (as benchmarks/conftest.py does)
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_sds_step as bench  # noqa: E402  (its setup: one source of truth for the benchmarked step)

from iso3d.models.cuda_graph import CUDAGraphedForward  # noqa: E402

RANGES = ("iso3d.render.march_and_prune", "iso3d.render.field", "iso3d.render.composite", "iso3d.sds.vae_encode",
          "iso3d.sds.unet", "backward", "optimizer")


def _device_us(event, own: bool = False) -> float:
    """An event's device time in µs (CPU time on the CPU), across torch versions' attribute names;
    ``own``: its self time, without the operators it called (so that nested operators are not counted twice)."""
    prefix = "self_" if own else ""
    for name in (f"{prefix}device_time_total", f"{prefix}cuda_time_total"):
        value = getattr(event, name, 0) or 0
        if value:
            return float(value)
    return float(getattr(event, f"{prefix}cpu_time_total"))


def profile(model, device: torch.device, stage: int, field_state: str, steps: int, warmup: int, top: int) -> str:
    on_gpu = device.type == "cuda"
    cfg, fld, renderer = bench._setup(model, bench._config(device, False, stage), device,
                                      "optimized" if on_gpu else "naive", field_state=field_state, prune=True,
                                      build_grid=True)
    unet = CUDAGraphedForward(model.unet) if on_gpu else None
    optim = torch.optim.AdamW(fld.parameters(), lr=1e-3, betas=(0.9, 0.99), eps=1e-15)
    token = torch.randn(1, 1, model.config.unet.cross_attention_dim, device=device)
    acp = model.config.scheduler.alphas_cumprod(device)
    gen = torch.Generator().manual_seed(0)
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    stats: dict = {}

    def step():
        loss = sds_step(model, fld, renderer, token, acp, cfg, 0, gen, unet=unet, stats=stats)
        with torch.profiler.record_function("backward"):
            optim.zero_grad(set_to_none=True)
            loss.backward()
        with torch.profiler.record_function("optimizer"):
            optim.step()

    for _ in range(warmup):  # graph capture, autotuning, allocator warm-up
        step()
    sync()
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if on_gpu else [])
    walls, kept, marched = [], [], []
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            start = time.perf_counter()
            step()
            sync()
            walls.append(time.perf_counter() - start)
            kept.append(stats["samples_per_ray"])
            marched.append(stats["marched_per_ray"])
    events = prof.key_averages()
    size, batch = cfg.milestones[0][1] or model.config.image_size, cfg.milestones[0][2]
    lines = [f"== stage {size}^2, {batch * cfg.views.n_views} views, field {field_state}: "
             f"samples/ray marched {statistics.mean(marched):.1f}, kept {statistics.mean(kept):.1f}; "
             f"step median {statistics.median(walls) * 1e3:.1f} ms under the profiler ({steps} steps)"]
    by_key = {e.key: e for e in events}
    total = sum(_device_us(by_key[r]) for r in RANGES if r in by_key)
    unit = "device" if on_gpu else "CPU"
    lines.append(f"{unit} time per step in iso3d's ranges:")
    for r in RANGES:
        if r in by_key:
            us = _device_us(by_key[r]) / steps
            lines.append(f"  {r:32s} {us / 1e3:9.2f} ms  {100 * us * steps / max(total, 1e-9):5.1f} %")
    ops = sorted((e for e in events if e.key not in RANGES and not e.key.startswith("iso3d.")),
                 key=lambda e: _device_us(e, own=True), reverse=True)[:top]
    lines.append(f"top {top} operators and kernels by their own {unit} time per step (calls per step):")
    for e in ops:
        lines.append(f"  {_device_us(e, own=True) / steps / 1e3:9.2f} ms  {e.count / steps:6.1f}x  {e.key[:110]}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, nargs="+", default=[64, 256], choices=[64, 256])
    parser.add_argument("--field-states", nargs="+", default=["surface"], choices=list(bench.FIELD_STATES))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, default=None, help="folder for profile.txt")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = bench.build_model(device, smoke=False)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (tiny model)"
    reports = [f"device {name}, torch {torch.__version__}"]
    for stage in args.stages:
        for state in args.field_states:
            reports.append(profile(model, device, stage, state, args.steps, args.warmup, args.top))
            print(reports[-1], flush=True)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "profile.txt").write_text("\n\n".join(reports) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
