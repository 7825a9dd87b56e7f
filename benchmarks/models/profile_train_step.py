"""Where one training step of iso3d-tiny's diffusion stage goes (the GPU recipe's batch of 256 objects).

iso3d-tiny trained at about 5 steps/s at batch 256 on an H100 (model card, sixth session): slow for a
3.4 MB UNet on 32² images, which suggests launch- or host-bound steps. This times the step as
``iso3d.training.trainer.train`` takes it (batch indexing and transfer, ``diffusion_loss`` with bf16
autocast, backward, AdamW, the weight average, ``loss.item()``), part by part with CUDA events (host
clock on CPU), counts the kernel launches per step and lists the kernels with the most device time.
Synthetic data of the dataset's shapes (values do not change the speed).

Usage (repository root)::

    python benchmarks/models/profile_train_step.py --batch 256 --steps 10 --out /tmp/prof   # GPU
    python benchmarks/models/profile_train_step.py --batch 4 --steps 2                       # CPU check
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from iso3d.utils.torchvision_compat import patch_torchvision_if_needed

patch_torchvision_if_needed()  # before open_clip (the image encoder) imports torchvision

from iso3d.data.dataset import stack_batch  # noqa: E402
from iso3d.models.bundle import MultiViewDiffusion  # noqa: E402
from iso3d.models.presets import tiny_bundle_config  # noqa: E402
from iso3d.training.trainer import TrainConfig, diffusion_loss  # noqa: E402

PARTS = ("batch", "forward", "backward", "optimizer", "average", "item")


class _Clock:
    """Marks between the parts: CUDA events in stream order on a GPU, the host clock on the CPU."""

    def __init__(self, device: torch.device):
        self.gpu = device.type == "cuda"
        self.marks: list = []

    def mark(self):
        if self.gpu:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def split_ms(self) -> list[float]:
        if self.gpu:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) for a, b in zip(self.marks, self.marks[1:])]
        return [(b - a) * 1e3 for a, b in zip(self.marks, self.marks[1:])]


def synthetic_data(n_objects: int, size: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """What ``MultiViewDataset`` holds: uint8 RGBA views and references, and poses (degrees)."""
    return {"views": torch.randint(0, 256, (n_objects, 4, 4, size, size), generator=gen, dtype=torch.uint8),
            "refs": torch.randint(0, 256, (n_objects, 4, size, size), generator=gen, dtype=torch.uint8),
            "poses": torch.rand(n_objects, 10, generator=gen) * 30}


def batch_of(data: dict, idx: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
    """``MultiViewDataset.batch`` then the trainer's transfer, on the synthetic data."""
    batch = stack_batch(data["views"], data["refs"], data["poses"], idx)
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None, help="folder for train_step.txt")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.steps < 1 or args.warmup < 0:
        parser.error("--batch and --steps must be >= 1 and --warmup >= 0")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator().manual_seed(0)
    model = MultiViewDiffusion(tiny_bundle_config(image_size=32, width=args.width), seed=0).to(device)
    model.unet.backend = "torch"  # as gpu_session.sh trains (ATTN=torch)
    model.unet.install_processors()
    model.image_encoder.requires_grad_(False)
    params = [p for p in model.unet.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=1e-3)
    average = [p.detach().clone() for p in params]
    cfg = TrainConfig(stage="stage1", batch_size=args.batch, mixed_precision="bf16" if device.type == "cuda" else "no")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    data = synthetic_data(max(4096, args.batch), 32, gen)
    splits = []

    def step(clock: _Clock | None):
        mark = clock.mark if clock is not None else (lambda: None)
        mark()
        batch = batch_of(data, torch.randint(0, data["views"].shape[0], (args.batch,), generator=gen), device)
        mark()
        with autocast:
            loss = diffusion_loss(model, batch, cfg, gen)
        if not torch.isfinite(loss):  # the trainer's check (a host sync before the backward)
            raise FloatingPointError("non-finite loss")
        mark()
        optim.zero_grad(set_to_none=True)
        loss.backward()
        mark()
        optim.step()
        mark()
        with torch.no_grad():
            torch._foreach_lerp_(average, [p.detach() for p in params], 1e-3)
        mark()
        loss.item()
        mark()

    for _ in range(args.warmup):
        step(None)
    for _ in range(args.steps):
        clock = _Clock(device)
        step(clock)
        splits.append(clock.split_ms())
    medians = {name: statistics.median(s[i] for s in splits) for i, name in enumerate(PARTS)}
    total = sum(medians.values())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [f"device {name}, torch {torch.__version__}; iso3d-tiny width {args.width}, batch {args.batch} objects "
             f"(4 views each), {'bf16 autocast' if device.type == 'cuda' else 'fp32'}; median of {args.steps} steps",
             f"step {total:.1f} ms ({1e3 / total:.1f} steps/s): " + ", ".join(f"{k} {v:.1f}" for k, v in medians.items())]
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(2):
            step(None)
        if device.type == "cuda":
            torch.cuda.synchronize()
    events = prof.key_averages()
    if device.type == "cuda":
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        launches = sum(e.count for e in kernels) / 2
        device_ms = sum(e.self_device_time_total for e in kernels) / 2 / 1e3
        lines.append(f"{launches:.0f} kernel launches per step, {device_ms:.1f} ms of kernel time per step "
                     f"({100 * device_ms / total:.0f} % of the step: the rest is the GPU waiting on the host)")
        rows = sorted(kernels, key=lambda e: e.self_device_time_total, reverse=True)[:args.top]
        lines += [f"  {e.self_device_time_total / 2 / 1e3:8.2f} ms {e.count / 2:6.1f}x  {e.key[:100]}" for e in rows]
    else:
        rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:args.top]
        lines += [f"  {e.self_cpu_time_total / 2 / 1e3:8.2f} ms {e.count / 2:6.1f}x  {e.key[:100]}" for e in rows]
    report = "\n".join(lines)
    print(report)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "train_step.txt").write_text(report + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
