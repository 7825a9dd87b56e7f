"""The density level whose surface has the silhouettes a soft NeRF shows.

A fixed export threshold suits a converged field, whose density jumps at its surface (the release's
25 after 10,000 steps). A short run (``GenerateConfig.cpu_tiny``: 200 steps) leaves a soft density
that falls off over a large fraction of the object's radius. Its renders show the object where the
opacity ``1 − exp(−∫σ ds)`` passes 1/2, but a fixed level can cut a mesh well inside that: the red
ball of the README at level 5 meshed at about 0.7 of the radius its renders show.

:func:`silhouette_threshold` picks the level ``τ`` at which the surface ``σ = τ`` has the same
silhouettes as the renders. Seen from a set of cameras around the box, the silhouette of
``{σ > τ}`` is the set of rays whose largest density exceeds ``τ``. The rendered silhouette is the
set of rays whose opacity exceeds 1/2. With ``k`` rays of the second kind, ``τ`` lies between the
``k``-th and the ``(k+1)``-th largest per-ray maximum, so that both sets have ``k`` rays.
"""

from __future__ import annotations

import math

import torch

from iso3d.cameras import camera_to_world, generate_rays

from .mesh import EmptySurfaceError

__all__ = ["silhouette_threshold"]


@torch.no_grad()
def silhouette_threshold(field, *, radius: float = 1.0, n_views: int = 8, size: int = 64, samples: int = 96,
                         chunk: int = 65536) -> float:
    """The density level ``τ`` whose surface covers as many pixels as the renders' opacity > 1/2.

    Args:
        field: any module with ``density(x)``: ``[P, 3] -> [P]`` (e.g. :class:`iso3d.nerf.ImplicitVolume`).
        radius: the field's box ``[−radius, radius]³``.
        n_views: cameras at azimuths ``360°·i/n_views`` and elevations alternating 0° and 30°, at
            distance ``3·radius``, with a field of view that holds the whole box.
        size: pixels per side of each view.
        samples: uniform samples per ray between its entry into and exit from the box.

    For a Gaussian ball ``σ(x) = A·exp(−‖x‖²/s²)`` the ray at distance ``b`` from the centre has
    ``∫σ = A·s·√π·exp(−b²/s²)``. Its opacity is 1/2 where that equals ``ln 2``, and there
    ``σ(b) = ln 2 / (s·√π)``, whatever ``A`` is:

        >>> import torch
        >>> class Ball(torch.nn.Module):
        ...     def density(self, x):
        ...         return 12.0 * torch.exp(-x.square().sum(-1) / 0.4 ** 2)
        >>> tau = silhouette_threshold(Ball())
        >>> round(tau / (math.log(2) / (0.4 * math.sqrt(math.pi))), 1)
        1.0

    ``chunk``: points per ``density`` call. Only the number of covered pixels is matched (both
    silhouettes are those of the same density, so they nest). If every ray's opacity passes 1/2, the
    level is half the smallest per-ray peak. The renderer skips samples with α < 0.01 and empty grid
    cells, so its opacity of a very soft field is slightly below ``1 − exp(−∫σ)`` (about 5 % of the
    integral for the example's ball).

    Raises :class:`~iso3d.export.mesh.EmptySurfaceError` (a ``ValueError``) if no ray's opacity
    reaches 1/2 (nothing visible to mesh).
    """
    for name, value in (("n_views", n_views), ("size", size), ("samples", samples), ("chunk", chunk)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"silhouette_threshold: {name} must be an int, got {type(value).__name__}")
        if value < 1:
            raise ValueError(f"silhouette_threshold: {name} must be >= 1, got {value}")
    if not radius > 0:
        raise ValueError(f"silhouette_threshold: radius must be positive, got {radius}")
    from iso3d.nerf.renderer import box_midpoints

    from .mesh import _evaluate

    tensor = next(iter(field.parameters()), None)
    tensor = tensor if tensor is not None else next(iter(field.buffers()), None)
    device = tensor.device if tensor is not None else torch.device("cpu")
    distance = 3.0 * radius
    # The box's circumscribed sphere (radius·√3) seen from `distance` fills the frame: no clipped silhouette.
    fovy = 2 * math.degrees(math.asin(math.sqrt(3) * radius / distance))
    index = torch.arange(n_views, dtype=torch.float32)
    c2w = camera_to_world(30.0 * (index % 2), 360.0 * index / n_views, torch.full((n_views,), distance))
    rays_o, rays_d = generate_rays(c2w, torch.full((n_views,), fovy), size, size)
    rays_o, rays_d = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)
    points, spacing, hit = box_midpoints(rays_o, rays_d, radius, samples)
    sigma = _evaluate(field.density, points[hit], chunk, device)  # [R, S]
    peak = sigma.amax(-1)
    optical_depth = sigma.sum(-1) * spacing[hit]  # ∫σ ds
    k = int((optical_depth > math.log(2)).sum())  # opacity 1 − exp(−depth) > 1/2
    if k == 0:
        raise EmptySurfaceError("silhouette_threshold: no ray's opacity reaches 1/2: the field shows nothing to mesh")
    ordered = peak.sort(descending=True).values
    return float(ordered[k - 1] + ordered[k]) / 2 if k < len(ordered) else float(ordered[-1]) / 2
