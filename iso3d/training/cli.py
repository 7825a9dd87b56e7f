"""``iso3d train``: one command per stage, and one for all (encoder → stage 1 → stage 2)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from pathlib import Path

__all__ = ["add_object_sampling_arguments", "add_train_parser", "object_sampling_from_args", "run_train"]


def add_object_sampling_arguments(p) -> None:
    """``--orientation``, ``--max-primitives``, ``--object-scale``: how the procedural objects are drawn
    (``iso3d.data.ObjectSampling``). Unset, they take the bundle's training objects
    (``BundleConfig.training_objects``), else ObjectSampling's defaults (not restated here, so that
    building the parser imports no torch)."""
    p.add_argument("--orientation", choices=["upright", "any"], default=None,
                   help="procedural objects resting upright and turned about the vertical axis only, or in any "
                        "3D orientation (default: the bundle's training objects', else any)")
    p.add_argument("--max-primitives", type=int, default=None,
                   help="procedural objects are unions of 1..N primitives (default: the bundle's, else 3)")
    p.add_argument("--object-scale", type=float, default=None,
                   help="multiply the primitives' sizes and centres, at most 2 (default: the bundle's, else 1)")


def object_sampling_from_args(args: argparse.Namespace, training_objects: dict | None = None):
    """The :class:`iso3d.data.ObjectSampling` of :func:`add_object_sampling_arguments`: each option given
    overrides ``training_objects`` (a bundle's ``config.training_objects``), which overrides the defaults."""
    from iso3d.data import ObjectSampling

    given = {"orientation": args.orientation, "max_primitives": args.max_primitives, "scale": args.object_scale}
    return ObjectSampling(**{**(training_objects or {}), **{k: v for k, v in given.items() if v is not None}})


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train the image encoder, stage 1, stage 2, or all in sequence")
    p.add_argument("stage", choices=["encoder", "stage1", "stage2", "all"])
    p.add_argument("--out", required=True, help="run folder: checkpoints/, log.jsonl, samples/, bundle/")
    p.add_argument("--init", default=None, help="start from this bundle (folder or hub id); default: a new iso3d-tiny")
    p.add_argument("--steps", type=int, default=1000, help="diffusion steps per stage")
    p.add_argument("--encoder-steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8, help="objects per step")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--encoder-lr", type=float, default=1e-3)
    p.add_argument("--encoder-colour-jitter", type=float, default=0.0,
                   help="encoder stage: random colour change of this strength on each frame of a pair, so "
                        "the embedding must learn shape, not only colour (0.3 for iso3d-tiny; 0: off)")
    p.add_argument("--train-size", type=int, default=512, help="procedural training objects")
    p.add_argument("--image-size", type=int, default=32)
    add_object_sampling_arguments(p)
    p.add_argument("--width", type=int, default=32, help="iso3d-tiny base width (new models only)")
    p.add_argument("--noise-schedule", choices=["release", "ddpm"], default=None,
                   help="new models only (not with --init): the release's scaled-linear betas 0.00085-0.012 "
                        "(default; the shipped model rescales it, --zero-terminal-snr) or DDPM's pixel-space linear betas 1e-4-0.02")
    p.add_argument("--prediction-type", choices=["epsilon", "v_prediction"], default=None,
                   help="new models only: what the UNet predicts (default epsilon, as the release)")
    p.add_argument("--zero-terminal-snr", action="store_true",
                   help="new models only, with --prediction-type v_prediction: rescale the schedule so that "
                        "training's last timestep is pure noise, as sampling's first")
    p.add_argument("--cache-dir", default="data/cache")
    p.add_argument("--render-workers", type=int, default=os.cpu_count() or 1,
                   help="processes that render the data set when it is not cached (default: all cores)")
    p.add_argument("--ref-timestep", type=int, default=0)
    p.add_argument("--ref-camera", choices=["pose", "zeros"], default="pose")
    p.add_argument("--reference-dropout", type=float, default=0.0,
                   help="stage 2: probability that a step trains without the reference frame (as at inference)")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate warm-up (diffusion stages)")
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant",
                   help="after warm-up: constant, or a cosine decay to 0 at --steps")
    p.add_argument("--cosine-to-time-limit", action="store_true",
                   help="with --lr-schedule cosine and --time-limit: the decay also ends at the time limit, "
                        "whichever comes first (the schedule then depends on wall time)")
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--sample-every", type=int, default=0)
    p.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no")
    p.add_argument("--seed", type=int, default=0,
                   help="the model's initialization and the training objects (set SEED, 0-9: disjoint sets)")
    p.add_argument("--ema-decay", type=float, default=0.0,
                   help="keep an exponential moving average of the UNet weights (e.g. 0.999) and save it")
    p.add_argument("--snr-gamma", type=float, default=None,
                   help="Min-SNR-gamma loss weighting of the diffusion stages (e.g. 5); default: plain eps-MSE")
    p.add_argument("--time-limit", type=float, default=None,
                   help="seconds per stage: stop early, with a checkpoint, once this much has passed")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint of each stage")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="the saved bundle's sampling CFG (MultiViewPipeline's default; kept by later stages)")
    p.add_argument("--sampling-eta", type=float, default=None, help="the saved bundle's DDIM η (0 to 1)")
    p.add_argument("--sds-guidance-scale", type=float, default=None,
                   help="the saved bundle's SDS CFG, what iso3d generate uses with it")
    p.add_argument("--device", default="auto")
    p.add_argument("--attention-backend", choices=["auto", "triton", "torch"], default="auto",
                   help="joint attention: the Triton kernel (auto on CUDA) or its PyTorch twin")


