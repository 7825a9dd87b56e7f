"""3D metrics of a generated asset against a procedural object whose geometry is known exactly.

Image-to-3D has no fixed scale, position or azimuth (Isotropic3D never sees the input's camera), so
both shapes are normalized first: each is centred on the centroid of its surface samples and scaled
so that their RMS distance from it is 1 (both invariant to turns about the vertical axis, unlike a
bounding box), and the generated shape is turned about the vertical (y) axis to the best of ``n_azimuths``
angles (by Chamfer distance). The resulting :class:`Alignment` maps ground-truth world points into the
generated asset's world, and is reused for volume IoU and for placing the cameras of novel views.

Novel views are not scaled by the mesh's size: a NeRF's exported surface (a density threshold) can be
much smaller than what it shows (a soft shell around a dense core), and a camera moved in by that
ratio would sit inside the shell. So the views keep the true camera's distance from the object's
centre (:meth:`Alignment.view_camera`) and match the apparent size by zooming instead: the field of
view at which the generated silhouettes cover as many pixels as the true ones (:func:`matched_fovy`).

* Chamfer distance: ``mean_p min_g ‖p − g‖ + mean_g min_p ‖g − p‖`` over surface samples, in
  normalized units (RMS radius 1).
* Volume IoU: occupancy on a ``resolution³`` grid over the normalized cube.

Both are blind to the mesh's size (the normalization removes it). What does see it is a comparison of
the mesh with the NeRF it was cut from: :func:`occupancy_silhouette` renders the mesh's silhouettes
from the novel views' cameras, to be compared with the NeRF's own renders (opacity > 1/2).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

__all__ = ["Alignment", "align", "chamfer_distance", "matched_fovy", "normalization", "occupancy_silhouette",
           "volume_iou"]


def normalization(points: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(centroid ``[3]``, RMS distance from it) of surface samples ``points`` ``[N, 3]``."""
    if points.dim() != 2 or points.shape[-1] != 3 or points.shape[0] == 0:
        raise ValueError(f"points must have shape [N, 3] with N > 0, got {tuple(points.shape)}")
    center = points.mean(0)
    return center, max(float((points - center).square().sum(-1).mean().sqrt()), 1e-6)


def _rotation_y(angle_deg: float) -> torch.Tensor:
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def chamfer_distance(a: torch.Tensor, b: torch.Tensor, chunk: int = 4096) -> float:
    """Symmetric mean nearest-neighbour distance between point sets ``[N, 3]`` and ``[M, 3]``."""
    def one_way(x, y):
        # Exact distances: the matmul form of cdist loses ~1e-4 to cancellation.
        return torch.cat([torch.cdist(c, y, compute_mode="donot_use_mm_for_euclid_dist").amin(1)
                          for c in x.split(chunk)]).mean()

    return float(one_way(a, b) + one_way(b, a))


@dataclass(frozen=True)
class Alignment:
    """``x_gen = gen_center + scale · R_y(azimuth) · (x_true − true_center)`` (scale: RMS radius ratio)."""

    true_center: torch.Tensor  # [3]
    gen_center: torch.Tensor  # [3]
    scale: float  # generated half-extent / true half-extent
    azimuth: float  # degrees about +y

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # [..., 3] true world -> generated world
        r = _rotation_y(self.azimuth).to(x)
        return self.gen_center.to(x) + self.scale * (x - self.true_center.to(x)) @ r.T

    def camera(self, c2w: torch.Tensor) -> torch.Tensor:  # [B, 4, 4] true-world camera -> generated world
        r = _rotation_y(self.azimuth).to(c2w)
        out = c2w.clone()
        out[:, :3, :3] = r @ c2w[:, :3, :3]
        out[:, :3, 3] = self(c2w[:, :3, 3])
        return out

    def view_camera(self, c2w: torch.Tensor) -> torch.Tensor:  # [B, 4, 4]
        """:meth:`camera` without the scale: turned and centred, at the true camera's distance."""
        return dataclasses.replace(self, scale=1.0).camera(c2w)


