"""Two-stage fine-tuning of the multi-view model (and the contrastive image encoder of iso3d-tiny).

* ``encoder``: open_clip vision tower trained with open_clip's ``ClipLoss`` so that two views of one
  object embed close together (views as positive pairs).
* ``stage1``: the UNet predicts the noise of 4 noisy views, conditioned on the frozen encoder's
  embedding of the reference view (replaced by the zero embedding with probability
  ``cond_dropout`` for classifier-free guidance).
* ``stage2`` (EMA): as stage 1, plus the clean reference frame in the joint attention (timestep
  ``ref_timestep``, camera = its pose or zeros); the loss covers the noisy views only.

Runs on one CPU, one GPU, or several processes under ``torchrun`` (DDP; gloo on CPU, NCCL on GPU).
Checkpoints every ``checkpoint_every`` steps (model, optimizer, step and RNG state); ``resume=True``
continues exactly. Loss curves go to ``log.jsonl``; sample grids to ``samples/`` at intervals.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from iso3d.cameras import camera_embedding
from iso3d.data import MultiViewDataset, ObjectSampling, RenderSettings
from iso3d.io import composite_on_white
from iso3d.models.bundle import MultiViewDiffusion
from iso3d.models.image_encoder import preprocess_images
from iso3d.models.unet import ReferenceFrame
from iso3d.utils.interrupt import StepInterrupt

__all__ = ["DataConfig", "TrainConfig", "train"]

Stage = Literal["encoder", "stage1", "stage2"]


@dataclass(frozen=True)
class DataConfig:
    train_size: int = 512
    val_size: int = 16
    image_size: int = 32
    seed: int = 0
    cache_dir: str | None = "data/cache"
    render_workers: int = 1  # processes rendering the data set on a cache miss
    object_sampling: ObjectSampling = ObjectSampling()  # primitives per object, upright or any orientation


@dataclass(frozen=True)
class TrainConfig:
    stage: Stage = "stage1"
    steps: int = 1000
    batch_size: int = 8  # objects per step (each has 4 views + 1 reference)
    lr: float = 2e-4
    weight_decay: float = 0.0
    cond_dropout: float = 0.1
    ref_timestep: int = 0  # DESIGN.md: default t_ref = 0
    ref_camera: Literal["pose", "zeros"] = "pose"
    # Stage 2: the probability that a step trains without the reference frame (as stage 1), so the
    # model keeps working without it, which is how it is used at inference (CLIP embedding only).
    reference_dropout: float = 0.0
    # Learning rate: linear warm-up over `warmup_steps`, then constant or a cosine decay to 0 at `steps`.
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "cosine"] = "constant"
    # Cosine only: also count progress as elapsed / time_limit and take the further of the two, so a
    # time-boxed run (a GPU lease) ends its decay at the limit whatever its speed. The schedule then
    # depends on wall time: such a run does not resume or repeat step for step.
    cosine_to_time_limit: bool = False
    checkpoint_every: int = 200
    sample_every: int = 0  # 0: never
    log_every: int = 10
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    seed: int = 0
    time_limit: float | None = None  # seconds: stop early (with a checkpoint) once this much has passed
    # Exponential moving average of the UNet weights (diffusion stages): 0 = off. With decay d the
    # saved model holds the average, which samples cleaner than the last weights of a short run. The
    # decay warms up as min(d, (1 + k) / (10 + k)) at the k-th update of the run (diffusers' EMAModel
    # warm-up), so the starting weights do not linger in the average: without it, after n steps they
    # keep a weight dⁿ (0.998⁸⁰⁵ = 20%, which ruined the samples of a first GPU run).
    ema_decay: float = 0.0
    # Min-SNR-γ loss weighting (Hang et al. 2023, arXiv 2303.09556): each sample's ε-loss is weighted by
    # min(SNR_t, γ) / SNR_t with SNR_t = ᾱ_t / (1 − ᾱ_t), so the low-noise steps count less (the paper
    # finds the timesteps' gradients conflict; the noisy steps are where the coarse shape is decided).
    # None: the plain ε-MSE (the release's objective).
    snr_gamma: float | None = None
    # Encoder stage: colour jitter of strength s on each frame of a contrastive pair, independently
    # (per-channel gains N(1, s²), a brightness shift N(0, (s/2)²), on the object's pixels, clamped to
    # [0, 1]). Without it random colours alone tell the objects of a batch apart and the embedding
    # learns little shape (eval-model's kind probe: 55 % for iso3d-tiny's encoder before, 75 % with
    # s = 0.3 at batch 256; its model card). 0: off.
    encoder_colour_jitter: float = 0.0
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self):
        if self.stage not in ("encoder", "stage1", "stage2"):
            raise ValueError(f"TrainConfig.stage must be 'encoder', 'stage1' or 'stage2', got {self.stage!r}")
        if self.steps < 0 or self.batch_size < 1:
            raise ValueError(f"TrainConfig: steps must be >= 0 and batch_size >= 1, got {self.steps}, {self.batch_size}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"TrainConfig.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.time_limit is not None and self.time_limit <= 0:
            raise ValueError(f"TrainConfig.time_limit must be positive seconds or None, got {self.time_limit}")
        if not 0 <= self.cond_dropout < 1:
            raise ValueError(f"TrainConfig.cond_dropout must be in [0, 1), got {self.cond_dropout}")
        if not 0 <= self.reference_dropout <= 1:
            raise ValueError(f"TrainConfig.reference_dropout must be in [0, 1], got {self.reference_dropout}")
        if self.warmup_steps < 0 or self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"TrainConfig: warmup_steps must be >= 0 and lr_schedule 'constant' or 'cosine', "
                             f"got {self.warmup_steps} and {self.lr_schedule!r}")
        if self.snr_gamma is not None and not (isinstance(self.snr_gamma, (int, float)) and self.snr_gamma > 0):
            raise ValueError(f"TrainConfig.snr_gamma must be a positive number or None, got {self.snr_gamma!r}")
        if not 0 <= self.encoder_colour_jitter <= 1:
            raise ValueError(f"TrainConfig.encoder_colour_jitter must be in [0, 1], got {self.encoder_colour_jitter}")
        if self.encoder_colour_jitter > 0 and self.stage != "encoder":
            raise ValueError(f"TrainConfig.encoder_colour_jitter applies to the encoder stage only; stage "
                             f"{self.stage!r} would ignore {self.encoder_colour_jitter} (set it to 0)")
        if self.cosine_to_time_limit and (self.lr_schedule != "cosine" or self.time_limit is None):
            raise ValueError("TrainConfig.cosine_to_time_limit needs lr_schedule='cosine' and a time_limit, "
                             f"got {self.lr_schedule!r} and {self.time_limit}")

    def ema_decay_at(self, update: int) -> float:
        """The weight-average decay of the ``update``-th update (0-based) of this run."""
        return min(self.ema_decay, (1 + update) / (10 + update))

    def lr_at(self, step: int, elapsed: float = 0.0) -> float:
        """The learning rate of step ``step`` (0-based), ``elapsed`` seconds into the run.

        ``elapsed`` matters only with ``cosine_to_time_limit``: the cosine's progress is then the
        larger of the step fraction and ``elapsed / time_limit``."""
        factor = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        if self.lr_schedule == "cosine" and self.steps > self.warmup_steps:
            progress = (step - self.warmup_steps) / (self.steps - self.warmup_steps)
            if self.cosine_to_time_limit and step >= self.warmup_steps:
                progress = max(progress, elapsed / self.time_limit)
            progress = min(1.0, max(0.0, progress))
            factor *= 0.5 * (1 + math.cos(math.pi * progress))
        return self.lr * factor


# ----------------------------------------------------------------------------------------------
# distributed helpers
# ----------------------------------------------------------------------------------------------
def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); return (rank, world)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if world > 1:
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _out_of_time(start: float, limit: float | None, device) -> bool:
    """Whether the time limit has passed; with several processes, rank 0's clock decides for all."""
    if limit is None:
        return False
    over = time.time() - start >= limit
    dist = _dist()
    if dist is None:
        return over
    flag = torch.tensor([float(over)], device=device)
    dist.broadcast(flag, src=0)  # every rank must stop at the same step, or the all-reduce hangs
    return bool(flag.item())


