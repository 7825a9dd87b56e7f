"""The surfaces a NeRF's renders show, from many directions: their depth fused (a TSDF), and their silhouettes' visual hull.

A density level set is the surface only of a field whose density jumps there. A short run leaves a
soft field, and some soft fields have no good level: the fourteenth session's evaluation found a
patchy shell that SDS grew over the initial blob's core, with a low band between them. Its renders
show a ball (the shell's opacity passes 1/2 on every ray), but every density level either cuts holes
through the shell or meshes the core.

:func:`fuse_rendered_depth` meshes what the renders show instead. Along each of many directions it
marches parallel rays through the density grid and finds, per ray, the depth ``t*`` at which the opacity
``1 − exp(−∫σ ds)`` first reaches 1/2 (the median depth of the rendering weights). Each voxel at depth
``t`` on a ray that reaches 1/2 sees the signed distance ``t* − t`` (positive in front of the
surface); a ray that never reaches 1/2 sees free space all along. Distances are truncated at
``±truncation``. Those further than ``truncation`` behind the surface are occluded and not counted.
The mean over the views that see a voxel is a truncated signed distance (Curless and Levoy 1996). A
voxel no view sees lies behind the surface in every direction, hence inside. Marching cubes at 0 gives
the mesh. Each view is orthographic: cameras at infinity.

:func:`silhouette_hull` uses the same views for the visual hull of the renders' silhouettes: the
points whose ray, in every view, has an opacity above 1/2 (see its docstring).

The views come from a few rotations of the grid (default 5), each giving 6 axis-aligned
directions: 30 views along 24 distinct directions (a 45° turn about an axis keeps that axis, so
the six axis directions count twice). For each rotation the density is resampled onto an isotropic grid holding the
box's bounding sphere, so every ray is one axis of a tensor: a cumulative sum gives its opacity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["VIEW_ROTATIONS", "fuse_rendered_depth", "silhouette_hull"]


def _rotation(axis, degrees: float) -> torch.Tensor:  # [3, 3], Rodrigues
    k = torch.tensor(axis, dtype=torch.float64)
    k = k / k.norm()
    K = torch.tensor([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]], dtype=torch.float64)
    a = math.radians(degrees)
    return torch.eye(3, dtype=torch.float64) + math.sin(a) * K + (1 - math.cos(a)) * K @ K


# Identity, 45° about each axis (the 12 face diagonals), and one that turns z to a body diagonal.
VIEW_ROTATIONS = (
    torch.eye(3, dtype=torch.float64),
    _rotation((1, 0, 0), 45.0),
    _rotation((0, 1, 0), 45.0),
    _rotation((0, 0, 1), 45.0),
    _rotation((1, -1, 0), math.degrees(math.acos(1 / math.sqrt(3)))),
)


def _sample(volume: torch.Tensor, index_to_normalized: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Trilinear samples of ``volume`` ``[C, X, Y, Z]`` (zero outside) at the points whose sample
    coordinates, under the affine map ``index_to_normalized`` ``[4, 3]`` (rows: x, y, z, 1; float64),
    are ``index`` ``[..., 3]``. Returns ``[C, ...]``."""
    a = index_to_normalized.float()
    normalized = torch.addmm(a[3], index.reshape(-1, 3), a[:3])  # grid_sample's [-1, 1], align_corners=True
    grid = normalized.flip(-1).reshape(1, 1, 1, -1, 3)  # its last axis is (W, H, D) = (z, y, x)
    out = F.grid_sample(volume[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.reshape(volume.shape[0], *index.shape[:-1])


def _world_to_normalized(lo: torch.Tensor, step: torch.Tensor, shape) -> torch.Tensor:  # [4, 4] on homogeneous rows
    scale = 2 / (step * (torch.tensor(shape, dtype=torch.float64) - 1))
    m = torch.zeros(4, 4, dtype=torch.float64)
    m[:3, :3] = torch.diag(scale)
    m[3, :3] = -lo * scale - 1
    m[3, 3] = 1
    return m


def _affine(linear: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:  # x ↦ x·linear + offset as [4, 4]
    m = torch.eye(4, dtype=torch.float64)
    m[:3, :3] = linear
    m[3, :3] = offset
    return m


def _axis_views(sigma: torch.Tensor, pitch: float, truncation: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The six axis-aligned views of an isotropic grid ``[M, M, M]``: the sums of their truncated
    signed distances and of their weights per voxel."""
    total = torch.zeros_like(sigma)
    weight = torch.zeros_like(sigma)
    half = math.log(2.0)  # opacity 1/2
    m = sigma.shape[0]
    for axis in range(3):
        s = sigma.movedim(axis, -1) * pitch  # optical depth of each sample (a cell of one pitch)
        after = torch.cumsum(s, -1)  # entering at index 0: optical depth after each sample
        through = after[..., -1:]
        ahead = through - after + s  # entering at index M − 1
        index = torch.arange(m, dtype=s.dtype)
        for tau, forward in ((after, True), (ahead, False)):
            n = (tau < half).sum(-1, keepdim=True)  # samples crossed before the opacity reaches 1/2
            hit = through >= half
            k = (n if forward else m - 1 - n).clamp(0, m - 1)  # the sample where it does
            before = torch.where(n > 0, tau.gather(-1, (k - 1 if forward else k + 1).clamp(0, m - 1)), 0.0)
            inside = ((half - before) / s.gather(-1, k).clamp(min=1e-12)).clamp(0, 1)
            crossing = k - 0.5 + inside if forward else k + 0.5 - inside
            sdf = (crossing - index) if forward else (index - crossing)
            sdf = torch.where(hit, sdf * pitch, math.inf)
            seen = (sdf >= -truncation).to(s.dtype)
            total += (sdf.clamp(max=truncation) * seen).movedim(-1, axis)
            weight += seen.movedim(-1, axis)
    return total, weight


@torch.no_grad()
def fuse_rendered_depth(density: torch.Tensor, lo, step, *, truncation: float | None = None,
                        rotations=VIEW_ROTATIONS, max_size: int = 160) -> torch.Tensor:
    """The truncated signed distance to the surface the renders of a density grid show.

    Args:
        density: ``[X, Y, Z]`` densities, sample ``(i, j, k)`` at world ``lo + (i, j, k)·step``
            (zero is assumed outside the grid).
        lo: ``[3]`` world position of sample ``(0, 0, 0)``.
        step: ``[3]`` world spacing along each axis.
        truncation: the band of signed distances kept, in world units; default 3 samples.
        rotations: ``[3, 3]`` rotations; each adds the six directions of its axes.
        max_size: the resampled grids' largest side (their pitch is the smallest ``step``, or
            coarser so that the box's bounding sphere fits in ``max_size`` samples).

    Returns:
        ``[X, Y, Z]`` float32: negative inside the rendered surface, positive outside, in
        ``[−truncation, truncation]``; ``−truncation`` where no view sees the voxel (the interior).

    A uniform ball of density 40 and radius 0.5 shows its edge where a ray has crossed ``ln 2 / 40``
    of it; along the x axis the fused distance changes sign there, to within a sample:

        >>> import math, torch
        >>> n = 49
        >>> axis = torch.linspace(-0.8, 0.8, n, dtype=torch.float64)
        >>> x = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1)
        >>> sdf = fuse_rendered_depth(40.0 * (x.norm(dim=-1) < 0.5).float(), [-0.8] * 3, [1.6 / (n - 1)] * 3)
        >>> line = sdf[n // 2:, n // 2, n // 2]  # x = 0 … 0.8
        >>> i = int((line < 0).sum()) - 1  # the last sample inside
        >>> edge = float(axis[n // 2 + i] - line[i] / (line[i + 1] - line[i]) * (1.6 / (n - 1)))
        >>> abs(edge - (0.5 - math.log(2) / 40)) < 1.6 / (n - 1)
        True
    """
    density, lo, step = _checked(density, lo, step, "fuse_rendered_depth")
    truncation = 3 * float(step.max()) if truncation is None else float(truncation)
    total = torch.zeros(density.shape)
    weight = torch.zeros(density.shape)
    for sigma, pitch, to_voxels in _rotated_grids(density, lo, step, rotations, max_size):
        obs, seen = _axis_views(sigma, pitch, truncation)
        fused = to_voxels(torch.stack([obs, seen]))
        total += fused[0]
        weight += fused[1]
    seen = weight > 0.5
    return torch.where(seen, total / weight.clamp(min=1e-6), torch.full_like(total, -truncation))


@torch.no_grad()
def silhouette_hull(density: torch.Tensor, lo, step, *, rotations=VIEW_ROTATIONS, max_size: int = 160) -> torch.Tensor:
    """The visual hull of a density grid's rendered silhouettes: the points every view sees as covered.

    Args: ``density``, ``lo``, ``step``, ``rotations`` and ``max_size`` as :func:`fuse_rendered_depth`'s.

    Returns:
        ``[X, Y, Z]`` float32 in ``[−1/2, 1/2]``: over the views, the smallest opacity ``1 − exp(−∫σ ds)``
        of the ray through the voxel, minus 1/2. Positive inside the hull; marching cubes at 0 meshes it.

    Each view is orthographic, so a view's silhouette is a 2D opacity map swept along its axis, and the
    hull is where every swept map exceeds 1/2. Its silhouettes along those directions lie inside the
    renders', and equal them where the renders' silhouettes are consistent (one solid could cast them
    all, as a ball's or any convex field's can). So it has the size the renders show, where the level set
    and the fused depth of a soft field lie inside it; but it fills a concavity no view sees into (the
    inside of a cup), and a field whose views disagree (a thin rod, opaque only end-on) loses what
    some view does not cover.

    A uniform ball of density 1 and radius 0.5 is covered out to the impact parameter ``b`` at which
    the chord's optical depth ``2·√(0.5² − b²)`` reaches ``ln 2``, ``b ≈ 0.360`` (not the ball's 0.5):

        >>> import math, torch
        >>> n = 49
        >>> axis = torch.linspace(-0.8, 0.8, n, dtype=torch.float64)
        >>> x = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1)
        >>> hull = silhouette_hull((x.norm(dim=-1) < 0.5).float(), [-0.8] * 3, [1.6 / (n - 1)] * 3)
        >>> line = hull[n // 2:, n // 2, n // 2]  # x = 0 … 0.8
        >>> i = int((line > 0).sum()) - 1  # the last sample inside
        >>> edge = float(axis[n // 2 + i] + line[i] / (line[i] - line[i + 1]) * (1.6 / (n - 1)))
        >>> abs(edge - math.sqrt(0.25 - (math.log(2) / 2) ** 2)) < 0.5 * 1.6 / (n - 1)
        True
    """
    density, lo, step = _checked(density, lo, step, "silhouette_hull")
    hull = torch.full(density.shape, 0.5)
    for sigma, pitch, to_voxels in _rotated_grids(density, lo, step, rotations, max_size):
        # Outside the rotated grid nothing is covered: resample opacity (0 there), then subtract 1/2.
        covered = torch.stack([torch.sum(sigma, axis, keepdim=True).mul(pitch).expand_as(sigma) for axis in range(3)])
        opacity = -torch.expm1(-covered.amin(0))
        hull = torch.minimum(hull, to_voxels(opacity[None])[0] - 0.5)
    return hull


def _checked(density, lo, step, name):
    if density.dim() != 3:
        raise ValueError(f"{name}: density must have shape [X, Y, Z], got {tuple(density.shape)}")
    lo = torch.as_tensor(lo, dtype=torch.float64).reshape(3)
    step = torch.as_tensor(step, dtype=torch.float64).reshape(3)
    if not (step > 0).all():
        raise ValueError(f"{name}: step must be positive, got {step.tolist()}")
    return density.detach().float().cpu().clamp(min=0), lo, step


def _rotated_grids(density, lo, step, rotations, max_size):
    """For each rotation: the density resampled onto an isotropic grid ``[M, M, M]`` holding the box's
    bounding sphere, whose axes are the rotation's columns; its pitch; and a function resampling
    ``[C, M, M, M]`` on that grid back to the density's voxels ``[C, X, Y, Z]``."""
    extent = step * (torch.tensor(density.shape, dtype=torch.float64) - 1)
    centre = lo + extent / 2
    radius = float(extent.norm() / 2)
    pitch = max(float(step.min()), 2 * radius / (max_size - 1))
    size = int(math.ceil(2 * radius / pitch)) + 1
    local = torch.stack(torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * 3, indexing="ij"), -1)
    voxels = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in density.shape], indexing="ij"), -1)
    to_density = _world_to_normalized(lo, step, density.shape)
    half_width = (size - 1) * pitch / 2
    for rotation in rotations:
        rotation = torch.as_tensor(rotation, dtype=torch.float64)
        # Rotated sample (a, b, c) sits at centre + R·((a, b, c)·pitch − half_width): R's columns are its axes.
        local_to_world = _affine(rotation.T * pitch, centre - half_width * rotation.sum(1))
        sigma = _sample(density[None], (local_to_world @ to_density)[:, :3], local)[0]
        world_to_local = torch.linalg.inv(local_to_world)
        voxel_to_world = _affine(torch.diag(step), lo)
        to_local = voxel_to_world @ world_to_local @ _world_to_normalized(torch.zeros(3, dtype=torch.float64),
                                                                          torch.ones(3, dtype=torch.float64), (size,) * 3)
        yield sigma, pitch, lambda values, m=to_local[:, :3]: _sample(values, m, voxels)
