"""Cameras: the one place that fixes iso3d's pose conventions.

Shared by the NeRF renderer (rays), the SDS view sampler and the diffusion model's camera embedding.

World frame: y-up, right-handed. A camera at elevation ``e`` and azimuth ``a`` (degrees) sits at
``p = d·(cos e·sin a, sin e, cos e·cos a)`` and looks at the origin. Its camera-to-world matrix has
OpenGL columns ``[right, up, back | p]`` (the camera looks along ``−back``; image y points up).

Camera embedding (MVDream / Isotropic3D, DESIGN.md §2): the same pose on the unit sphere
(distance and field of view are not encoded), left-multiplied by the y/z swap
``[[1,0,0,0],[0,0,−1,0],[0,1,0,0],[0,0,0,1]]`` (z-up), flattened row-major into 16 numbers.
The released checkpoint was fine-tuned with angles converted to radians twice (``deg·(π/180)²``):
``convention="isotropic3d-release"`` reproduces that; models iso3d trains use ``"standard"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = [
    "CameraConvention",
    "SDSViewConfig",
    "SDSViews",
    "YZ_SWAP",
    "camera_embedding",
    "camera_to_world",
    "generate_rays",
    "sample_sds_views",
]

CameraConvention = Literal["standard", "isotropic3d-release"]

YZ_SWAP = torch.tensor([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])


def _angles_to_radians(degrees: torch.Tensor, convention: CameraConvention) -> torch.Tensor:
    if convention == "standard":
        return torch.deg2rad(degrees)
    if convention == "isotropic3d-release":
        return torch.deg2rad(torch.deg2rad(degrees))  # the release's double conversion, kept on purpose
    raise ValueError(f"convention must be 'standard' or 'isotropic3d-release', got {convention!r}")


def camera_to_world(
    elevation: torch.Tensor,  # [B] degrees
    azimuth: torch.Tensor,  # [B] degrees
    distance: torch.Tensor | float = 1.0,  # [B] or scalar
    *,
    convention: CameraConvention = "standard",
) -> torch.Tensor:  # [B, 4, 4]
    """Camera-to-world matrices (OpenGL columns, y-up world) of cameras looking at the origin.

    Example:
        >>> c2w = camera_to_world(torch.tensor([0.0]), torch.tensor([0.0]), 2.0)
        >>> c2w[0, :3, 3].tolist()  # at azimuth 0 the camera sits on +z
        [0.0, 0.0, 2.0]
    """
    elevation = torch.as_tensor(elevation, dtype=torch.float32)
    azimuth = torch.as_tensor(azimuth, dtype=torch.float32)
    if elevation.shape != azimuth.shape or elevation.dim() != 1:
        raise ValueError(f"elevation and azimuth must be 1-D of equal length, got {tuple(elevation.shape)} and {tuple(azimuth.shape)}")
    e = _angles_to_radians(elevation, convention)
    a = _angles_to_radians(azimuth, convention)
    back = torch.stack([torch.cos(e) * torch.sin(a), torch.sin(e), torch.cos(e) * torch.cos(a)], dim=-1)
    world_up = torch.tensor([0.0, 1.0, 0.0], device=back.device).expand_as(back)
    right = torch.linalg.cross(world_up, back)
    # At the poles "up" is degenerate: fall back to the azimuth's tangent direction.
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    tangent = torch.stack([torch.cos(a), torch.zeros_like(a), -torch.sin(a)], dim=-1)
    right = torch.where(degenerate, tangent, right)
    right = right / right.norm(dim=-1, keepdim=True)
    up = torch.linalg.cross(back, right)
    c2w = torch.zeros(back.shape[0], 4, 4, device=back.device)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2] = right, up, back
    c2w[:, :3, 3] = back * torch.as_tensor(distance, dtype=torch.float32, device=back.device).reshape(-1, 1)
    c2w[:, 3, 3] = 1.0
    return c2w


def camera_embedding(
    elevation: torch.Tensor,  # [B] degrees
    azimuth: torch.Tensor,  # [B] degrees
    *,
    convention: CameraConvention = "standard",
) -> torch.Tensor:  # [B, 16]
    """The 16-vector the diffusion UNet's camera MLP takes (unit-sphere pose, z-up, row-major).

    Example:
        >>> camera_embedding(torch.tensor([0.0]), torch.tensor([0.0])).view(4, 4)[:3, 3].tolist()
        [0.0, -1.0, 0.0]
    """
    c2w = camera_to_world(elevation, azimuth, 1.0, convention=convention)
    return (YZ_SWAP.to(c2w.device) @ c2w).reshape(-1, 16)


def generate_rays(
    c2w: torch.Tensor,  # [B, 4, 4]
    fovy: torch.Tensor,  # [B] degrees
    height: int,
    width: int,
) -> tuple[torch.Tensor, torch.Tensor]:  # rays_o, rays_d: [B, H, W, 3]
    """World-space rays through pixel centres of a pinhole camera; directions unit length."""
    if c2w.dim() != 3 or c2w.shape[1:] != (4, 4):
        raise ValueError(f"c2w must have shape [B, 4, 4], got {tuple(c2w.shape)}")
    device = c2w.device
    focal = 0.5 * height / torch.tan(torch.deg2rad(torch.as_tensor(fovy, device=device, dtype=torch.float32)) / 2)
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    f = focal[:, None, None]
    px = ((xs + 0.5 - width / 2) / f).float()  # [B, H, W]
    py = (-(ys + 0.5 - height / 2) / f).float()
    dirs = torch.stack([px, py, -torch.ones_like(px)], dim=-1)  # camera looks along −z
    rays_d = torch.einsum("bij,bhwj->bhwi", c2w[:, :3, :3], dirs)
    rays_d = rays_d / rays_d.norm(dim=-1, keepdim=True)
    rays_o = c2w[:, None, None, :3, 3].expand_as(rays_d)
    return rays_o, rays_d


@dataclass(frozen=True)
class SDSViewConfig:
    """Random views of the official SDS stage (DESIGN.md §2)."""

    n_views: int = 4  # exactly 360°/n_views apart from a random azimuth offset
    elevation_range: tuple[float, float] = (0.0, 30.0)
    fovy_range: tuple[float, float] = (15.0, 60.0)
    camera_distance_range: tuple[float, float] = (0.8, 1.0)  # scaled by 1/tan(fovy/2)
    uniform_on_sphere_fraction: float = 0.5  # elevation uniform on the sphere, else in degrees


@dataclass
class SDSViews:
    elevation: torch.Tensor  # [B] degrees
    azimuth: torch.Tensor  # [B] degrees
    distance: torch.Tensor  # [B]
    fovy: torch.Tensor  # [B] degrees
    c2w: torch.Tensor  # [B, 4, 4]


def sample_sds_views(config: SDSViewConfig, batch: int = 1, *, generator: torch.Generator | None = None) -> SDSViews:
    """``batch`` groups of ``config.n_views`` views (B = batch·n_views), one elevation/fov/distance per group."""
    rand = lambda n: torch.rand(n, generator=generator)  # noqa: E731
    lo, hi = config.elevation_range
    if rand(1).item() < config.uniform_on_sphere_fraction:
        s_lo, s_hi = math.sin(math.radians(lo)), math.sin(math.radians(hi))
        elevation = torch.rad2deg(torch.asin(s_lo + rand(batch) * (s_hi - s_lo)))
    else:
        elevation = lo + rand(batch) * (hi - lo)
    offset = rand(batch) * 360.0
    azimuth = (offset[:, None] + torch.arange(config.n_views) * 360.0 / config.n_views) % 360.0
    fovy = config.fovy_range[0] + rand(batch) * (config.fovy_range[1] - config.fovy_range[0])
    d_lo, d_hi = config.camera_distance_range
    distance = (d_lo + rand(batch) * (d_hi - d_lo)) / torch.tan(torch.deg2rad(fovy) / 2)
    expand = lambda t: t[:, None].expand(batch, config.n_views).reshape(-1)  # noqa: E731
    elevation, fovy, distance, azimuth = expand(elevation), expand(fovy), expand(distance), azimuth.reshape(-1)
    return SDSViews(elevation, azimuth, distance, fovy, camera_to_world(elevation, azimuth, distance))