def _average_gradients(params) -> None:
    dist = _dist()
    if dist is None:
        return
    world = dist.get_world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


# ----------------------------------------------------------------------------------------------
# losses
# ----------------------------------------------------------------------------------------------
def diffusion_loss(model: MultiViewDiffusion, batch: dict, cfg: TrainConfig, gen: torch.Generator,
                   *, noise: torch.Tensor | None = None, timesteps: torch.Tensor | None = None) -> torch.Tensor:
    """The bundle's prediction MSE (ε or v, ``SchedulerConfig.prediction_type``) on the noisy views
    (stage 1, or stage 2 with the clean reference frame), Min-SNR-γ weighted per sample when
    ``cfg.snr_gamma`` is set: min(SNR, γ)/SNR for ε, min(SNR, γ)/(SNR + 1) for v (Hang et al. 2023)."""
    views, device = batch["views"], batch["views"].device
    b, v = views.shape[:2]
    x0 = model.encode_images(composite_on_white(views).flatten(0, 1))  # [B·V, C, h, w]
    schedule = model.config.scheduler
    acp = schedule.alphas_cumprod(device)
    t = timesteps if timesteps is not None else torch.randint(0, acp.numel(), (b,), generator=gen).to(device)
    t = t.repeat_interleave(v)  # one timestep per object, as MVDream
    eps = noise if noise is not None else torch.randn(x0.shape, generator=gen).to(x0)
    a = acp[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    with torch.no_grad():
        token = model.image_encoder(batch["reference"])  # [B, 1, D]
    keep = (torch.rand(b, generator=gen) >= cfg.cond_dropout).to(device).view(b, 1, 1)
    context = (token * keep).repeat_interleave(v, dim=0)
    cams = camera_embedding(batch["elevation"].flatten().cpu(), batch["azimuth"].flatten().cpu(),
                            convention=model.config.camera_convention).to(device)
    reference = None
    drop_reference = cfg.reference_dropout > 0 and float(torch.rand((), generator=gen)) < cfg.reference_dropout
    if cfg.stage == "stage2" and not drop_reference:
        ref_x0 = model.encode_images(composite_on_white(batch["reference"]))
        if cfg.ref_camera == "pose":
            ref_cam = camera_embedding(batch["reference_elevation"].cpu(), batch["reference_azimuth"].cpu(),
                                       convention=model.config.camera_convention).to(device)
        else:
            ref_cam = torch.zeros(b, 16, device=device)
        reference = ReferenceFrame(ref_x0, ref_cam, torch.full((b,), cfg.ref_timestep, device=device))
    pred = model.unet(x_t, t, context, cams, n_views=v, reference=reference)
    target = schedule.target(x0.float(), eps.float(), a)
    if cfg.snr_gamma is None:
        return F.mse_loss(pred.float(), target)
    snr = a / (1 - a)
    weight = snr.clamp(max=cfg.snr_gamma) / (snr if schedule.prediction_type == "epsilon" else snr + 1)  # [B·V, 1, 1, 1]
    return (weight * (pred.float() - target).square()).mean()


def colour_jitter(frames: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    """Each RGBA frame ``[..., 4, H, W]`` (values in [0, 1]) with its own random colour change.

    RGB becomes ``clamp(rgb · g + c, 0, 1)`` with per-frame, per-channel gains ``g ~ N(1, strength²)``
    and a per-frame shift ``c ~ N(0, (strength/2)²)``; alpha is kept, so the object's shape is untouched
    and pixels outside it (alpha 0) stay background when composited."""
    lead = frames.shape[:-3]
    gain = 1 + strength * torch.randn(*lead, 3, 1, 1, generator=gen).to(frames)
    shift = 0.5 * strength * torch.randn(*lead, 1, 1, 1, generator=gen).to(frames)
    return torch.cat([(frames[..., :3, :, :] * gain + shift).clamp(0, 1), frames[..., 3:, :, :]], dim=-3)


def contrastive_loss(model: MultiViewDiffusion, batch: dict, logit_scale: torch.Tensor, gen: torch.Generator,
                     colour_jitter_strength: float = 0.0) -> torch.Tensor:
    """open_clip's ClipLoss with two random frames (of the 4 views + reference) of each object as a pair,
    each frame colour-jittered on its own when ``colour_jitter_strength > 0`` (:func:`colour_jitter`)."""
    from open_clip.loss import ClipLoss

    frames = torch.cat([batch["views"], batch["reference"][:, None]], dim=1)  # [B, V+1, 4, H, W]
    b, f = frames.shape[:2]
    first = torch.randint(0, f, (b,), generator=gen)
    second = (first + torch.randint(1, f, (b,), generator=gen)) % f
    if colour_jitter_strength > 0:
        frames = colour_jitter(frames, colour_jitter_strength, gen)
    enc = model.image_encoder
    def embed(x):
        return F.normalize(enc.visual(preprocess_images(x, enc.config.load_size, enc.config.image_size)), dim=-1)

    idx = torch.arange(b)
    return ClipLoss()(embed(frames[idx, first]), embed(frames[idx, second]), logit_scale.exp())


# ----------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------
def _batch(dataset: MultiViewDataset, indices: torch.Tensor, device) -> dict:
    return {name: t.to(device, non_blocking=True) for name, t in dataset.batch(indices).items()}


def _checkpoints(out: Path) -> list[Path]:
    return sorted((out / "checkpoints").glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))


def train(model: MultiViewDiffusion, cfg: TrainConfig, out_dir: str | Path, *, resume: bool = False,
          device: torch.device | str = "cpu", progress: bool = True, dataset: MultiViewDataset | None = None) -> dict:
    """Run ``cfg.stage`` for ``cfg.steps`` steps (or until ``cfg.time_limit``).

    Returns ``{"step", "loss", "seconds", "stopped_by_time_limit"}``.
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    rank, world = init_distributed(device)
    out = Path(out_dir)
    if rank == 0:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    model.to(device)
    if dataset is None:
        d = cfg.data
        dataset = MultiViewDataset("train", d.train_size, seed=d.seed, settings=RenderSettings(image_size=d.image_size),
                                   object_sampling=d.object_sampling, cache_dir=d.cache_dir, progress=progress and rank == 0, workers=d.render_workers)
    if cfg.stage == "encoder":
        model.image_encoder.visual.requires_grad_(True)
        logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07), device=device))
        params = list(model.image_encoder.visual.parameters()) + [logit_scale]
    else:
        model.image_encoder.requires_grad_(False)
        logit_scale = None
        params = list(model.unet.parameters())
    optim = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = [p.detach().clone() for p in params] if cfg.ema_decay > 0 and cfg.stage != "encoder" else None
    step = 0
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    if resume and _checkpoints(out):
        state = torch.load(_checkpoints(out)[-1], map_location=device, weights_only=False)
        if state["stage"] != cfg.stage:
            raise ValueError(f"resume: the latest checkpoint is from stage {state['stage']!r}, not {cfg.stage!r}")
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optimizer"])
        if logit_scale is not None:
            logit_scale.data.copy_(state["logit_scale"])
        step = state["step"]
        if ema is not None:
            if state.get("ema") is None:
                raise ValueError("resume: the checkpoint has no weight average but TrainConfig.ema_decay > 0")
            for e, saved in zip(ema, state["ema"]):
                e.copy_(saved)
        gen.set_state(state["generators"][rank] if rank < len(state["generators"]) else state["generators"][0])
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16 if cfg.mixed_precision == "bf16" else torch.float16)
                if cfg.mixed_precision != "no" else torch.autocast(device.type, enabled=False))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.mixed_precision == "fp16")
    log = open(out / "log.jsonl", "a") if rank == 0 else None
    start, loss_value = time.time(), float("nan")
    bar = tqdm(total=cfg.steps, initial=step, desc=cfg.stage, disable=not progress or rank != 0)
    model.train()
    model.image_encoder.train(cfg.stage == "encoder")
    stopped_early = False
    # Ctrl-C stops between steps (iso3d.utils.interrupt), single-process only: under torchrun every
    # rank would have to stop at the same step, or the gradient all-reduce hangs.
    deferral = (StepInterrupt(lambda: bar.write("train: Ctrl-C: stopping after this step and saving a checkpoint "
                                                 "(Ctrl-C again: stop now)"))
                if world == 1 else contextlib.nullcontext())
    try:
        with deferral as interrupt:
            while step < cfg.steps:
                if _out_of_time(start, cfg.time_limit, device):
                    stopped_early = True
                    if rank == 0:
                        _save_checkpoint(out, model, optim, logit_scale, step, cfg, gen, ema)
                    break
                indices = torch.randint(0, len(dataset), (cfg.batch_size,), generator=gen)
                batch = _batch(dataset, indices, device)
                with autocast:
                    loss = (contrastive_loss(model, batch, logit_scale, gen, cfg.encoder_colour_jitter) if cfg.stage == "encoder"
                            else diffusion_loss(model, batch, cfg, gen))
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"train: non-finite loss {loss.item()} at step {step}; the last good checkpoint is kept in {out / 'checkpoints'}")
                optim.zero_grad(set_to_none=True)
                lr = cfg.lr_at(step, time.time() - start)
                for group in optim.param_groups:
                    group["lr"] = lr
                scaler.scale(loss).backward()
                _average_gradients(params)
                scaler.step(optim)
                scaler.update()
                if ema is not None:
                    with torch.no_grad():
                        torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - cfg.ema_decay_at(step))
                step += 1
                loss_value = loss.item()
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}")
                if log is not None and (step % cfg.log_every == 0 or step == cfg.steps):
                    log.write(json.dumps({"stage": cfg.stage, "step": step, "loss": loss_value, "lr": lr,
                                          "time": time.time() - start}) + "\n")
                    log.flush()
                if rank == 0 and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
                    _save_checkpoint(out, model, optim, logit_scale, step, cfg, gen, ema)
                if rank == 0 and cfg.sample_every and step % cfg.sample_every == 0:
                    _save_samples(model, dataset, out / "samples" / f"{cfg.stage}_{step:06d}.png")
                if interrupt is not None and interrupt.requested:  # Ctrl-C: this step is whole; keep it
                    path = _save_checkpoint(out, model, optim, logit_scale, step, cfg, gen, ema)
                    raise KeyboardInterrupt(f"train: {cfg.stage} interrupted after step {step}; its checkpoint is {path} "
                                            "(resume=True / --resume continues it)")
    finally:
        bar.close()
        if log is not None:
            log.close()
    if ema is not None:  # the model leaves training holding the average (what gets saved and sampled)
        with torch.no_grad():
            for p, e in zip(params, ema):
                p.copy_(e)
    model.image_encoder.requires_grad_(False)
    model.eval()
    # The bundle remembers its training objects, so that evaluation draws held-out objects alike.
    model.config = replace(model.config, training_objects=asdict(dataset.object_sampling))
    return {"step": step, "loss": loss_value, "seconds": time.time() - start, "stopped_by_time_limit": stopped_early}


def _save_checkpoint(out, model, optim, logit_scale, step, cfg, gen, ema=None):
    path = out / "checkpoints" / f"step_{step:07d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optim.state_dict(), "step": step, "stage": cfg.stage,
                "logit_scale": logit_scale.detach() if logit_scale is not None else None,
                "generators": [gen.get_state()], "config": asdict(cfg), "ema": ema}, tmp)
    tmp.replace(path)  # atomic: an interrupted save never leaves a truncated checkpoint
    for old in _checkpoints(out)[:-2]:  # keep the last two
        old.unlink()
    return path


@torch.no_grad()
def _save_samples(model, dataset, path: Path):
    from iso3d.io import save_image_grid
    from iso3d.pipelines import MultiViewPipeline

    was_training = model.training
    pipe = MultiViewPipeline(model)
    pipe.set_progress_bar_config(disable=True)
    sample = dataset[0]
    out = pipe(sample.reference, num_inference_steps=20, seed=0)
    truth = composite_on_white(sample.views).to(out.images)
    save_image_grid(torch.cat([out.images, truth]), path, columns=out.images.shape[0])
    model.train(was_training)
