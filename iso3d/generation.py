"""``iso3d.generate`` (defined here, in ``iso3d.generation``): one image → a 3D asset by Isotropic3D's SDS stage.

The loop (DESIGN.md §2, scaled by :class:`GenerateConfig`): each step samples 4 views 90° apart
(random azimuth offset, elevation, fov, distance), renders the hash-grid NeRF, maps the renders into
the UNet's space, noises them at one annealed timestep, asks the multi-view UNet for the conditional
(CLIP embedding of the image) and unconditional (zero embedding) noise, and minimizes the x0-
reconstruction loss (CFG 10, std rescale 0.5) plus the orientation loss. AdamW (0.9, 0.99), eps 1e-15,
lr 0.01 for the hash grid and 0.001 for the MLPs. Shading is albedo for the first half, then random
among albedo / textureless / lambertian. The occupancy grid updates every 16 steps.

Safety: a checkpoint every ``checkpoint_every`` steps (atomic; written by a background thread, so a
step pays only for copying the state to host memory), ``resume=True`` continues exactly
(every step reseeds the global RNG from (seed, step)); Ctrl-C saves a checkpoint before stopping;
a non-finite loss stops with ``FloatingPointError`` and keeps the last good checkpoint.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import platform
import time
import typing
from dataclasses import dataclass
from dataclasses import field as dc_field  # the config has a member named `field`
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from iso3d.cameras import SDSViewConfig, camera_embedding, generate_rays, sample_sds_views
from iso3d.export.mesh import MESH_SURFACES, MeshSurface
from iso3d.io import load_image, save_image_grid
from iso3d.kernels.hash_grid import HashGridConfig
from iso3d.models.bundle import MultiViewDiffusion
from iso3d.models.cuda_graph import CUDAGraphedForward
from iso3d.models.latent_encoder import latent_encoder
from iso3d.models.precision import supported_model_dtype
from iso3d.nerf import FieldConfig, ImplicitVolume, RendererConfig, VolumeRenderer
from iso3d.sds import SDSConfig, TimestepSchedule, x0_reconstruction_loss
from iso3d.utils.checkpoint import CheckpointWriter
from iso3d.utils.interrupt import StepInterrupt

__all__ = ["MODEL_DTYPES", "Asset", "GenerateConfig", "generate", "milestone_at", "reference_view_loss", "sds_step"]

CHECKPOINT = "checkpoint.pt"
# What runs saved before a GenerateConfig field existed did (a saved config without the key).
_BEFORE_FIELDS_EXISTED = {"model_dtype": "float32", "fused_vae_norms": False}
# The diffusion model's weights during SDS (GenerateConfig.model_dtype): torch dtype names.
ModelDtype = Literal["float32", "bfloat16", "float16"]
MODEL_DTYPES: tuple[str, ...] = typing.get_args(ModelDtype)


@dataclass(frozen=True)
class GenerateConfig:
    steps: int = 10000
    field: FieldConfig = dc_field(default_factory=FieldConfig)
    renderer: RendererConfig = dc_field(default_factory=RendererConfig)
    views: SDSViewConfig = dc_field(default_factory=SDSViewConfig)
    sds: SDSConfig = dc_field(default_factory=SDSConfig)
    # (first step, render size or None for the model's image size, objects per batch): the release
    # renders 8 views (2×4) at 64² until step 5000, then 4 views at 256²; renders are resized to the
    # model's image size before encoding.
    milestones: tuple[tuple[int, int | None, int], ...] = ((0, 64, 2), (5000, 256, 1))
    lr_grid: float = 0.01
    lr_mlp: float = 0.001
    orient_weight: tuple[float, float] = (10.0, 1000.0)  # linear over the first half
    # Normals: FieldConfig.normal_type says how (analytic by default: the hash grid's Jacobian, no
    # extra field evaluations); without them every step shades with albedo and the orientation loss
    # is off (GenerateConfig.cpu_tiny).
    normals: bool = True
    # Density of the exported surface: the release's 25 (for a converged field), or "silhouette": the
    # level whose surface has the silhouettes the renders show (iso3d.export.threshold; short runs
    # leave a soft density that a fixed level meshes too small or not at all).
    mesh_threshold: float | Literal["silhouette"] = 25.0
    # "density": mesh the level set density = mesh_threshold (the release). "rendered": mesh the surface
    # the renders show, fused from the depth where the opacity reaches 1/2 along 24 directions
    # (iso3d.export.depth_fusion). "hull": mesh the visual hull of the renders' silhouettes along those
    # directions. Both inside the box of the level mesh_threshold (plus a coarse cell).
    mesh_surface: MeshSurface = "density"
    albedo_only_fraction: float = 0.5
    checkpoint_every: int = 100
    grid_update_every: int = 16
    # The reference-view L2 variant (Zero123/Magic123-style supervision, which Isotropic3D argues
    # against): 0 = off, the method. With weight w, w·0.5·Σ(render − image)² over RGB and alpha of the
    # input view at `reference_pose` (elevation°, azimuth°, distance, fovy°) is added each step; w = 1
    # weighs the reference view like one SDS frame.
    reference_loss_weight: float = 0.0
    reference_pose: tuple[float, float, float, float] = (0.0, 0.0, 2.0, 40.0)
    # On a GPU, replay the UNet's CFG forward from a CUDA graph (iso3d.models.cuda_graph): one launch
    # instead of ~1000 for a launch-bound pass. Measured on an H100 (benchmarks/RESULTS.md): the
    # official step 1.19x faster at 64², 1.20x at 256², at the same peak memory. Ignored on the CPU.
    cuda_graph: bool = True
    # Run the VAE encode (+ its backward) through torch.compile (iso3d.models.latent_encoder; latent
    # bundles only). Measured on an H100 (benchmarks/RESULTS.md, eighth session): the official step
    # 1.13x faster at 64² and 1.03x at 256² (the VAE alone: 1.20x and 1.06x), peak memory -26% / -8%;
    # but each batch size (one per milestone) compiles for ~35 s from a cold cache, about what a
    # 10,000-step run saves (28-56 s): off.
    compile_vae: bool = False
    # On a GPU, run a latent bundle's VAE encoder channels-last with its GroupNorm → SiLU pairs as one
    # Triton op that keeps that layout (iso3d.kernels.group_norm, via latent_encoder; the model's VAE is
    # converted in place: same parameters, values equal up to rounding). Measured on an H100
    # (benchmarks/RESULTS.md, twentieth session; medians of 5 steps): the official step 1.10x faster at 64²
    # on the surface field and 1.03x on the blob, 1.01x and 1.16x at 256², peak memory -1.0 GiB at 64²;
    # channels-last with PyTorch's GroupNorm was 1.4x slower (it returns NCHW). Ignored on the CPU and
    # with compile_vae.
    fused_vae_norms: bool = True
    # The dtype of the diffusion model (UNet, VAE, image encoder) during SDS; the field, the renderer
    # and the loss stay in float32. The release runs its guidance in half precision (threestudio's
    # half_precision_weights); the GPU benchmarks time bfloat16 (benchmarks/RESULTS.md). cpu_tiny: float32.
    model_dtype: ModelDtype = "bfloat16"

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"GenerateConfig.steps must be >= 1, got {self.steps}")
        if self.reference_loss_weight < 0:
            raise ValueError(f"GenerateConfig.reference_loss_weight must be >= 0, got {self.reference_loss_weight}")
        if self.mesh_threshold != "silhouette" and (isinstance(self.mesh_threshold, bool)
                                                    or not isinstance(self.mesh_threshold, (int, float))
                                                    or not self.mesh_threshold > 0):
            raise ValueError(f"GenerateConfig.mesh_threshold must be a positive density or 'silhouette', got {self.mesh_threshold!r}")
        if self.mesh_surface not in MESH_SURFACES:
            raise ValueError(f"GenerateConfig.mesh_surface must be one of {MESH_SURFACES}, got {self.mesh_surface!r}")
        if self.model_dtype not in MODEL_DTYPES:
            raise ValueError(f"GenerateConfig.model_dtype must be one of {MODEL_DTYPES}, got {self.model_dtype!r}")
        if len(self.reference_pose) != 4:
            raise ValueError(f"GenerateConfig.reference_pose must be (elevation, azimuth, distance, fovy), got {self.reference_pose}")

    @classmethod
    def official(cls) -> "GenerateConfig":
        return cls()

    @classmethod
    def cpu_tiny(cls, steps: int = 200) -> "GenerateConfig":
        """A run that fits a 2-core CPU in a few minutes: a smaller hash grid, 48 samples per ray, albedo
        shading without normals (no orientation loss), the official schedule's shape over ``steps``; the
        mesh is the visual hull of the renders' silhouettes (``mesh_surface="hull"``) inside the box of the
        density level whose silhouettes match the renders' (``mesh_threshold="silhouette"``). That level
        alone (``mesh_surface="density"``) perforates a patchy shell; the fused depth (``"rendered"``)
        meshes a soft field at 0.54–0.77 of its renders' size (benchmarks/RESULTS.md, sixteenth session)."""
        return cls(
            steps=steps,
            milestones=((0, None, 1),),
            field=FieldConfig(encoding=HashGridConfig(n_levels=8, log2_hashmap_size=15, base_resolution=16,
                                                      per_level_scale=1.5), hidden_dims=32),
            renderer=RendererConfig(num_samples_per_ray=48),
            normals=False,
            mesh_threshold="silhouette",  # 200 steps leave a soft density: 25 finds no surface, 5 one too small
            # The silhouettes' hull: the size the renders show, closed where that level perforates a shell
            # (benchmarks/RESULTS.md, sixteenth session).
            mesh_surface="hull",
            sds=SDSConfig(timesteps=TimestepSchedule(anneal_steps=int(0.8 * steps))),
            model_dtype="float32",  # CPUs have no fast half-precision convolutions
        )


