"""The ``iso3d`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["main"]

# iso3d.export.MESH_SURFACES, restated so that building the parser imports no torch (a test keeps them equal).
_MESH_SURFACES = ("density", "rendered", "hull")
_MESH_THRESHOLD_HELP = ("the density level of the mesh (surface 'density') or of its box ('rendered', 'hull'): a "
                        "density (the release's 25, for a converged field) or 'silhouette', the level whose surface "
                        "has the renders' silhouettes (for short runs' soft fields; default: the config's, 25 on GPU)")


def _cmd_info(args: argparse.Namespace) -> int:
    from .info import collect, format_report

    print(format_report(collect()))
    return 0


def _cmd_selftest(args: argparse.Namespace) -> int:
    from .selftest import run_selftest

    rows = run_selftest(seed=args.seed)
    for name, err, bound, ok in rows:
        print(f"{'ok  ' if ok else 'FAIL'} {name}: max error {err:.2e} (bound {bound:.2e})")
    return 0 if all(ok for *_, ok in rows) else 1


def _resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available on this machine (see `iso3d info`)")
    return torch.device(name)


_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _cmd_views(args: argparse.Namespace) -> int:
    import torch

    from .io import save_image_grid
    from .pipelines import MultiViewPipeline

    device = _resolve_device(args.device)
    dtype = None if args.dtype is None else getattr(torch, _DTYPES[args.dtype])  # None: bf16 on GPU, fp32 on CPU
    pipe = MultiViewPipeline.from_pretrained(args.model, device=device, dtype=dtype, cuda_graph=args.cuda_graph)
    out = pipe(args.image, num_inference_steps=args.steps, guidance_scale=args.guidance, elevation=args.elevation,
               seed=args.seed)
    path = save_image_grid(out.images, args.output)
    print(f"wrote {len(out.images)} views to {path}")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from .generation import generate

    device = _resolve_device(args.device)
    try:
        asset = generate(args.image, args.model, steps=args.steps, seed=args.seed, device=device, out=args.output,
                         resume=args.resume, normals=args.normals, cuda_graph=args.cuda_graph,
                         guidance_scale=args.guidance, compile_vae=args.compile_vae,
                         fused_vae_norms=args.fused_vae_norms, mesh_surface=args.mesh_surface,
                         mesh_threshold=args.mesh_threshold,
                         dtype=None if args.dtype is None else _DTYPES[args.dtype])
    except KeyboardInterrupt as exc:  # generate saved the checkpoint; say how to go on, not a traceback
        print(f"{exc or 'generate: interrupted'}", file=sys.stderr)
        if (Path(args.output) / "checkpoint.pt").exists():
            print("continue it: the same command with --resume", file=sys.stderr)
        return 130  # the shell's code for SIGINT
    except FloatingPointError as exc:  # the loss went NaN/Inf: the message names the last good checkpoint
        print(exc, file=sys.stderr)
        return 1
    print(f"wrote the asset of {asset.run['steps']} steps ({asset.run['seconds']:.0f}s) to {args.output}: "
          "mesh.glb/.obj/.ply, turntable.gif (+ .mp4), views.png, field.pt, run.json")
    return _report_mesh(json.loads((Path(args.output) / "run.json").read_text()))


def _report_mesh(run: dict) -> int:
    mesh = run.get("mesh", {})
    if "error" in mesh:
        print(f"no mesh: {mesh['error']}", file=sys.stderr)
        if "no density above the threshold" in mesh["error"]:
            print("the rest is saved; mesh the level the renders show without optimizing again: "
                  "iso3d export OUTPUT -o OUTPUT_MESH --mesh-threshold silhouette", file=sys.stderr)
        return 1
    print(f"mesh: {mesh['faces']} faces, surface {mesh['surface']!r} (density level {mesh['threshold']:.3g})")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import dataclasses

    from .generation import Asset

    asset = Asset.load(args.run, device=_resolve_device(args.device))
    changes = {k: v for k, v in (("mesh_surface", args.mesh_surface), ("mesh_threshold", args.mesh_threshold))
               if v is not None}
    asset.config = dataclasses.replace(asset.config, **changes)  # validated by GenerateConfig
    asset.run["exported_from"] = str(args.run)
    asset.save(args.output)
    print(f"re-exported {args.run} to {args.output}: mesh.glb/.obj/.ply, turntable.gif (+ .mp4), views.png, "
          "field.pt, run.json")
    return _report_mesh(json.loads((Path(args.output) / "run.json").read_text()))


def _mesh_threshold(text: str) -> float | str:
    """``--mesh-threshold``: a positive density or ``silhouette``."""
    if text == "silhouette":
        return text
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive density or 'silhouette', got {text!r}")
    return value


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .data import MultiViewDataset, RenderSettings
    from .models.bundle import MultiViewDiffusion
    from .training.cli import object_sampling_from_args
    from .training.evaluate import evaluate_embedding_probes, evaluate_retrieval, evaluate_views, sample_grid

    if args.probe_objects != 0 and args.probe_objects < 4:  # a quarter of them is tested: at least one
        raise ValueError(f"--probe-objects must be 0 (skip the probes) or at least 4, got {args.probe_objects}")
    results, grid_names = {}, set()
    for bundle in args.bundles:
        model = MultiViewDiffusion.from_pretrained(bundle).to(_resolve_device(args.device))
        settings = RenderSettings(image_size=model.config.image_size)
        objects = object_sampling_from_args(args, model.config.training_objects)
        data = MultiViewDataset(args.split, args.objects, settings=settings, object_sampling=objects, cache_dir=args.cache_dir)
        results[bundle] = {**evaluate_views(model, data, num_inference_steps=args.steps, seed=args.seed,
                                            guidance_scale=args.guidance, with_reference=args.with_reference),
                           **evaluate_retrieval(model, data)}
        if args.probe_objects:  # validation objects: not the held-out test objects
            probe_data = MultiViewDataset("val", args.probe_objects, settings=settings, object_sampling=objects,
                                          cache_dir=args.cache_dir)
            results[bundle].update(evaluate_embedding_probes(model, probe_data))
        if args.grid:
            grid = Path(args.grid)
            name = Path(bundle).name if Path(bundle).name != "bundle" else Path(bundle).parent.name
            if name in grid_names:  # e.g. two runs' stage1/bundle: one grid each, not one overwritten
                name = f"{name}_{len(grid_names) + 1}"
            grid_names.add(name)
            results[bundle]["grid"] = str(sample_grid(model, data, grid.with_name(f"{grid.stem}_{name}{grid.suffix}"),
                                                      n_objects=args.grid_objects, seed=args.seed,
                                                      guidance_scale=args.guidance, with_reference=args.with_reference))
    print(json.dumps(results, indent=2))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation import METHODS, EvalConfig, evaluate_methods
    from .models.bundle import default_bundle_path, load_bundle_config
    from .training.cli import object_sampling_from_args

    methods = tuple(args.methods) if args.methods else tuple(m for m in METHODS if m != "stage1" or args.stage1_model)
    model = args.model or default_bundle_path()
    objects = object_sampling_from_args(args, load_bundle_config(model).training_objects)
    config = EvalConfig(objects=args.objects, steps=args.steps, seed=args.seed, normals=args.normals,
                        guidance_scale=args.guidance, object_sampling=objects,
                        mesh_surface=tuple(args.mesh_surface) if args.mesh_surface else None)
    results = evaluate_methods(model, stage1_bundle=args.stage1_model, config=config,
                               methods=methods, out=args.output, device=_resolve_device(args.device))
    # mesh/NeRF: the mesh's silhouettes against the NeRF's renders (IoU, and size: 1 = the renders')
    header = (f"{'method':<24}{'chamfer':>9}{'vol IoU':>9}{'mesh/NeRF IoU':>15}{'size':>6}{'PSNR':>8}{'SSIM':>7}"
              f"{'CLIP':>7}{'s/asset':>9}")
    print(header)
    for m, r in results["mean"].items():
        versus = (f"{r['mesh_silhouette_iou']:>15.3f}{r['mesh_size_vs_renders']:>6.2f}" if "mesh_silhouette_iou" in r
                  else f"{'-':>15}{'-':>6}")
        print(f"{m:<24}{r['chamfer']:>9.4f}{r['volume_iou']:>9.3f}{versus}{r['psnr']:>8.2f}{r['ssim']:>7.3f}"
              f"{r['clip_similarity']:>7.3f}{r['seconds']:>9.1f}")
    print(f"-> {args.output}/results.json")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .training.cli import run_train

    return run_train(args, _resolve_device(args.device))


def build_parser() -> argparse.ArgumentParser:
    from .training.cli import add_object_sampling_arguments, add_train_parser

    parser = argparse.ArgumentParser(prog="iso3d", description="Image to 3D by the Isotropic3D method.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="what this installation can run (GPU, Triton, optional backends) and why not")
    selftest = sub.add_parser("selftest", help="run each kernel against its PyTorch twin on this machine")
    selftest.add_argument("--seed", type=int, default=0)
    views = sub.add_parser("views", help="sample 4 consistent views of the object in an image, saved as one grid PNG")
    views.add_argument("image", help="input image (PNG/JPEG…; RGBA keeps its alpha, RGB with a plain background works)")
    views.add_argument("-o", "--output", default="views.png", help="grid PNG to write (default: views.png)")
    views.add_argument("--model", default=None, help="bundle folder, shipped name or hub id (default: the shipped iso3d-tiny)")
    views.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    views.add_argument("--guidance", type=float, default=None,
                       help="CFG scale (default: the bundle's: 3 for iso3d-tiny, 10 for the release)")
    views.add_argument("--elevation", type=float, default=15.0, help="camera elevation in degrees (default 15)")
    views.add_argument("--seed", type=int, default=0)
    views.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    views.add_argument("--dtype", default=None, choices=sorted(_DTYPES),
                       help="the model's dtype (default: bf16 on GPU, fp16 before Ampere; fp32 on CPU)")
    views.add_argument("--cuda-graph", action="store_true",
                       help="on a GPU, replay each denoising step's UNet call from a CUDA graph")
    gen = sub.add_parser("generate", help="image to 3D: SDS-optimize a NeRF, export mesh and turntable")
    gen.add_argument("image", help="input image (RGBA keeps its alpha; RGB with a plain background works)")
    gen.add_argument("-o", "--output", default="out", help="output folder (default: out/)")
    gen.add_argument("--model", default=None, help="bundle folder, shipped name or hub id (default: the shipped iso3d-tiny)")
    gen.add_argument("--steps", type=int, default=None, help="SDS steps (default: 200 on CPU, 10000 on GPU)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    gen.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint.pt")
    gen.add_argument("--normals", choices=["central", "forward", "analytic", "off"], default=None,
                     help="normals by central or forward differences (forward: faster, half the memory), "
                          "analytic (the release's: from the hash grid's Jacobian, no extra density "
                          "evaluations), or none (albedo only); default: the config's (analytic on GPU, off on CPU)")
    gen.add_argument("--guidance", type=float, default=None,
                     help="SDS classifier-free guidance scale (default: the bundle's sds_guidance_scale, iso3d-tiny's 10; "
                          "else the config's, the release's 10)")
    gen.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                     help="on a GPU, replay the UNet's forward from a CUDA graph (default: the config's, on; --no-cuda-graph: eager)")
    gen.add_argument("--compile-vae", action=argparse.BooleanOptionalAction, default=None,
                     help="run the VAE encode through torch.compile (latent models; a faster step after a compile "
                          "per render size, see GenerateConfig.compile_vae; default: the config's, off)")
    gen.add_argument("--fused-vae-norms", action=argparse.BooleanOptionalAction, default=None,
                     help="on a GPU, run a latent model's VAE encoder channels-last with fused GroupNorm + SiLU "
                          "(see GenerateConfig.fused_vae_norms; default: the config's, on)")
    gen.add_argument("--mesh-surface", choices=_MESH_SURFACES, default=None,
                     help="mesh the density level set (the release's, at 25), the surface the renders show "
                          "(their depth fused along 24 directions) or the visual hull of their silhouettes "
                          "along those directions (default: the config's)")
    gen.add_argument("--mesh-threshold", type=_mesh_threshold, default=None, metavar="DENSITY|silhouette",
                     help=_MESH_THRESHOLD_HELP)
    gen.add_argument("--dtype", default=None, choices=sorted(_DTYPES),
                     help="the diffusion model's dtype during SDS (default: the config's, bf16 on GPU as the "
                          "benchmarks time it, fp32 on CPU); the NeRF stays fp32")
    exp = sub.add_parser("export", help="re-export a saved asset (the folder of iso3d generate -o) with another mesh "
                                        "surface or level, without optimizing again")
    exp.add_argument("run", help="the folder iso3d generate wrote (its field.pt and run.json)")
    exp.add_argument("-o", "--output", required=True,
                     help="output folder (the same files as generate's; the run's own folder is overwritten if named)")
    exp.add_argument("--mesh-surface", choices=_MESH_SURFACES, default=None, help="as generate's (default: the run's)")
    exp.add_argument("--mesh-threshold", type=_mesh_threshold, default=None, metavar="DENSITY|silhouette",
                     help=_MESH_THRESHOLD_HELP + " (default: the run's)")
    exp.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ev = sub.add_parser("eval-model", aliases=["evaluate"],
                        help="diffusion model: view fidelity (PSNR/SSIM/silhouette IoU), encoder retrieval and "
                             "kind/colour probes on held-out objects")
    ev.add_argument("bundles", nargs="+", help="bundle folders to compare")
    ev.add_argument("--objects", type=int, default=32)
    ev.add_argument("--split", choices=["train", "val", "test"], default="test",
                    help="held-out objects (val, test) or, as a memorization check, the first training objects")
    ev.add_argument("--steps", type=int, default=20, help="DDIM steps per sample")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--cache-dir", default="data/cache")
    ev.add_argument("--grid", default=None, help="also save a sample grid per bundle: GRID with the bundle's "
                    "name before the suffix (rows: input, 4 sampled views, 4 true views)")
    ev.add_argument("--grid-objects", type=int, default=6)
    ev.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the bundle's)")
    ev.add_argument("--with-reference", action="store_true",
                    help="diagnostic: also attend to the input view as the clean EMA reference frame at its true "
                         "pose (how stage 2 was trained; the method's inference uses the CLIP embedding only)")
    ev.add_argument("--probe-objects", type=int, default=1024,
                    help="also fit linear probes of the primitive's kind and colour on the encoder's embeddings "
                         "of this many validation objects (3/4 fit, 1/4 test; 0: skip)")
    ev.add_argument("--device", default="auto")
    add_object_sampling_arguments(ev)
    e3 = sub.add_parser("eval", help="image to 3D on held-out procedural objects: Chamfer, volume IoU, novel-view "
                                     "PSNR/SSIM, CLIP similarity; Isotropic3D vs reference-view L2 vs stage 1 vs sphere")
    e3.add_argument("-o", "--output", default="eval", help="folder for results.json and per-object images")
    e3.add_argument("--model", default=None, help="bundle (default: the shipped iso3d-tiny)")
    e3.add_argument("--stage1-model", default=None, help="stage-1 bundle for the 'stage1' method (e.g. iso3d-tiny-stage1)")
    e3.add_argument("--methods", nargs="+", default=None, help="subset of: isotropic3d reference_l2 stage1 sphere")
    e3.add_argument("--objects", type=int, default=4)
    e3.add_argument("--steps", type=int, default=200, help="SDS steps per asset")
    e3.add_argument("--normals", choices=["central", "forward", "analytic", "off"], default=None,
                    help="the SDS runs' normals (as iso3d generate --normals); default: the CPU config's (off)")
    e3.add_argument("--guidance", type=float, default=None,
                    help="the SDS runs' CFG scale (as iso3d generate --guidance); default: generate's (the bundle's "
                         "sds_guidance_scale, else the config's)")
    e3.add_argument("--mesh-surface", choices=_MESH_SURFACES, nargs="+", default=None,
                    help="the SDS runs' mesh (as iso3d generate --mesh-surface); several: each is measured on the "
                         "same NeRFs, as METHOD@SURFACE; default: the CPU config's")
    e3.add_argument("--seed", type=int, default=0,
                    help="test objects of set SEED (0-9: disjoint sets) and, offset per object, the SDS runs' seeds")
    e3.add_argument("--device", default="auto")
    add_object_sampling_arguments(e3)

    add_train_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"info": _cmd_info, "selftest": _cmd_selftest, "views": _cmd_views, "train": _cmd_train,
                "generate": _cmd_generate, "export": _cmd_export, "evaluate": _cmd_evaluate, "eval-model": _cmd_evaluate, "eval": _cmd_eval}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