def matched_fovy(fovy: float, true_alpha: torch.Tensor, gen_alpha: torch.Tensor, probe_fovy: float | None = None) -> float:
    """The field of view (degrees) at which generated views cover as many pixels as the true views.

    ``true_alpha``: the true views' silhouettes ``[V, H, W]`` (or any shape) rendered at ``fovy``;
    ``gen_alpha``: the generated views' opacity at ``probe_fovy`` (default ``fovy``), same pixel count
    per view, same cameras. A pinhole's image of a distant-enough object scales with ``1/tan(fov/2)``,
    so its covered area with ``1/tan²``:

        A_gen(f) = A_gen(p) · tan²(p/2) / tan²(f/2);   A_gen(f) = A_true  ⇒
        tan(f/2) = tan(p/2) · sqrt(A_gen(p) / A_true)

    Soft opacity counts fractionally. A probe wider than ``fovy`` keeps a generated object larger than
    the true one inside the frame. Empty silhouettes (either side) return ``fovy`` unchanged.

    >>> round(matched_fovy(40.0, torch.ones(10), torch.ones(40)), 2)  # 4× the area: zoom out 2× in tan
    72.1
    """
    probe_fovy = fovy if probe_fovy is None else probe_fovy
    if not (0 < fovy < 180 and 0 < probe_fovy < 180):
        raise ValueError(f"fovy and probe_fovy must be in (0, 180) degrees, got {fovy} and {probe_fovy}")
    a_true, a_gen = float(true_alpha.float().sum()), float(gen_alpha.float().sum())
    if a_true <= 0 or a_gen <= 0:
        return fovy
    half = math.atan(math.tan(math.radians(probe_fovy) / 2) * math.sqrt(a_gen / a_true))
    return math.degrees(2 * half)


def align(true_points: torch.Tensor, gen_points: torch.Tensor, n_azimuths: int = 24) -> tuple[Alignment, float]:
    """The best :class:`Alignment` over ``n_azimuths`` turns, and its Chamfer distance (normalized units)."""
    tc, ts = normalization(true_points)
    gc, gs = normalization(gen_points)
    gen_n = (gen_points - gc) / gs
    best = None
    for k in range(n_azimuths):
        candidate = Alignment(tc, gc, gs / ts, 360.0 * k / n_azimuths)
        d = chamfer_distance((candidate(true_points) - gc) / gs, gen_n)
        if best is None or d < best[1]:
            best = (candidate, d)
    return best


def volume_iou(true_occupied, gen_occupied, alignment: Alignment, true_half_extent: float,
               resolution: int = 32) -> float:
    """IoU of two occupancy functions (``[P, 3] -> [P] bool``) on the cube of half-side
    ``true_half_extent`` around the true shape's centre, mapped into the generated shape by ``alignment``."""
    axis = torch.linspace(-1, 1, resolution)
    u = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    x_true = alignment.true_center + true_half_extent * u
    a = true_occupied(x_true)
    b = gen_occupied(alignment(x_true))
    union = (a | b).sum()
    return float((a & b).sum() / union) if union > 0 else 0.0


@torch.no_grad()
def occupancy_silhouette(occupied, rays_o: torch.Tensor, rays_d: torch.Tensor, radius: float,
                         samples: int = 256, chunk: int = 1 << 20) -> torch.Tensor:
    """Which rays ``[..., 3]`` hit an occupancy function (``[P, 3] -> [P] bool``) inside ``[−radius, radius]³``.

    Each ray is probed at ``samples`` evenly spaced points between its entry into and exit from the
    cube, so a part thinner than the cube's diagonal over ``samples`` can be missed. Returns ``[...]`` bool.

    >>> o = torch.tensor([[0.0, 0.0, 3.0], [0.5, 0.0, 3.0]]); d = torch.tensor([[0.0, 0.0, -1.0]] * 2)
    >>> occupancy_silhouette(lambda x: x.norm(dim=-1) < 0.3, o, d, radius=1.0).tolist()
    [True, False]
    """
    from iso3d.nerf.renderer import box_midpoints

    if rays_o.shape != rays_d.shape or rays_o.shape[-1] != 3:
        raise ValueError(f"rays_o and rays_d must both have shape [..., 3], got {tuple(rays_o.shape)} and {tuple(rays_d.shape)}")
    shape = rays_o.shape[:-1]
    o, d = rays_o.reshape(-1, 3).float(), rays_d.reshape(-1, 3).float()
    points, _, hit = box_midpoints(o, d, radius, samples)
    inside = torch.cat([occupied(c) for c in points.reshape(-1, 3).split(chunk)]).reshape(-1, samples)
    return (inside.any(-1) & hit).reshape(shape)
