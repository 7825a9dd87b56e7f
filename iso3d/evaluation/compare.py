"""``iso3d eval``: image-to-3D on held-out procedural objects, against their known geometry.

For each test object, its reference view (rendered at ``input_size``²) is the input image, and each
method produces a 3D asset:

* ``isotropic3d``: :func:`iso3d.generate` with the bundle (CLIP embedding only, SDS only: the method);
* ``reference_l2``: the same optimizer plus an L2 loss on the input view at its true camera (the
  Zero123/Magic123-style supervision the paper argues against; given the true pose, its best case);
* ``stage1``: the method with the stage-1 bundle (no EMA fine-tuning), when one is given;
* ``sphere``: a sphere of radius 0.3 in the image's mean colour (a trivial baseline).

Metrics, after the alignment of :mod:`iso3d.evaluation.geometry`: Chamfer distance and volume IoU
against the true SDF; PSNR/SSIM of 4 novel views (the data set's 90°-apart views, headlight
lambertian shading as the ground truth) against ground-truth renders; and CLIP similarity (the
bundle's image encoder) between rendered and true novel views. The novel views look at each object's
centre, are turned by the alignment, keep the true camera's distance and are zoomed to the true silhouettes' area
(``view_fovy`` in the results; see :func:`~iso3d.evaluation.geometry.matched_fovy`); a NeRF is shaded
as its run shaded it (albedo for runs without normals, headlight lambertian otherwise).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from iso3d.cameras import camera_to_world, generate_rays
from iso3d.data import MultiViewDataset, ObjectSampling, RenderSettings
from iso3d.data.procedural import Primitive, ProceduralObject, render_object, render_object_from
from iso3d.io import composite_on_white, save_image_grid
from iso3d.training.evaluate import psnr, ssim

from .geometry import align, matched_fovy, occupancy_silhouette, volume_iou

__all__ = ["EvalConfig", "METHODS", "evaluate_methods"]

METHODS = ("isotropic3d", "reference_l2", "stage1", "sphere")


@dataclass(frozen=True)
class EvalConfig:
    objects: int = 4
    split: str = "test"
    seed: int = 0
    steps: int = 200  # SDS steps per asset (GenerateConfig.cpu_tiny, the default run of `iso3d generate` on CPU)
    input_size: int = 64  # the input image: the object's reference view at this size
    view_size: int = 64  # novel views for PSNR/SSIM/CLIP
    reference_loss_weight: float = 1.0  # the reference_l2 variant's weight (one SDS frame)
    surface_points: int = 2048
    iou_resolution: int = 32
    normals: str | None = None  # the SDS runs' normals (generate(normals=…)); None: cpu_tiny's (off)
    guidance_scale: float | None = None  # the SDS runs' CFG (generate(guidance_scale=…)); None: as generate's default
    # The SDS runs' mesh (generate(mesh_surface=…)); None: cpu_tiny's. Several: each is measured on the
    # same NeRFs, reported as "METHOD@SURFACE".
    mesh_surface: str | tuple[str, ...] | None = None
    # How the held-out objects are drawn; None: as the bundle's training objects (BundleConfig.training_objects).
    object_sampling: ObjectSampling | None = None


_MEAN_METRICS = ("chamfer", "volume_iou", "mesh_silhouette_iou", "mesh_size_vs_renders", "psnr", "ssim",
                 "clip_similarity", "seconds")


def _key(method: str, surface: str | None) -> str:
    return method if surface is None else f"{method}@{surface}"


def _subsample(points: torch.Tensor, n: int) -> torch.Tensor:
    """A fixed random subset of ``n`` surface samples (marching-cubes vertices are nearly uniform)."""
    return points[torch.randperm(len(points), generator=torch.Generator().manual_seed(0))[:n]]


class _FieldAsset:
    """A generated NeRF seen through the metrics' interface."""

    def __init__(self, asset, n_points: int, surface: str | None = None):
        from iso3d.export import density_volume, extract_mesh

        config = asset.mesh_config  # the surface the exported mesh has, unless another is asked for
        if surface is not None:
            config = dataclasses.replace(config, surface=surface)
        self.radius = config.radius
        self.asset, self.threshold, self.surface = asset, config.threshold, config.surface
        self.volume = density_volume(asset.field, config)  # what the exported mesh encloses (floaters kept)
        mesh = extract_mesh(asset.field, config, volume=self.volume)
        self.vertices = _subsample(torch.as_tensor(mesh.vertices, dtype=torch.float32), n_points)

    def occupied(self, x: torch.Tensor) -> torch.Tensor:
        return self.volume.occupied(x)

    def silhouette(self, c2w: torch.Tensor, fovy: float, size: int) -> torch.Tensor:  # [V, s, s] bool
        """What the exported surface (with its floaters) covers in the views :meth:`render` renders."""
        rays_o, rays_d = generate_rays(c2w, torch.full((c2w.shape[0],), fovy), size, size)
        return occupancy_silhouette(self.occupied, rays_o, rays_d, self.radius)

    @torch.no_grad()
    def render(self, c2w: torch.Tensor, fovy: float, size: int, ambient: float) -> torch.Tensor:  # [V, 4, s, s]
        """RGB on white and opacity. Shaded as the run was: a run without normals (``cpu_tiny``) only
        ever rendered albedo, so its albedo holds the shading the model showed it; headlight lambertian
        would shade it twice, with normals it never optimized."""
        renderer = self.asset.renderer.eval()
        shading = "lambertian" if self.asset.config.normals else "albedo"
        rays_o, rays_d = generate_rays(c2w, torch.full((c2w.shape[0],), fovy), size, size)
        device = next(self.asset.field.parameters()).device  # `iso3d eval --device cuda`: the field is there
        frames = []
        for o, d in zip(rays_o, rays_d):
            o, d = o.reshape(-1, 3).to(device), d.reshape(-1, 3).to(device)
            out = renderer(self.asset.field, o, d, shading=shading, light_positions=o, ambient=ambient)
            frames.append(torch.cat([out.rgb, out.opacity], -1).reshape(size, size, 4).permute(2, 0, 1).cpu())
        return torch.stack(frames)


