"""Volume renderer: nerfacc's occupancy grid and packed samples on CUDA, a dense sampler on CPU.

Both paths produce the same quantities from the same quadrature
(``w_i = T_i (1 − e^{−σ_i δ_i})``, ``T_i = e^{−Σ_{j<i} σ_j δ_j}``, computed by nerfacc's
``render_weight_from_density``): rgb over a background, opacity ``Σ w``, depth ``Σ w t``,
normals ``Σ w n`` and the orientation-loss term. Samples are spaced by the official render step
``√3·2R / num_samples_per_ray`` inside the ray's intersection with the AABB.

* ``nerfacc`` sampler (CUDA): ``OccGridEstimator.sampling`` marches rays through the 32³ grid and
  returns packed samples; the field is evaluated only there.
* Both samplers then prune as the release does (threestudio's ``prune_alpha_threshold``): the
  density alone is evaluated without gradients at every surviving sample, and a sample is kept only
  if its opacity ``α_i = 1 − e^{−σ_i δ_i} ≥ 0.01`` and the transmittance in front of it
  ``T_i ≥ 10⁻⁴`` (nerfacc's ``render_visibility_from_density``). Colour, normals and gradients are
  then computed for the kept samples only: near a converged surface, a few per ray. As in nerfacc,
  the α threshold in force is ``min(0.01, mean occupancy of the grid)`` (:attr:`VolumeRenderer.alpha_threshold`):
  0 before the grid's first update, so that a young, faint field is not pruned away.
* ``dense`` sampler (any device): every ray gets the same number of slots ``[R, S]``; slots outside
  the AABB or in unoccupied grid cells get zero density and are not evaluated. The occupancy grid
  itself (nerfacc's ``OccGridEstimator``: EMA of ``σ·step``, threshold 0.01, update every 16 steps)
  is shared by both paths and is pure PyTorch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from iso3d.utils.imports import require

from .field import ImplicitVolume
from .shading import ShadingMode, shade

__all__ = ["RenderOutput", "RendererConfig", "VolumeRenderer", "ray_aabb_intersect"]


@dataclass(frozen=True)
class RendererConfig:
    num_samples_per_ray: int = 512
    radius: float = 1.0  # AABB [−radius, radius]³
    grid_resolution: int = 32
    grid_update_every: int = 16
    grid_alpha_threshold: float = 0.01  # a cell is occupied when σ·step exceeds this (EMA, nerfacc)
    grid_warmup_steps: int = 256  # nerfacc: evaluate every cell during the first steps
    grid_ema_decay: float = 0.95
    # Sample pruning before the full evaluation (see the module docstring); 0 and 0 turn it off.
    prune_alpha_threshold: float = 0.01
    early_stop_eps: float = 1e-4
    sampler: Literal["auto", "nerfacc", "dense"] = "auto"
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)  # white

    def __post_init__(self):
        if self.num_samples_per_ray < 1 or self.grid_resolution < 1:
            raise ValueError(f"RendererConfig: num_samples_per_ray and grid_resolution must be >= 1, got "
                             f"{self.num_samples_per_ray} and {self.grid_resolution}")
        if not 0 <= self.prune_alpha_threshold < 1 or not 0 <= self.early_stop_eps < 1:
            raise ValueError(f"RendererConfig: prune_alpha_threshold and early_stop_eps must be in [0, 1), got "
                             f"{self.prune_alpha_threshold} and {self.early_stop_eps}")

    @property
    def prunes(self) -> bool:
        return self.prune_alpha_threshold > 0 or self.early_stop_eps > 0

    @property
    def render_step_size(self) -> float:
        return math.sqrt(3) * 2 * self.radius / self.num_samples_per_ray


@dataclass
class RenderOutput:
    rgb: torch.Tensor  # [R, 3] composited over the background
    opacity: torch.Tensor  # [R, 1]
    depth: torch.Tensor  # [R, 1] expected termination distance (Σ w t), 0 where empty
    normal: torch.Tensor | None  # [R, 3] Σ w n (None when not computed)
    orientation_loss: torch.Tensor  # [] Σ w·max(0, n·d)² / #(opacity > 0), 0 without normals
    n_samples: int  # samples where the field was evaluated (with gradients, after pruning)
    n_marched: int = 0  # samples the grid marched before pruning (their density is evaluated without gradients)


def ray_aabb_intersect(
    rays_o: torch.Tensor,  # [R, 3]
    rays_d: torch.Tensor,  # [R, 3]
    radius: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # t_near, t_far: [R]; hit: [R] bool
    """Slab intersection with ``[−radius, radius]³``; ``t_near ≥ 0`` (origins inside start at 0)."""
    inv = 1.0 / torch.where(rays_d.abs() < 1e-12, torch.full_like(rays_d, 1e-12), rays_d)
    t0 = (-radius - rays_o) * inv
    t1 = (radius - rays_o) * inv
    t_near = torch.minimum(t0, t1).amax(dim=-1).clamp(min=0.0)
    t_far = torch.maximum(t0, t1).amin(dim=-1)
    return t_near, t_far, t_far > t_near


def box_midpoints(
    rays_o: torch.Tensor,  # [R, 3]
    rays_d: torch.Tensor,  # [R, 3]
    radius: float,
    samples: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # points [R, S, 3]; spacing: [R]; hit: [R] bool
    """The midpoints of ``samples`` equal parts of each ray's segment inside ``[−radius, radius]³``, and
    the world distance between them (``∫f ds ≈ spacing · Σ f(points)``; 0 for rays that miss)."""
    t_near, t_far, hit = ray_aabb_intersect(rays_o, rays_d, radius)
    length = (t_far - t_near).clamp(min=0)
    u = (torch.arange(samples, dtype=rays_o.dtype, device=rays_o.device) + 0.5) / samples
    t = t_near[:, None] + length[:, None] * u
    return rays_o[:, None] + t[..., None] * rays_d[:, None], length / samples * rays_d.norm(dim=-1), hit


class VolumeRenderer(nn.Module):
    """Renders an :class:`ImplicitVolume` along rays (see module docstring).

    Example:
        >>> from iso3d.kernels.hash_grid import HashGridConfig
        >>> from iso3d.nerf import FieldConfig, ImplicitVolume, RendererConfig, VolumeRenderer
        >>> field = ImplicitVolume(FieldConfig(encoding=HashGridConfig(n_levels=2, log2_hashmap_size=10)), seed=0)
        >>> renderer = VolumeRenderer(RendererConfig(num_samples_per_ray=32))
        >>> rays_o, rays_d = torch.tensor([[0.0, 0.0, 3.0]]), torch.tensor([[0.0, 0.0, -1.0]])
        >>> out = renderer(field, rays_o, rays_d)
        >>> out.rgb.shape, bool(out.opacity.item() > 0.5)  # the blob-initialized field is a soft ball
        (torch.Size([1, 3]), True)
    """

    def __init__(self, config: RendererConfig = RendererConfig()):
        super().__init__()
        self.config = config
        self._estimator = None
        self.grid_ready = False
        self.register_buffer("background", torch.tensor(config.background, dtype=torch.float32), persistent=False)

    # -- occupancy grid ------------------------------------------------------------------------
    def estimator(self, device: torch.device):
        if self._estimator is None:
            nerfacc = require("nerfacc", "the occupancy grid of iso3d's renderer")
            r = self.config.radius
            self._estimator = nerfacc.OccGridEstimator(
                roi_aabb=[-r, -r, -r, r, r, r], resolution=self.config.grid_resolution, levels=1
            ).to(device)
        return self._estimator

    def occupancy_state(self) -> dict | None:
        """The occupancy grid (``{"occs": [N], "binaries": [1, n, n, n]}``, copies), None before its first update."""
        if not self.grid_ready:
            return None
        return {"occs": self._estimator.occs.clone(), "binaries": self._estimator.binaries.clone()}

    def load_occupancy_state(self, state: dict | None, device: torch.device) -> None:
        """Restore what :meth:`occupancy_state` returned (None: leave the grid as it is)."""
        if state is None:
            return
        estimator = self.estimator(device)
        estimator.occs.copy_(state["occs"])
        estimator.binaries.copy_(state["binaries"])
        self.grid_ready = True

    @torch.no_grad()
    def update_occupancy(self, field: ImplicitVolume, step: int, *, every: int | None = None) -> None:
        """nerfacc's EMA occupancy update (call once per optimization step)."""
        estimator = self.estimator(next(field.parameters()).device)
        step_size = self.config.render_step_size
        estimator.update_every_n_steps(
            step=step,
            occ_eval_fn=lambda x: field.density(x) * step_size,
            occ_thre=self.config.grid_alpha_threshold,
            ema_decay=self.config.grid_ema_decay,
            warmup_steps=self.config.grid_warmup_steps,
            n=every or self.config.grid_update_every,
        )
        self.grid_ready = True

    @torch.no_grad()
    def rebuild_occupancy(self, field: ImplicitVolume) -> None:
        """The grid from scratch for ``field`` as it is: every cell's density evaluated once (at a
        jittered point, nerfacc's warm-up update) from an empty grid. For a field loaded without its
        run's grid; a run's own grid is an EMA over its updates, so the two differ slightly."""
        estimator = self.estimator(next(field.parameters()).device)
        estimator.occs.zero_()
        step_size = self.config.render_step_size
        estimator.update_every_n_steps(step=0, occ_eval_fn=lambda x: field.density(x) * step_size,
                                       occ_thre=self.config.grid_alpha_threshold, ema_decay=self.config.grid_ema_decay,
                                       warmup_steps=1, n=1)  # step 0 < warm-up: all cells
        self.grid_ready = True

    @property
    def alpha_threshold(self) -> float:
        """The α threshold of the pruning now: nerfacc's ``min(prune_alpha_threshold, mean(occupancy))``."""
        if self._estimator is None or self.config.prune_alpha_threshold <= 0:
            return 0.0
        return min(self.config.prune_alpha_threshold, self._estimator.occs.mean().item())

    def occupied(self, points: torch.Tensor) -> torch.Tensor:  # [..., 3] -> [...] bool
        """Whether each point lies in an occupied grid cell (True everywhere before the first update)."""
        if not self.grid_ready:
            return torch.ones(points.shape[:-1], dtype=torch.bool, device=points.device)
        binaries = self._estimator.binaries[0]  # [X, Y, Z], nerfacc's "ij" cell order
        res = binaries.shape[0]
        cell = ((points / self.config.radius * 0.5 + 0.5) * res).floor().long().clamp(0, res - 1)
        return binaries[cell[..., 0], cell[..., 1], cell[..., 2]]

    # -- rendering -----------------------------------------------------------------------------
    def _sampler(self, device: torch.device) -> str:
        choice = self.config.sampler
        if choice == "auto":
            return "nerfacc" if device.type == "cuda" else "dense"
        if choice == "nerfacc" and device.type != "cuda":
            raise ValueError("RendererConfig.sampler='nerfacc' needs CUDA tensors (nerfacc's packed sampling); use 'dense' or 'auto' on CPU")
        return choice

    def forward(
        self,
        field: ImplicitVolume,
        rays_o: torch.Tensor,  # [R, 3]
        rays_d: torch.Tensor,  # [R, 3] unit
        *,
        shading: ShadingMode = "albedo",
        light_positions: torch.Tensor | None = None,  # [R, 3], for lambertian / textureless
        ambient: float = 0.1,
        with_normals: bool | None = None,
        use_grid: bool = True,
        stratified: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> RenderOutput:
        if rays_o.shape != rays_d.shape or rays_o.dim() != 2 or rays_o.shape[-1] != 3:
            raise ValueError(f"rays_o and rays_d must both be [R, 3], got {tuple(rays_o.shape)} and {tuple(rays_d.shape)}")
        if light_positions is not None and light_positions.shape != rays_o.shape:
            raise ValueError(f"light_positions must be [R, 3] like the rays, got {tuple(light_positions.shape)}")
        stratified = self.training if stratified is None else stratified
        with_normals = (shading != "albedo") if with_normals is None else with_normals
        # The named ranges show up in torch.profiler (benchmarks/generate/profile_sds_step.py).
        with torch.profiler.record_function("iso3d.render.march_and_prune"):
            if self._sampler(rays_o.device) == "nerfacc":
                samples = self._packed_samples(field, rays_o, rays_d, use_grid, stratified)
            else:
                samples = self._dense_samples(field, rays_o, rays_d, use_grid, stratified, generator)
        return self._composite(field, rays_o, rays_d, samples, shading, light_positions, ambient, with_normals)

    def _dense_samples(self, field, rays_o, rays_d, use_grid, stratified, generator):
        cfg = self.config
        step = cfg.render_step_size
        t_near, t_far, hit = ray_aabb_intersect(rays_o, rays_d, cfg.radius)
        n_slots = cfg.num_samples_per_ray
        jitter = torch.rand(rays_o.shape[0], 1, generator=generator).to(rays_o) if stratified else 0.0
        t_starts = t_near[:, None] + (torch.arange(n_slots, device=rays_o.device) + jitter) * step  # [R, S]
        t_ends = torch.minimum(t_starts + step, t_far[:, None])
        valid = hit[:, None] & (t_ends > t_starts)
        if use_grid:
            mid = rays_o[:, None] + rays_d[:, None] * ((t_starts + t_ends) / 2)[..., None]
            valid = valid & self.occupied(mid)
        t_ends = torch.where(valid, t_ends, t_starts)  # zero-length slots contribute nothing
        ray_idx, slot_idx = valid.nonzero(as_tuple=True)
        n_marched = ray_idx.numel()
        if cfg.prunes and ray_idx.numel():
            ray_idx, slot_idx = self._visible_dense(field, rays_o, rays_d, t_starts, t_ends, ray_idx, slot_idx)
        return dict(kind="dense", t_starts=t_starts, t_ends=t_ends, ray_idx=ray_idx, slot_idx=slot_idx,
                    n_marched=n_marched)

    @torch.no_grad()
    def _visible_dense(self, field, rays_o, rays_d, t_starts, t_ends, ray_idx, slot_idx):
        """The dense twin of nerfacc's pruning in ``OccGridEstimator.sampling(sigma_fn=…)``."""
        nerfacc = require("nerfacc", "iso3d's renderer")
        cfg = self.config
        mid = (t_starts[ray_idx, slot_idx] + t_ends[ray_idx, slot_idx]) / 2
        sigma = field.density(rays_o[ray_idx] + rays_d[ray_idx] * mid[:, None]).to(t_starts.dtype)
        # Slots that were not evaluated have zero density: they do not change the transmittance.
        dense_sigma = torch.zeros_like(t_starts).index_put((ray_idx, slot_idx), sigma)
        visible = nerfacc.render_visibility_from_density(
            t_starts, t_ends, dense_sigma, early_stop_eps=cfg.early_stop_eps, alpha_thre=self.alpha_threshold)
        keep = visible[ray_idx, slot_idx]
        return ray_idx[keep], slot_idx[keep]

    def _packed_samples(self, field, rays_o, rays_d, use_grid, stratified):
        nerfacc = require("nerfacc", "iso3d's CUDA renderer")
        del nerfacc
        estimator = self.estimator(rays_o.device)
        saved = None
        if not (use_grid and self.grid_ready):
            # Without a built grid, march every cell: mark the grid occupied for this call only.
            saved = estimator.binaries.clone()
            estimator.binaries.fill_(True)
        cfg = self.config
        marched = []

        def sigma_fn(t_starts, t_ends, ray_indices):  # [N] each -> [N]; nerfacc calls it once per render
            marched.append(t_starts.numel())
            mid = (t_starts + t_ends)[:, None] / 2
            return field.density(rays_o[ray_indices] + rays_d[ray_indices] * mid).to(t_starts.dtype)

        try:
            with torch.no_grad():
                ray_idx, t_starts, t_ends = estimator.sampling(
                    rays_o, rays_d, render_step_size=cfg.render_step_size, stratified=stratified,
                    sigma_fn=sigma_fn if cfg.prunes else None, alpha_thre=cfg.prune_alpha_threshold,  # nerfacc lowers it as alpha_threshold
                    early_stop_eps=cfg.early_stop_eps,
                )
        finally:
            if saved is not None:
                estimator.binaries.copy_(saved)
        n_marched = sum(marched) if marched else ray_idx.numel()  # without pruning nerfacc calls no sigma_fn
        if ray_idx.numel() == 0:  # nothing left to render: one zero-length sample keeps the shapes valid
            ray_idx = torch.zeros(1, dtype=ray_idx.dtype, device=ray_idx.device)
            t_starts = t_ends = torch.zeros(1, dtype=rays_o.dtype, device=rays_o.device)
        return dict(kind="packed", t_starts=t_starts, t_ends=t_ends, ray_idx=ray_idx.long(), n_marched=n_marched)

    def _composite(self, field, rays_o, rays_d, s, shading, light_positions, ambient, with_normals):
        ray_idx = s["ray_idx"]
        if s["kind"] == "dense":
            t_starts = s["t_starts"][ray_idx, s["slot_idx"]]
            t_ends = s["t_ends"][ray_idx, s["slot_idx"]]
        else:
            t_starts, t_ends = s["t_starts"], s["t_ends"]
        t_mid = (t_starts + t_ends) / 2
        dirs = rays_d[ray_idx]
        points = rays_o[ray_idx] + dirs * t_mid[:, None]
        with torch.profiler.record_function("iso3d.render.field"):
            out = field(points, with_normals=with_normals)
        with torch.profiler.record_function("iso3d.render.composite"):
            return self._accumulate(rays_o, s, t_starts, t_ends, t_mid, dirs, points, out, shading, light_positions,
                                    ambient)

    def _accumulate(self, rays_o, s, t_starts, t_ends, t_mid, dirs, points, out, shading, light_positions, ambient):
        """Shade the evaluated samples and integrate them along their rays (nerfacc's quadrature)."""
        nerfacc = require("nerfacc", "iso3d's renderer")
        n_rays, ray_idx = rays_o.shape[0], s["ray_idx"]
        lights = light_positions[ray_idx] if light_positions is not None else None
        color = shade(out.albedo, out.normal, points, lights, mode=shading, ambient=ambient)

        if s["kind"] == "dense":
            # Scatter the evaluated samples back into [R, S] and use nerfacc's dense quadrature.
            dense = lambda v: torch.zeros(s["t_starts"].shape + v.shape[1:], dtype=v.dtype, device=v.device).index_put(  # noqa: E731
                (ray_idx, s["slot_idx"]), v)
            weights_dense, _, _ = nerfacc.render_weight_from_density(s["t_starts"], s["t_ends"], dense(out.density))
            weights = weights_dense[ray_idx, s["slot_idx"]]
        else:
            weights, _, _ = nerfacc.render_weight_from_density(
                t_starts, t_ends, out.density, ray_indices=ray_idx, n_rays=n_rays)

        def accumulate(values):  # [P, C] -> [R, C]
            return torch.zeros(n_rays, values.shape[-1], dtype=values.dtype, device=values.device).index_add(
                0, ray_idx, weights[:, None] * values)

        opacity = accumulate(torch.ones_like(t_mid)[:, None])
        depth = accumulate(t_mid[:, None])
        rgb = accumulate(color) + (1 - opacity) * self.background.to(color)
        normal, orient = None, rgb.new_zeros(())
        if out.normal is not None:
            normal = accumulate(out.normal)
            facing = (out.normal * dirs).sum(-1).clamp(min=0.0) ** 2
            orient = (weights.detach() * facing).sum() / (opacity > 0).sum().clamp(min=1)
        return RenderOutput(rgb, opacity, depth, normal, orient, int(t_mid.shape[0]), int(s["n_marched"]))