@dataclass
class Asset:
    """The result of :func:`generate`: the optimized field and how it was made."""

    field: ImplicitVolume
    renderer: VolumeRenderer
    config: GenerateConfig
    run: dict
    _silhouette_level: float | None = dc_field(default=None, init=False, repr=False, compare=False)

    @property
    def surface_threshold(self) -> float:
        """The density level of the exported mesh (``mesh_surface="density"``) or of its box
        (``"rendered"``, ``"hull"``): ``config.mesh_threshold``, resolved when it is ``"silhouette"``
        (:func:`iso3d.export.threshold.silhouette_threshold`, computed once: the field is final)."""
        if self.config.mesh_threshold != "silhouette":
            return float(self.config.mesh_threshold)
        if self._silhouette_level is None:
            from iso3d.export.threshold import silhouette_threshold

            self._silhouette_level = silhouette_threshold(self.field, radius=self.config.field.radius)
        return self._silhouette_level

    @property
    def mesh_config(self):
        """The :class:`~iso3d.export.MeshExportConfig` of :meth:`save`'s mesh (and of ``iso3d eval``'s)."""
        from iso3d.export import MeshExportConfig

        return MeshExportConfig(threshold=self.surface_threshold, radius=self.config.field.radius,
                                surface=self.config.mesh_surface)

    @torch.no_grad()
    def render_turntable(self, n_frames: int = 12, size: int = 64, elevation: float = 15.0) -> torch.Tensor:
        """``[n_frames, 3, size, size]`` renders around the object (fovy 40°, distance 2.2)."""
        device = next(self.field.parameters()).device
        az = torch.arange(n_frames) * 360.0 / n_frames
        from iso3d.cameras import camera_to_world

        c2w = camera_to_world(torch.full((n_frames,), elevation), az, torch.full((n_frames,), 2.2)).to(device)
        rays_o, rays_d = generate_rays(c2w, torch.full((n_frames,), 40.0, device=device), size, size)
        frames = []
        for o, d in zip(rays_o, rays_d):
            out = self.renderer.eval()(self.field, o.reshape(-1, 3), d.reshape(-1, 3))
            frames.append(out.rgb.reshape(size, size, 3).permute(2, 0, 1).cpu())
        return torch.stack(frames)

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device | None = None) -> "Asset":
        """The asset that :meth:`save` (``iso3d generate -o FOLDER``) wrote: its field and config from
        ``field.pt``, its record from ``run.json`` when there is one, and the renderer's occupancy grid
        from ``checkpoint.pt`` when that is of the same step (else the grid is rebuilt from the field,
        :meth:`VolumeRenderer.rebuild_occupancy`, so renders skip empty space as the run's did).

        >>> asset = Asset.load("out/demo")  # doctest: +SKIP
        >>> asset.config = dataclasses.replace(asset.config, mesh_surface="density")  # doctest: +SKIP
        >>> asset.save("out/demo_density")  # doctest: +SKIP
        """
        from iso3d.utils.dataclass_dict import dataclass_from_dict

        folder = Path(folder)
        path = folder / "field.pt"
        if not path.is_file():
            raise FileNotFoundError(f"Asset.load: no field.pt in {folder} (expected a folder written by iso3d generate -o)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not {"field", "config"} <= set(state):
            raise ValueError(f"Asset.load: {path} is not an asset's field.pt (expected the keys 'field' and 'config')")
        # Runs saved before a field existed: what they did (e.g. the model in float32).
        config = dataclass_from_dict(GenerateConfig, {**_BEFORE_FIELDS_EXISTED, **state["config"]})
        device = torch.device(device or "cpu")
        field = ImplicitVolume(config.field)
        field.load_state_dict(state["field"])
        run = json.loads((folder / "run.json").read_text()) if (folder / "run.json").is_file() else {}
        renderer = VolumeRenderer(config.renderer).to(device).eval()
        field = field.to(device).eval()
        if (folder / CHECKPOINT).is_file():
            saved = torch.load(folder / CHECKPOINT, map_location=device, weights_only=True)
            if saved.get("step") == run.get("steps"):  # the final checkpoint: its grid is the field's
                renderer.load_occupancy_state(saved.get("grid"), device)
        if not renderer.grid_ready:
            renderer.rebuild_occupancy(field)
        return cls(field, renderer, config, run)

    def save(self, out_dir: str | Path, *, turntable_frames: int = 12, turntable_size: int = 64) -> Path:
        """Write mesh.{glb,obj,ply}, turntable.gif (+ .mp4 with imageio-ffmpeg), views.png, field.pt, run.json."""
        from iso3d.export import extract_mesh

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        torch.save({"field": self.field.state_dict(), "config": dataclasses.asdict(self.config)}, out / "field.pt")
        run = dict(self.run)
        try:
            config = self.mesh_config
            mesh = extract_mesh(self.field, config)
            for ext in ("glb", "obj", "ply"):
                mesh.save(out / f"mesh.{ext}")
            run["mesh"] = {"vertices": int(len(mesh.vertices)), "faces": int(len(mesh.faces)),
                           "threshold": config.threshold, "surface": config.surface}
        except (ValueError, ImportError) as exc:  # an empty field or a missing optional exporter
            run["mesh"] = {"error": str(exc)}
        frames = self.render_turntable(turntable_frames, turntable_size)
        _save_gif(frames, out / "turntable.gif")
        run["turntable_mp4"] = _save_mp4(frames, out / "turntable.mp4")
        save_image_grid(frames[:: max(1, turntable_frames // 4)][:4], out / "views.png")
        (out / "run.json").write_text(json.dumps(run, indent=2, default=str))
        return out


def _save_gif(frames: torch.Tensor, path: Path) -> None:
    from PIL import Image

    images = [Image.fromarray((f.permute(1, 2, 0).clamp(0, 1).numpy() * 255 + 0.5).astype("uint8")) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=80, loop=0)


def _save_mp4(frames: torch.Tensor, path: Path, fps: int = 12) -> str:
    """H.264 turntable through imageio-ffmpeg when it is installed; returns what happened."""
    try:
        import imageio_ffmpeg
    except ImportError:
        return "skipped: imageio-ffmpeg is not installed (pip install imageio-ffmpeg, or iso3d[export])"
    h, w = frames.shape[-2:]
    try:  # the mesh and GIF are already saved: a codec problem must not lose them
        writer = imageio_ffmpeg.write_frames(str(path), (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                             quality=8, macro_block_size=2, ffmpeg_log_level="error")
        writer.send(None)  # start the encoder
        for f in frames:
            writer.send((f.permute(1, 2, 0).clamp(0, 1).numpy() * 255 + 0.5).astype("uint8").tobytes())
        writer.close()
    except (OSError, RuntimeError) as exc:
        return f"failed: {type(exc).__name__}: {exc}"
    return "written"


def _versions() -> dict:
    import iso3d

    return {"iso3d": iso3d.__version__, "torch": torch.__version__, "python": platform.python_version()}


# generate(normals=…) and the CLI's --normals → FieldConfig.normal_type
_NORMAL_TYPES = {"central": "finite_difference", "forward": "forward_difference", "analytic": "analytic"}


def generate(
    image,
    model: MultiViewDiffusion | str | None = None,
    *,
    config: GenerateConfig | None = None,
    steps: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool | dict = True,
    normals: str | None = None,
    cuda_graph: bool | None = None,
    guidance_scale: float | None = None,
    compile_vae: bool | None = None,
    fused_vae_norms: bool | None = None,
    mesh_surface: str | None = None,
    mesh_threshold: float | str | None = None,
    dtype: str | torch.dtype | None = None,
) -> Asset:
    """Optimize a NeRF of the object in ``image`` with multi-view SDS; save to ``out`` when given.

    ``model``: a :class:`MultiViewDiffusion`, a bundle folder / hub id, or None for the shipped
    iso3d-tiny (``iso3d/assets/iso3d-tiny``, see its MODEL_CARD.md). ``config`` defaults to
    :meth:`GenerateConfig.cpu_tiny` on CPU and :meth:`GenerateConfig.official` on a GPU.
    ``normals`` overrides the config's: ``"central"`` (central differences), ``"forward"`` (forward
    differences: half the density evaluations, 1.55× faster 256² steps on an H200, see
    benchmarks/RESULTS.md), ``"analytic"`` (the release's choice: exact −∇σ/‖∇σ‖ from the hash
    grid's Jacobian, no extra density evaluations) or ``"off"`` (albedo shading, no orientation loss).
    ``cuda_graph`` overrides ``config.cuda_graph`` (on a GPU, the UNet's forward replayed from a CUDA
    graph; ignored on the CPU). ``guidance_scale`` sets the SDS classifier-free guidance; None: the
    bundle's ``config.sds_guidance_scale`` when it has one (iso3d-tiny: 10, see its model card), else
    ``config.sds.guidance_scale`` (the release's 10). ``compile_vae`` overrides ``config.compile_vae``
    (the VAE encode through ``torch.compile``; no effect on pixel-space models such as iso3d-tiny).
    ``fused_vae_norms`` overrides ``config.fused_vae_norms`` (on a GPU, a latent model's VAE encoder
    channels-last with fused GroupNorm → SiLU, converted in place, so a model passed in stays converted;
    a resumed run keeps its own choice).
    ``mesh_surface`` overrides ``config.mesh_surface``: ``"density"`` (the level set at
    ``config.mesh_threshold``), ``"rendered"`` (the surface the renders show, fused from their depth) or
    ``"hull"`` (the visual hull of the renders' silhouettes). ``mesh_threshold`` overrides
    ``config.mesh_threshold``: a density (the release's 25) or ``"silhouette"`` (the level whose
    surface has the renders' silhouettes; a short run's soft field may have nothing above 25).
    ``dtype``: the diffusion model's dtype (a ``torch.dtype`` or its name), recorded as
    ``config.model_dtype``. None: a model passed in runs in its own dtype; a model loaded here in
    ``config.model_dtype`` (``"bfloat16"`` in the official config, or ``"float16"`` on a GPU without
    bf16 tensor cores; ``"float32"`` in ``cpu_tiny``). A model passed in is moved to ``device`` in place,
    and cast in place when ``dtype`` differs from its own. ``progress``: show the progress bar (loss,
    ETA), or a dict of tqdm options for it (``{"disable": True}``, ``{"leave": False}``, …).
    """
    if normals not in _NORMAL_TYPES and normals not in (None, "off"):
        raise ValueError(f"normals must be one of {sorted(_NORMAL_TYPES)}, 'off' or None, got {normals!r}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if isinstance(progress, dict):
        progress_options = dict(progress)
    elif isinstance(progress, int):  # bools included
        progress_options = {"disable": not progress}
    else:
        raise TypeError(f"progress must be a bool or a dict of tqdm options, got {type(progress).__name__}")
    try:  # refuse a misspelled option now, not after the model has loaded (a disabled bar checks nothing)
        tqdm(**{**progress_options, "disable": False, "file": io.StringIO()}).close()
    except (TypeError, KeyError) as exc:
        raise TypeError(f"progress: not tqdm options: {exc}") from exc
    config = config or (GenerateConfig.official() if device.type == "cuda" else GenerateConfig.cpu_tiny())
    cast = None  # the dtype to cast the model to: only on request
    if dtype is not None:
        name = str(dtype).removeprefix("torch.") if isinstance(dtype, torch.dtype) else dtype
        if name not in MODEL_DTYPES:
            raise ValueError(f"dtype must be one of {MODEL_DTYPES} (or that torch.dtype) or None, got {dtype!r}")
        config, cast = dataclasses.replace(config, model_dtype=name), getattr(torch, name)
    elif isinstance(model, MultiViewDiffusion):  # a model passed in runs as it is: no lossy cast of its weights
        name = str(next(model.unet.parameters()).dtype).removeprefix("torch.")
        if name not in MODEL_DTYPES:
            raise ValueError(f"model: its weights are {name}; expected one of {MODEL_DTYPES}, or pass dtype= to cast it")
        config = dataclasses.replace(config, model_dtype=name)
    else:
        config = dataclasses.replace(config, model_dtype=supported_model_dtype(config.model_dtype, device))
    if not isinstance(model, MultiViewDiffusion):  # None: the shipped iso3d-tiny
        model = MultiViewDiffusion.from_pretrained(model, device=device, dtype=getattr(torch, config.model_dtype))
    # Cast only on request: a model passed in keeps its dtypes (its UNet's is the one recorded; a VAE
    # kept in float32 stays so).
    model = model.to(device=device, dtype=cast).eval()
    if steps is not None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        config = dataclasses.replace(config, steps=steps)
    if guidance_scale is None:
        guidance_scale = model.config.sds_guidance_scale
    if guidance_scale is not None:
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) \
                or not math.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}")
        config = dataclasses.replace(config, sds=dataclasses.replace(config.sds, guidance_scale=float(guidance_scale)))
    if cuda_graph is not None:
        if not isinstance(cuda_graph, bool):
            raise TypeError(f"cuda_graph must be True, False or None, got {cuda_graph!r}")
        config = dataclasses.replace(config, cuda_graph=cuda_graph)
    if compile_vae is not None:
        if not isinstance(compile_vae, bool):
            raise TypeError(f"compile_vae must be True, False or None, got {compile_vae!r}")
        config = dataclasses.replace(config, compile_vae=compile_vae)
    if fused_vae_norms is not None:
        if not isinstance(fused_vae_norms, bool):
            raise TypeError(f"fused_vae_norms must be True, False or None, got {fused_vae_norms!r}")
        config = dataclasses.replace(config, fused_vae_norms=fused_vae_norms)
    if mesh_surface is not None:
        config = dataclasses.replace(config, mesh_surface=mesh_surface)  # validated by GenerateConfig
    if mesh_threshold is not None:
        config = dataclasses.replace(config, mesh_threshold=mesh_threshold)  # validated by GenerateConfig
    if normals is not None:
        normal_type = _NORMAL_TYPES.get(normals, config.field.normal_type)
        config = dataclasses.replace(config, normals=normals != "off",
                                     field=dataclasses.replace(config.field, normal_type=normal_type))
    rgba = load_image(image)[None].to(device)
    with torch.no_grad():
        token = model.image_encoder(rgba).float()  # [1, 1, D]
    torch.manual_seed(seed)
    fld = ImplicitVolume(config.field, seed=seed).to(device)
    renderer = VolumeRenderer(config.renderer).to(device)
    optim = torch.optim.AdamW([
        {"params": fld.encoding.parameters(), "lr": config.lr_grid},
        {"params": list(fld.density_mlp.parameters()) + list(fld.albedo_mlp.parameters()), "lr": config.lr_mlp},
    ], betas=(0.9, 0.99), eps=1e-15, weight_decay=0.0)
    acp = model.config.scheduler.alphas_cumprod(device)
    unet = CUDAGraphedForward(model.unet) if config.cuda_graph and device.type == "cuda" else model.unet
    out_dir = Path(out) if out is not None else None
    # Per-step records, kept in the checkpoint and run.json: the loss, the wall time and the samples
    # per ray (how the render cost falls as the field sharpens and pruning drops more samples).
    step, losses, step_seconds, samples_per_ray, marched_per_ray = 0, [], [], [], []
    if resume:
        if out_dir is None or not (out_dir / CHECKPOINT).exists():
            raise FileNotFoundError(f"resume: no {CHECKPOINT} in {out_dir}")
        state = torch.load(out_dir / CHECKPOINT, map_location=device, weights_only=False)
        if state.get("model_dtype", config.model_dtype) != config.model_dtype:  # absent before model_dtype existed
            raise ValueError(f"resume: the run in {out_dir} ran the model in {state['model_dtype']}, this call in "
                             f"{config.model_dtype}; resume with dtype={state['model_dtype']!r} to continue it exactly")
        # The VAE path changes only rounding, but a resumed run continues exactly: keep the run's own.
        config = dataclasses.replace(config, fused_vae_norms=state.get("fused_vae_norms", _BEFORE_FIELDS_EXISTED["fused_vae_norms"]))
        fld.load_state_dict(state["field"])
        optim.load_state_dict(state["optimizer"])
        renderer.load_occupancy_state(state["grid"], device)
        step, losses = state["step"], state["losses"]
        step_seconds, samples_per_ray = state.get("step_seconds", []), state.get("samples_per_ray", [])
        # checkpoints older than this record: unknown (None) for their steps, so index i stays step i
        marched_per_ray = state.get("marched_per_ray", [None] * len(samples_per_ray))

    encode = latent_encoder(model, **_vae_options(config, device))
    # Written in the background (iso3d.utils.checkpoint): an official checkpoint is ~150 MB.
    writer = CheckpointWriter(out_dir / CHECKPOINT) if out_dir is not None else None

    saved_step = None  # the step the last checkpoint holds: Ctrl-C right after one does not write it again

    def save_checkpoint():
        nonlocal saved_step
        if writer is not None and saved_step != step:
            writer.save({"field": fld.state_dict(), "optimizer": optim.state_dict(), "grid": renderer.occupancy_state(),
                         "step": step, "losses": losses, "step_seconds": step_seconds,
                         "samples_per_ray": samples_per_ray, "marched_per_ray": marched_per_ray, "seed": seed,
                         "model_dtype": config.model_dtype, "fused_vae_norms": config.fused_vae_norms})
            saved_step = step

    start = time.time()
    bar = tqdm(**{"desc": "generate", **progress_options, "total": config.steps, "initial": step})

    def notice():
        bar.write("generate: Ctrl-C: stopping after this step and saving a checkpoint (Ctrl-C again: stop now)")

    try:
        with StepInterrupt(notice) as interrupt:
            while step < config.steps:
                torch.manual_seed(seed * 1_000_003 + step)  # every step's randomness depends on (seed, step) only
                gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
                step_start, stats = time.perf_counter(), {}
                loss = sds_step(model, fld, renderer, token, acp, config, step, gen, unet=unet, encode=encode,
                                stats=stats)
                if config.reference_loss_weight > 0:
                    loss = loss + config.reference_loss_weight * reference_view_loss(fld, renderer, rgba[0], config)
                optim.zero_grad(set_to_none=True)
                loss.backward()
                # Checked after the backward is queued (so the host does not wait for the forward before
                # launching it) and before the update (so a bad step never reaches the field).
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(
                        f"generate: the loss became {loss.item()} at step {step}; stopped. "
                        + (f"The last good checkpoint is {out_dir / CHECKPOINT}." if out_dir else "No checkpoint (out=None)."))
                optim.step()
                step += 1
                losses.append(round(loss.item(), 6))  # .item() waits for the GPU: the step's time below is whole
                step_seconds.append(round(time.perf_counter() - step_start, 5))
                samples_per_ray.append(round(stats["samples_per_ray"], 2))
                marched_per_ray.append(round(stats["marched_per_ray"], 2))
                if step % config.grid_update_every == 0 or step == 1:
                    renderer.update_occupancy(fld, step, every=1)
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
                if step % config.checkpoint_every == 0 or step == config.steps:
                    save_checkpoint()
                interrupt.check()  # Ctrl-C stops here, once the step and its records are whole
    except KeyboardInterrupt:
        save_checkpoint()  # keep what exists (unless the step's checkpoint is already written); --resume continues
        where = f"; its checkpoint is {out_dir / CHECKPOINT} (resume=True continues it)" if out_dir else ""
        raise KeyboardInterrupt(f"generate: interrupted after step {step} of {config.steps}{where}") from None
    finally:
        bar.close()
        if writer is not None:
            writer.wait()  # the last checkpoint is on disk before generate returns or raises
    run = {"seed": seed, "steps": step, "seconds": time.time() - start, "device": str(device),
           "config": dataclasses.asdict(config), "model": dataclasses.asdict(model.config), "losses": losses,
           "step_seconds": step_seconds, "samples_per_ray": samples_per_ray,
           "marched_per_ray": marched_per_ray, "versions": _versions()}
    if isinstance(unet, CUDAGraphedForward):
        run["cuda_graph"] = {"replays": unet.replays, "graphs": len(unet.graphs), "disabled": unet.disabled_reason}
    asset = Asset(fld.eval(), renderer.eval(), config, run)
    if out_dir is not None:
        asset.save(out_dir)
    return asset


def reference_view_loss(fld: ImplicitVolume, renderer: VolumeRenderer, rgba: torch.Tensor,
                        config: GenerateConfig, size: int = 64) -> torch.Tensor:
    """``0.5·Σ(render − image)²`` over RGB (on white) and alpha of the input view ``rgba`` ``[4, H, W]``.

    The view is rendered (albedo) at ``config.reference_pose``, at ``size``² (the image is area-resized).
    """
    from iso3d.cameras import camera_to_world
    from iso3d.io import composite_on_white

    elevation, azimuth, distance, fovy = config.reference_pose
    device = rgba.device
    c2w = camera_to_world(torch.tensor([elevation]), torch.tensor([azimuth]), distance).to(device)
    rays_o, rays_d = generate_rays(c2w, torch.tensor([fovy], device=device), size, size)
    out = renderer(fld, rays_o.reshape(-1, 3), rays_d.reshape(-1, 3), shading="albedo")
    target = torch.nn.functional.interpolate(rgba[None].float(), (size, size), mode="area")[0]
    rgb = out.rgb.reshape(size, size, 3).permute(2, 0, 1)
    alpha = out.opacity.reshape(1, size, size)
    return 0.5 * ((rgb - composite_on_white(target)).square().sum() + (alpha - target[3:]).square().sum())


def milestone_at(config: GenerateConfig, step: int, model_size: int) -> tuple[int, int]:
    """(render size, objects per batch) in force at ``step``."""
    current = config.milestones[0]
    for m in config.milestones:
        if step >= m[0]:
            current = m
    return (current[1] or model_size), current[2]


def _vae_options(config: GenerateConfig, device: torch.device) -> dict:
    """:func:`~iso3d.models.latent_encoder.latent_encoder`'s options for this run: the fused norms
    (channels-last) only on a GPU, where the Triton op runs, and not under torch.compile, which fuses
    the pairs itself."""
    fused = config.fused_vae_norms and not config.compile_vae and device.type == "cuda"
    return {"compile": config.compile_vae, "channels_last": fused, "fused_group_norm": fused}


def sds_step(model: MultiViewDiffusion, fld: ImplicitVolume, renderer: VolumeRenderer, token: torch.Tensor,
             alphas_cumprod: torch.Tensor, config: GenerateConfig, step: int, gen: torch.Generator,
             *, unet=None, encode=None, stats: dict | None = None) -> torch.Tensor:
    """The loss of one SDS step (forward only; the caller runs backward and the optimizer).

    Renders ``batch × n_views`` views at the milestone's size (``[B·V, 3, s, s]``), maps them into the
    UNet's space, noises them at one annealed timestep, runs the UNet on the conditional (``token``,
    ``[1, 1, D]``) and unconditional (zero) batch in one call, and returns the x0-reconstruction
    loss plus the weighted orientation loss. ``gen`` drives every random choice. ``unet`` replaces
    ``model.unet`` for the (gradient-free) noise prediction, e.g. a :class:`CUDAGraphedForward` of it.
    ``encode`` replaces ``model.encode_images``, e.g. :func:`~iso3d.models.latent_encoder.latent_encoder`'s.
    ``stats``, a dict, receives ``samples_per_ray``: how many samples the field was evaluated at per
    rendered ray after the occupancy grid and pruning (with gradients: what a step's render cost
    mostly scales with), and ``marched_per_ray``: how many the grid marched before pruning (their
    density is evaluated once without gradients).
    """
    device, n_views, acp = alphas_cumprod.device, config.views.n_views, alphas_cumprod
    size, batch = milestone_at(config, step, model.config.image_size)
    views = sample_sds_views(config.views, batch=batch, generator=gen)
    c2w, fovy = views.c2w.to(device), views.fovy.to(device)
    rays_o, rays_d = generate_rays(c2w, fovy, size, size)
    half = step < config.albedo_only_fraction * config.steps or not config.normals
    shading = "albedo" if half else ("albedo", "textureless", "lambertian")[int(torch.randint(3, (1,), generator=gen))]
    lights = None
    if shading != "albedo":  # a point light near each camera
        jitter = torch.randn(c2w.shape[0], 3, generator=gen).to(device) * 0.2
        light_pos = c2w[:, :3, 3] * 1.5 + jitter
        lights = light_pos[:, None, None, :].expand_as(rays_o).reshape(-1, 3)
    out = renderer.train()(fld, rays_o.reshape(-1, 3), rays_d.reshape(-1, 3), shading=shading,
                           light_positions=lights, with_normals=config.normals, generator=gen,
                           ambient=0.1 + 0.2 * float(torch.rand((), generator=gen)))
    if stats is not None:
        stats["samples_per_ray"] = out.n_samples / rays_o[..., 0].numel()
        stats["marched_per_ray"] = out.n_marched / rays_o[..., 0].numel()
    rgb = out.rgb.reshape(-1, size, size, 3).permute(0, 3, 1, 2)
    target = model.config.image_size
    if size != target:
        rgb = torch.nn.functional.interpolate(rgb, (target, target), mode="bilinear", antialias=size > target,
                                              align_corners=False)
    with torch.profiler.record_function("iso3d.sds.vae_encode"):
        z = (encode or model.encode_images)(rgb).float()
    frames = z.shape[0]
    t = config.sds.timesteps.sample(step, gen)
    a = acp[t]
    noise = torch.randn(z.shape, generator=gen).to(z)
    with torch.no_grad():
        x_t = a.sqrt() * z + (1 - a).sqrt() * noise
        cams = camera_embedding(views.elevation, views.azimuth, convention=model.config.camera_convention).to(device)
        context = torch.cat([token.expand(frames, -1, -1), torch.zeros_like(token).expand(frames, -1, -1)])
        with torch.profiler.record_function("iso3d.sds.unet"):
            eps = (unet if unet is not None else model.unet)(torch.cat([x_t, x_t]), torch.full((2 * frames,), t, device=device),
                                                             context, torch.cat([cams, cams]), n_views=n_views)
    schedule = model.config.scheduler  # a v-prediction bundle's output, read as ε (ε bundles: unchanged)
    eps_c, eps_u = (schedule.epsilon(half, x_t.float(), a) for half in eps.float().chunk(2))
    loss = x0_reconstruction_loss(z, x_t, a, eps_c, eps_u, n_views=n_views, guidance_scale=config.sds.guidance_scale,
                                  recon_std_rescale=config.sds.recon_std_rescale)
    w0, w1 = config.orient_weight
    orient_w = w0 + (w1 - w0) * min(step / max(1, config.steps // 2), 1.0)
    return loss + orient_w * out.orientation_loss if config.normals else loss