class _ProceduralAsset:
    """A procedural object (the ground truth, or the sphere baseline) through the same interface."""

    def __init__(self, obj: ProceduralObject, n_points: int, resolution: int = 64):
        import mcubes

        self.obj = obj
        grid = obj.sdf_grid(resolution).numpy()
        verts, _ = mcubes.marching_cubes(-grid, 0.0)
        verts = torch.as_tensor(verts, dtype=torch.float32) / (resolution - 1) * 2 - 1
        self.vertices = _subsample(verts, n_points)

    def occupied(self, x: torch.Tensor) -> torch.Tensor:
        return self.obj.sdf(x) < 0

    @torch.no_grad()
    def render(self, c2w: torch.Tensor, fovy: float, size: int, ambient: float) -> torch.Tensor:  # [V, 4, s, s]
        img = render_object_from(self.obj, c2w, RenderSettings(image_size=size, fovy=fovy, ambient=ambient))
        return torch.cat([composite_on_white(img), img[:, 3:]], 1)  # RGB on white, alpha


def _sphere_like(image_rgba: torch.Tensor) -> ProceduralObject:
    alpha = image_rgba[3] > 0.5
    color = image_rgba[:3][:, alpha].mean(1) if alpha.any() else torch.full((3,), 0.5)
    return ProceduralObject([Primitive("sphere", torch.zeros(3), torch.eye(3), torch.tensor([0.3]), color)])


