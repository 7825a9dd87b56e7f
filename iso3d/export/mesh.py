"""Marching cubes on the NeRF density, with a coarse-to-fine box and small components removed.

1. Coarse pass: the density on a ``coarse_resolution³`` grid over ``[−R, R]³`` finds the cells above
   the threshold (the release's 25); their bounding box, one cell wider, is the fine box.
2. Fine pass: ``resolution³`` samples over the fine box. Empty regions enclosed by the surface
   (not connected to the box's outside through empty voxels, 6-neighbourhood) are filled: a soft
   field's noisy interior would otherwise mesh as bubbles inside the object (``fill_cavities``).
   Marching cubes (PyMCubes) at the threshold.
3. Connected components with fewer than ``min_component_fraction`` of the largest one's faces are
   dropped (floaters); faces are oriented outward; vertex colours are the field's albedo.

With ``surface="rendered"`` step 2 meshes, instead of the level set, the surface the field's renders
show: the fine grid's depth where the opacity reaches 1/2, fused from 24 directions
(:mod:`iso3d.export.depth_fusion`). With ``surface="hull"`` it meshes the visual hull of the renders'
silhouettes (opacity > 1/2) along the same directions: the size the renders show, concavities no view
sees into filled. For both, the threshold only bounds the fine box (the coarse cells above it, one cell
wider: density outside it adds no opacity).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch

from iso3d.utils.imports import require

__all__ = ["MESH_SURFACES", "MeshSurface", "DensityVolume", "EmptySurfaceError", "Mesh", "MeshExportConfig",
           "density_volume", "extract_mesh"]

# What a mesh can be the surface of (MeshExportConfig.surface); see the module docstring.
MeshSurface = Literal["density", "rendered", "hull"]
MESH_SURFACES: tuple[str, ...] = typing.get_args(MeshSurface)


class EmptySurfaceError(ValueError):
    """The field has no surface to mesh (nothing above the level, nothing visible, or no crossing)."""


@dataclass(frozen=True)
class MeshExportConfig:
    threshold: float = 25.0
    resolution: int = 128
    coarse_resolution: int = 48
    radius: float = 1.0
    min_component_fraction: float = 0.05
    chunk: int = 65536
    fill_cavities: bool = True
    # "density": the level set density = threshold (the release's export). "rendered": the surface the
    # renders show (opacity 1/2 along 24 directions, fused). "hull": the visual hull of the renders'
    # silhouettes along those directions. See the module docstring.
    surface: MeshSurface = "density"

    def __post_init__(self):
        if self.surface not in MESH_SURFACES:
            raise ValueError(f"MeshExportConfig.surface must be one of {MESH_SURFACES}, got {self.surface!r}")


@dataclass
class Mesh:
    vertices: np.ndarray  # [N, 3] float32, world units
    faces: np.ndarray  # [M, 3] int64, counter-clockwise seen from outside
    colors: np.ndarray  # [N, 3] float32 in [0, 1]

    def to_trimesh(self):
        trimesh = require("trimesh", "mesh export")
        rgba = np.concatenate([self.colors, np.ones_like(self.colors[:, :1])], 1)
        return trimesh.Trimesh(self.vertices, self.faces, vertex_colors=(rgba * 255).round().astype(np.uint8), process=False)

    def save(self, path: str | Path) -> Path:
        """Write ``.glb``, ``.obj`` or ``.ply`` (vertex colours kept in all three)."""
        path = Path(path)
        if path.suffix.lower() not in (".glb", ".obj", ".ply"):
            raise ValueError(f"path: mesh format must be .glb, .obj or .ply, got {path.suffix!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.to_trimesh().export(path)
        return path


def _grid(lo: torch.Tensor, hi: torch.Tensor, n: int) -> torch.Tensor:  # [n, n, n, 3]
    axes = [torch.linspace(float(lo[i]), float(hi[i]), n) for i in range(3)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)


@torch.no_grad()
def _evaluate(fn: Callable, points: torch.Tensor, chunk: int, device) -> torch.Tensor:
    flat = points.reshape(-1, 3)
    out = [fn(p.to(device)).float().cpu() for p in flat.split(chunk)]
    return torch.cat(out).reshape(points.shape[:-1] + out[0].shape[1:])


def _fill_cavities(occupied: torch.Tensor) -> torch.Tensor:  # [X, Y, Z] bool -> same, enclosed space filled
    """Occupied voxels plus the empty ones not reachable from the grid's border through empty voxels."""
    free = ~occupied
    outside = torch.zeros_like(free)
    for axis in range(3):  # seeds: the free voxels of the six faces
        for end in (0, -1):
            index = [slice(None)] * 3
            index[axis] = end
            outside[tuple(index)] = free[tuple(index)]
    while True:  # grow through free voxels, 6-neighbourhood, until nothing changes
        grown = outside.clone()
        for axis in range(3):
            grown[(slice(None),) * axis + (slice(1, None),)] |= outside[(slice(None),) * axis + (slice(None, -1),)]
            grown[(slice(None),) * axis + (slice(None, -1),)] |= outside[(slice(None),) * axis + (slice(1, None),)]
        grown &= free
        if torch.equal(grown, outside):
            return ~outside
        outside = grown