def run_train(args: argparse.Namespace, device) -> int:
    import torch

    from iso3d.models.bundle import MultiViewDiffusion, SchedulerConfig
    from iso3d.models.presets import tiny_bundle_config

    from .trainer import DataConfig, TrainConfig, train

    for flag, value, low, high in (("--guidance-scale", args.guidance_scale, 0, math.inf),
                                   ("--sampling-eta", args.sampling_eta, 0, 1),
                                   ("--sds-guidance-scale", args.sds_guidance_scale, 0, math.inf),
                                   ("--encoder-colour-jitter", args.encoder_colour_jitter, 0, 1)):
        if value is not None and not low <= value <= high:
            raise ValueError(f"{flag} must be in [{low}, {high}], got {value}")
    if args.encoder_colour_jitter and args.stage not in ("encoder", "all"):
        raise ValueError(f"--encoder-colour-jitter applies to the encoder stage only (stage 'encoder' or 'all'), "
                         f"not {args.stage!r}")
    out = Path(args.out)
    schedule_options = {"--noise-schedule": args.noise_schedule is not None,
                        "--prediction-type": args.prediction_type is not None,
                        "--zero-terminal-snr": args.zero_terminal_snr}
    given = [name for name, on in schedule_options.items() if on]
    if args.init and given:
        raise ValueError(f"{', '.join(given)} set{'s' if len(given) == 1 else ''} a new model's schedule; {args.init} keeps its own (drop one of the two)")
    if args.init:
        model = MultiViewDiffusion.from_pretrained(args.init, backend=args.attention_backend)
    else:
        scheduler = dataclasses.replace(SchedulerConfig.ddpm() if args.noise_schedule == "ddpm" else SchedulerConfig(),
                                        prediction_type=args.prediction_type or "epsilon",
                                        zero_terminal_snr=args.zero_terminal_snr)
        model = MultiViewDiffusion(tiny_bundle_config(image_size=args.image_size, width=args.width, scheduler=scheduler),
                                   seed=args.seed, backend=args.attention_backend)
    sampling = {"guidance_scale": args.guidance_scale, "sampling_eta": args.sampling_eta,
                "sds_guidance_scale": args.sds_guidance_scale}
    model.config = dataclasses.replace(model.config, **{k: v for k, v in sampling.items() if v is not None})
    data = DataConfig(train_size=args.train_size, image_size=model.config.image_size, seed=args.seed,
                      cache_dir=args.cache_dir, render_workers=args.render_workers,
                      object_sampling=object_sampling_from_args(args, model.config.training_objects))
    base = TrainConfig(batch_size=args.batch_size, lr=args.lr, ref_timestep=args.ref_timestep,
                       ref_camera=args.ref_camera, checkpoint_every=args.checkpoint_every,
                       sample_every=args.sample_every, mixed_precision=args.mixed_precision, seed=args.seed, data=data,
                       time_limit=args.time_limit, ema_decay=args.ema_decay, snr_gamma=args.snr_gamma,
                       reference_dropout=args.reference_dropout, warmup_steps=args.warmup_steps,
                       lr_schedule=args.lr_schedule, cosine_to_time_limit=args.cosine_to_time_limit)
    stages = ["encoder", "stage1", "stage2"] if args.stage == "all" else [args.stage]
    for stage in stages:
        encoder = stage == "encoder"  # the encoder keeps a constant rate (its own --encoder-lr)
        cfg = dataclasses.replace(base, stage=stage, steps=args.encoder_steps if encoder else args.steps,
                                  lr=args.encoder_lr if encoder else args.lr,
                                  warmup_steps=0 if encoder else base.warmup_steps,
                                  lr_schedule="constant" if encoder else base.lr_schedule,
                                  cosine_to_time_limit=base.cosine_to_time_limit and not encoder,
                                  encoder_colour_jitter=args.encoder_colour_jitter if encoder else 0.0)
        try:
            result = train(model, cfg, out / stage, resume=args.resume, device=device)
        except KeyboardInterrupt as exc:  # train saved the step it finished; say how to go on, not a traceback
            print(f"{exc or 'train: interrupted'}", file=sys.stderr)
            return 130  # the shell's code for SIGINT
        bundle = model.save_pretrained(out / stage / "bundle")
        (out / stage / "result.json").write_text(json.dumps({**result, "config": dataclasses.asdict(cfg)}, indent=2))
        print(f"{stage}: {result['step']} steps, final loss {result['loss']:.4f}, {result['seconds']:.0f}s -> {bundle}")
        torch.manual_seed(args.seed)
    return 0