def _view_pair(truth, candidate, alignment, views, settings: RenderSettings):
    """The true and the generated novel views (RGBA ``[V, 4, s, s]`` each) and the generated views' fovy.

    Both cameras look at their object's centre (the truth's from its true distance, the generated one's
    turned and centred by ``alignment`` at the same distance), so the zoom that matches the
    silhouettes' area (geometry.matched_fovy) scales each image about its object. A probe at twice
    the frame's tan keeps a generated object up to twice the true one's size inside the frame."""
    c2w = camera_to_world(views["elevation"], views["azimuth"], torch.full_like(views["elevation"], settings.distance))
    c2w[:, :3, 3] += alignment.true_center.to(c2w)  # the data set's cameras look at the origin
    true_rgba = truth.render(c2w, settings.fovy, settings.image_size, settings.ambient)
    gen_c2w = alignment.view_camera(c2w)
    probe_fovy = math.degrees(2 * math.atan(2 * math.tan(math.radians(settings.fovy) / 2)))
    probe = candidate.render(gen_c2w, probe_fovy, settings.image_size, settings.ambient)
    fovy = matched_fovy(settings.fovy, true_rgba[:, 3], probe[:, 3], probe_fovy=probe_fovy)
    return true_rgba, candidate.render(gen_c2w, fovy, settings.image_size, settings.ambient), gen_c2w, fovy


def _metrics(truth: _ProceduralAsset, candidate, views, settings: RenderSettings, encoder,
             iou_resolution: int) -> tuple[dict, torch.Tensor]:
    alignment, chamfer = align(truth.vertices, candidate.vertices)
    center = alignment.true_center
    true_half = float((truth.vertices - center).abs().max()) * 1.05  # a cube around the whole true shape
    iou = volume_iou(truth.occupied, candidate.occupied, alignment, true_half, resolution=iou_resolution)
    true_rgba, gen_rgba, gen_c2w, fovy = _view_pair(truth, candidate, alignment, views, settings)
    true_views, gen_views = true_rgba[:, :3], gen_rgba[:, :3].clamp(0, 1)
    with torch.no_grad():
        device = next(encoder.parameters()).device
        a = F.normalize(encoder(gen_views.to(device))[:, 0].float().cpu(), dim=-1)
        b = F.normalize(encoder(true_views.to(device))[:, 0].float().cpu(), dim=-1)
    mesh_vs_renders = {}
    if hasattr(candidate, "silhouette"):  # a NeRF: is its mesh what its renders show?
        mesh = candidate.silhouette(gen_c2w, fovy, settings.image_size)
        shown = gen_rgba[:, 3] > 0.5
        mesh_vs_renders = {"mesh_silhouette_iou": float((mesh & shown).sum() / (mesh | shown).sum().clamp(min=1)),
                           "mesh_size_vs_renders": math.sqrt(float(mesh.sum()) / max(float(shown.sum()), 1.0))}
    return {
        "chamfer": chamfer, "volume_iou": iou, **mesh_vs_renders,
        "psnr": float(psnr(gen_views, true_views).mean()), "ssim": float(ssim(gen_views, true_views).mean()),
        "clip_similarity": float((a * b).sum(-1).mean()), "azimuth_offset": alignment.azimuth,
        "view_fovy": fovy, "mesh_surface": getattr(candidate, "surface", None),
        "mesh_threshold": getattr(candidate, "threshold", None),
    }, torch.cat([true_views, gen_views])