@dataclass
class DensityVolume:
    """The fine pass: densities on a grid over the fine box, padded by one empty voxel on every side,
    with enclosed cavities raised above the threshold (when ``fill_cavities``); or, for the rendered
    surface, minus the fused signed distance, with threshold 0; for the hull, its smallest opacity over the
    views minus 1/2, threshold 0. Inside is ``values > threshold``."""

    values: np.ndarray  # [n + 2, n + 2, n + 2] float32
    lo: np.ndarray  # [3] world position of the first unpadded sample
    step: np.ndarray  # [3] world spacing of the samples
    threshold: float

    def occupied(self, x: torch.Tensor) -> torch.Tensor:  # [P, 3] world -> [P] bool: inside the exported surface
        index = torch.round((x.cpu().double() - torch.from_numpy(self.lo)) / torch.from_numpy(self.step)).long() + 1
        size = torch.tensor(self.values.shape)
        inside = ((index >= 0) & (index < size)).all(-1)
        index = torch.where(inside[:, None], index, torch.zeros_like(index))
        values = torch.from_numpy(self.values)[index[:, 0], index[:, 1], index[:, 2]]
        return inside & (values > self.threshold)


@torch.no_grad()
def density_volume(field, config: MeshExportConfig = MeshExportConfig()) -> DensityVolume:
    """The coarse and fine passes of the module docstring (``ValueError`` if nothing exceeds the threshold)."""
    device = next(field.parameters()).device
    r = config.radius
    lo, hi = torch.full((3,), -r), torch.full((3,), r)
    coarse = _evaluate(field.density, _grid(lo, hi, config.coarse_resolution), config.chunk, device)
    occupied = (coarse > config.threshold).nonzero()
    if occupied.numel() == 0:
        raise EmptySurfaceError(f"extract_mesh: no density above the threshold {config.threshold} inside [-{r}, {r}]^3: "
                         "the field is empty (did the optimization diverge or stop too early?)")
    cell = 2 * r / (config.coarse_resolution - 1)
    box_lo = (lo + (occupied.amin(0) - 1).float() * cell).clamp(min=-r)
    box_hi = (lo + (occupied.amax(0) + 1).float() * cell).clamp(max=r)
    volume = _evaluate(field.density, _grid(box_lo, box_hi, config.resolution), config.chunk, device)
    # Pad with an empty border so surfaces touching the box close (and the outside has seeds to grow from).
    volume = torch.nn.functional.pad(volume, (1, 1, 1, 1, 1, 1), value=0.0)
    step = ((box_hi - box_lo) / (config.resolution - 1)).double().numpy()
    if config.surface == "rendered":
        from .depth_fusion import fuse_rendered_depth

        sdf = fuse_rendered_depth(volume, box_lo.double().numpy() - step, step)  # the padded grid's first sample
        return DensityVolume((-sdf).numpy(), box_lo.double().numpy(), step, 0.0)
    if config.surface == "hull":
        from .depth_fusion import silhouette_hull

        hull = silhouette_hull(volume, box_lo.double().numpy() - step, step)
        hull[[0, -1]] = hull[:, [0, -1]] = hull[:, :, [0, -1]] = -0.5  # the empty border: the mesh closes
        return DensityVolume(hull.numpy(), box_lo.double().numpy(), step, 0.0)
    if config.fill_cavities:
        inside = volume > config.threshold
        cavities = _fill_cavities(inside) & ~inside
        volume[cavities] = 2 * config.threshold + 1  # above the level: no surface between them and the solid
    return DensityVolume(volume.numpy(), box_lo.double().numpy(), step, config.threshold)


@torch.no_grad()
def extract_mesh(field, config: MeshExportConfig = MeshExportConfig(), volume: DensityVolume | None = None) -> Mesh:
    """Mesh the surface ``density = threshold`` (or the rendered surface, ``config.surface``) of
    ``field`` (any object with ``density(x)`` and ``forward(x).albedo``, e.g.
    :class:`iso3d.nerf.ImplicitVolume`). ``volume``: this field's :func:`density_volume` under
    ``config``, if already computed."""
    mcubes = require("mcubes", "mesh export (marching cubes)")
    trimesh = require("trimesh", "mesh export")
    device = next(field.parameters()).device
    grid = volume if volume is not None else density_volume(field, config)
    verts, faces = mcubes.marching_cubes(grid.values, grid.threshold)  # the level its cavities were filled for
    if len(faces) == 0:
        raise EmptySurfaceError("extract_mesh: marching cubes found no surface in the fine box")
    verts = (verts - 1) * grid.step + grid.lo
    mesh = trimesh.Trimesh(verts, faces.astype(np.int64), process=True)
    parts = mesh.split(only_watertight=False)
    if len(parts) > 1:
        largest = max(len(p.faces) for p in parts)
        mesh = trimesh.util.concatenate([p for p in parts if len(p.faces) >= config.min_component_fraction * largest])
    if mesh.volume < 0:
        mesh.invert()
    vertices = np.asarray(mesh.vertices, dtype=np.float32)
    colors = _evaluate(lambda x: field(x).albedo, torch.from_numpy(vertices), config.chunk, device).numpy()
    return Mesh(vertices, np.asarray(mesh.faces, dtype=np.int64), np.clip(colors, 0, 1).astype(np.float32))
