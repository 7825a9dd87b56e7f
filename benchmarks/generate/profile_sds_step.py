"""Where one SDS step's time goes, by ``torch.profiler``: iso3d's named ranges and the top operators.

The step is ``bench_sds_step``'s (same model, config, field states and optimizer), so the profile
explains its timings. For each render stage and field state this prints the samples per ray the grid
marched and the field evaluated after pruning; the forward / backward / optimizer split of the step
(CUDA events: autograd launches the backward's kernels from its own thread, where the profiler's
ranges do not see them); the device time inside the forward's ranges (``iso3d.render.march_and_prune``,
``iso3d.render.field``, ``iso3d.render.composite``, ``iso3d.sds.vae_encode``, ``iso3d.sds.unet``);
and the kernels with the most device time, forward and backward. Profiling adds overhead; the
benchmarks, not this, give the timings.

Usage (repository root; a GPU profiles the official model, the CPU the tiny one, to check the script)::

    python benchmarks/generate/profile_sds_step.py --stages 64 256 --field-states blob surface --out /tmp/prof
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from iso3d.utils.torchvision_compat import patch_torchvision_if_needed

patch_torchvision_if_needed()  # before bench_sds_step imports open_clip (as benchmarks/conftest.py does)
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_sds_step as bench  # noqa: E402  (its setup: one source of truth for the benchmarked step)

from iso3d.models.cuda_graph import CUDAGraphedForward  # noqa: E402

# forward ranges, by the profiler (their kernels are launched from the calling thread)
RANGES = ("iso3d.render.march_and_prune", "iso3d.render.field", "iso3d.render.composite", "iso3d.sds.vae_encode",
          "iso3d.sds.unet")


def _device_us(event, own: bool = False) -> float:
    """An event's device time in µs (CPU time on the CPU), across torch versions' attribute names;
    ``own``: its self time, without the operators it called (so that nested operators are not counted twice)."""
    prefix = "self_" if own else ""
    for name in (f"{prefix}device_time_total", f"{prefix}cuda_time_total"):
        value = getattr(event, name, 0) or 0
        if value:
            return float(value)
    return float(getattr(event, f"{prefix}cpu_time_total"))


def profile(model, device: torch.device, stage: int, field_state: str, steps: int, warmup: int, top: int,
            density_head: str | None = None, vae: str = "vae_nchw") -> str:
    with bench._vae_encode(model, **bench.DENSITY_HEAD_VAES[vae]) as encode:
        return _profile(model, device, stage, field_state, steps, warmup, top, density_head, encode, vae)


def _profile(model, device, stage, field_state, steps, warmup, top, density_head, encode, vae) -> str:
    on_gpu = device.type == "cuda"
    cfg, fld, renderer = bench._setup(model, bench._config(device, False, stage), device,
                                      "optimized" if on_gpu else "naive", field_state=field_state, prune=True,
                                      build_grid=True, density_head=density_head)
    unet = CUDAGraphedForward(model.unet) if on_gpu else None
    stats, phases = {}, []
    step = bench._training_step(model, cfg, fld, renderer, device, unet, encode, stats=stats, phases=phases)
    for _ in range(warmup):  # graph capture, autotuning, allocator warm-up
        step()
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    sync()
    phases.clear()
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if on_gpu else [])
    kept, marched = [], []
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step()
            kept.append(stats["samples_per_ray"])
            marched.append(stats["marched_per_ray"])
        sync()
    size, batch = cfg.milestones[0][1] or model.config.image_size, cfg.milestones[0][2]
    split = {name: statistics.median([m[i].ms_until(m[i + 1]) for m in phases])
             for i, name in enumerate(("forward", "backward", "optimizer"))}
    lines = [f"== stage {size}^2, {batch * cfg.views.n_views} views, field {field_state}, analytic normals "
             f"{fld.config.analytic_normals_impl} (density head {density_head or 'auto'}), {vae}: samples/ray marched "
             f"{statistics.mean(marched):.1f}, kept {statistics.mean(kept):.1f}; step under the profiler, median of "
             f"{steps}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in split.items())]
    events = prof.key_averages()
    by_key = {e.key: e for e in events}
    unit = "device" if on_gpu else "CPU"
    lines.append(f"{unit} time per step in the forward's ranges:")
    for r in RANGES:
        if r in by_key:
            lines.append(f"  {r:32s} {_device_us(by_key[r]) / steps / 1e3:9.2f} ms")
    if on_gpu:  # kernels only: each appears once, under its own name (operators would count it again)
        rows = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    else:
        rows = [e for e in events if e.key not in RANGES and e.key not in ("backward", "optimizer")]
    rows = sorted(rows, key=lambda e: _device_us(e, own=True), reverse=True)[:top]
    total = sum(_device_us(e, own=True) for e in rows) or 1.0
    lines.append(f"top {top} {'kernels' if on_gpu else 'operators'} by their own {unit} time per step (calls per step, share of these rows):")
    for e in rows:
        us = _device_us(e, own=True)
        lines.append(f"  {us / steps / 1e3:9.2f} ms  {e.count / steps:6.1f}x  {100 * us / total:5.1f} %  {e.key[:100]}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, nargs="+", default=[64, 256], choices=[64, 256])
    parser.add_argument("--field-states", nargs="+", default=["surface"], choices=list(bench.FIELD_STATES))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, default=None, help="folder for profile.txt")
    parser.add_argument("--density-head", choices=["fused", "triton", "torch"], default=None,
                        help="analytic normals through the fused op, or the separate ops with this density head "
                             "(default: the field config's)")
    parser.add_argument("--vae", choices=list(bench.DENSITY_HEAD_VAES), default="vae_nchw",
                        help="the VAE encode as generate runs it, or channels-last with the fused GroupNorm → SiLU")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = bench.build_model(device, smoke=False)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (tiny model)"
    reports = [f"device {name}, torch {torch.__version__}"]
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    for stage in args.stages:
        for state in args.field_states:
            reports.append(profile(model, device, stage, state, args.steps, args.warmup, args.top, args.density_head,
                                   args.vae))
            print(reports[-1], flush=True)
            if args.out is not None:  # after each: a run cut off by its time limit keeps what it has
                (args.out / "profile.txt").write_text("\n\n".join(reports) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