def evaluate_methods(bundle, *, stage1_bundle=None, config: EvalConfig = EvalConfig(), methods=METHODS,
                     out: str | Path | None = None, device="cpu", progress: bool = True) -> dict:
    """Run each method on ``config.objects`` held-out objects; returns per-object and mean metrics.

    ``bundle``/``stage1_bundle``: :class:`MultiViewDiffusion` or bundle folders. ``out`` receives
    ``results.json`` and one image per object (rows: truth, then each method's novel views, turned by
    the alignment of its first mesh surface).
    """
    from iso3d.generation import GenerateConfig, generate
    from iso3d.models.bundle import MultiViewDiffusion

    surfaces = (config.mesh_surface,) if config.mesh_surface is None or isinstance(config.mesh_surface, str) \
        else tuple(config.mesh_surface)
    if not surfaces:
        raise ValueError("config.mesh_surface: an empty tuple; give a surface, several, or None (the run's own)")
    from iso3d.export import MESH_SURFACES, EmptySurfaceError

    unknown_surfaces = [s for s in surfaces if s is not None and s not in MESH_SURFACES]
    if unknown_surfaces or (None in surfaces and len(surfaces) > 1):
        raise ValueError(f"config.mesh_surface: expected None or surfaces from {MESH_SURFACES}, got {config.mesh_surface!r}")
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"methods: unknown {sorted(unknown)}; choose from {METHODS}")
    load = lambda b: b if isinstance(b, MultiViewDiffusion) else MultiViewDiffusion.from_pretrained(b)  # noqa: E731
    model = load(bundle).eval()
    if "stage1" in methods and stage1_bundle is None:
        raise ValueError("methods include 'stage1' but stage1_bundle is None")
    stage1 = load(stage1_bundle).eval() if "stage1" in methods else None
    if config.object_sampling is None:
        config = dataclasses.replace(config, object_sampling=ObjectSampling(**(model.config.training_objects or {})))
    data = MultiViewDataset(config.split, config.objects, seed=config.seed,
                            settings=RenderSettings(image_size=config.view_size),
                            object_sampling=config.object_sampling, progress=progress)
    settings = RenderSettings(image_size=config.view_size)
    base = GenerateConfig.cpu_tiny(steps=config.steps)
    out_dir = Path(out) if out is not None else None
    results: dict = {"config": dataclasses.asdict(config), "objects": []}
    for i in range(config.objects):
        sample, obj = data[i], data.object(i)
        truth = _ProceduralAsset(obj, config.surface_points)
        image = render_object(obj, sample.reference_elevation[None], sample.reference_azimuth[None],
                              RenderSettings(image_size=config.input_size))[0]
        views = {"elevation": sample.elevation, "azimuth": sample.azimuth}
        row, grids = {"object_seed": sample.object_seed}, []
        for method in methods:
            t0 = time.time()
            made = 0.0  # the SDS run's seconds, counted for each of its surfaces
            if method == "sphere":
                candidates = {method: lambda: _ProceduralAsset(_sphere_like(image), config.surface_points)}
            else:
                cfg = base
                if method == "reference_l2":
                    pose = (float(sample.reference_elevation), float(sample.reference_azimuth), settings.distance, settings.fovy)
                    cfg = dataclasses.replace(base, reference_loss_weight=config.reference_loss_weight, reference_pose=pose)
                asset = generate(image, stage1 if method == "stage1" else model, config=cfg, seed=config.seed + i,
                                 device=device, progress=progress, normals=config.normals,
                                 guidance_scale=config.guidance_scale, mesh_surface=surfaces[0])
                made = time.time() - t0
                candidates = {_key(method, s if len(surfaces) > 1 else None):
                              functools.partial(_FieldAsset, asset, config.surface_points, s) for s in surfaces}
            for key, make in candidates.items():
                t1 = time.time()
                try:
                    candidate = make()
                except EmptySurfaceError as exc:  # nothing above the level, or nothing visible: no surface to measure
                    row[key] = {"error": str(exc), "seconds": made + time.time() - t1}
                    continue
                metrics, grid = _metrics(truth, candidate, views, settings, model.image_encoder, config.iou_resolution)
                row[key] = {**metrics, "seconds": made + time.time() - t1}  # the run, this surface's export and metrics
                if key == next(iter(candidates)):  # one row per method: its first surface's alignment
                    grids.append(grid if not grids else grid[len(grid) // 2:])
        results["objects"].append(row)
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            save_image_grid(torch.cat(grids), out_dir / f"object_{i:02d}.png", columns=len(views["azimuth"]))
    results["mean"] = {}
    for m in dict.fromkeys(k for r in results["objects"] for k in r if k != "object_seed"):
        ok = [r[m] for r in results["objects"] if "error" not in r[m]]
        names = [k for k in _MEAN_METRICS if all(k in r for r in ok)]
        results["mean"][m] = {k: (sum(r[k] for r in ok) / len(ok) if ok else float("nan")) for k in names}
        results["mean"][m]["failed"] = len(results["objects"]) - len(ok)
    if out_dir is not None:
        (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    return results
