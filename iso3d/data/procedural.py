"""Procedural 3D objects with known geometry, rendered exactly from the method's cameras.

An object is the union of 1–3 primitives (sphere, box, cylinder, cone, torus, capsule) with random
sizes, placements, rotations and colours, inside the ``[−0.6, 0.6]³`` box. Rotations are either any
(uniform over 3D rotations) or upright (:class:`ObjectSampling`): each primitive rests the way it
would on a table (a cone on its base, a cylinder or capsule standing or lying, a ring flat or on its
edge, a box flat), turned about the vertical axis only, like the gravity-aligned objects the
released model was trained on. Its signed distance function is exact for each primitive (Inigo
Quilez's formulas) and the union's is the minimum, so sphere tracing finds the true surface; the
ground truth (SDF on a grid, or a mesh through marching cubes) is available for 3D evaluation.

Rendering: sphere tracing from the pixel centres of :func:`iso3d.cameras.generate_rays`, Lambertian
shading with a head light (``ambient + (1 − ambient)·max(0, n·v)``), white background, alpha = hit,
2×2 supersampling for antialiasing. Deterministic given the seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from iso3d.cameras import camera_to_world, generate_rays

__all__ = ["PRIMITIVES", "ObjectSampling", "Primitive", "ProceduralObject", "RenderSettings", "random_object",
           "render_object", "render_object_from"]

PRIMITIVES = ("sphere", "box", "cylinder", "cone", "torus", "capsule")


def _random_rotation(gen: torch.Generator) -> torch.Tensor:
    q = torch.randn(4, generator=gen)
    w, x, y, z = (q / q.norm()).tolist()
    return torch.tensor([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


@dataclass
class Primitive:
    kind: str
    center: torch.Tensor  # [3]
    rotation: torch.Tensor  # [3, 3] world-from-local
    size: torch.Tensor  # kind-specific parameters
    color: torch.Tensor  # [3] albedo in [0, 1]

    def sdf(self, p: torch.Tensor) -> torch.Tensor:  # [P, 3] -> [P]
        q = (p - self.center) @ self.rotation  # world -> local
        s = self.size
        if self.kind == "sphere":
            return q.norm(dim=-1) - s[0]
        if self.kind == "box":
            d = q.abs() - s[:3]
            return d.clamp(min=0).norm(dim=-1) + d.amax(dim=-1).clamp(max=0)
        if self.kind == "cylinder":  # radius s0, half-height s1, axis y
            d = torch.stack([q[:, [0, 2]].norm(dim=-1) - s[0], q[:, 1].abs() - s[1]], dim=-1)
            return d.clamp(min=0).norm(dim=-1) + d.amax(dim=-1).clamp(max=0)
        if self.kind == "capsule":  # radius s0, half-length s1, axis y
            y = q[:, 1].clamp(-s[1], s[1])
            return (q - torch.stack([torch.zeros_like(y), y, torch.zeros_like(y)], -1)).norm(dim=-1) - s[0]
        if self.kind == "torus":  # major s0, minor s1, in the xz plane
            return torch.stack([q[:, [0, 2]].norm(dim=-1) - s[0], q[:, 1]], -1).norm(dim=-1) - s[1]
        if self.kind == "cone":  # capped cone: base radius s0 at y=−h, apex at y=+h, h = s1
            r, h = s[0], s[1]
            qx = torch.stack([q[:, [0, 2]].norm(dim=-1), q[:, 1]], -1)
            k1 = torch.tensor([0.0, h], device=p.device)
            k2 = torch.tensor([-r, 2 * h], device=p.device)
            ca = torch.stack([qx[:, 0] - torch.minimum(qx[:, 0], torch.where(qx[:, 1] < 0, r, 0.0 * r)),
                              qx[:, 1].abs() - h], -1)
            t = (((k1 - qx) * k2).sum(-1) / (k2 * k2).sum()).clamp(0, 1)
            cb = qx - k1 + k2 * t[:, None]
            sign = torch.where((cb[:, 0] < 0) & (ca[:, 1] < 0), -1.0, 1.0)
            return sign * torch.minimum((ca * ca).sum(-1), (cb * cb).sum(-1)).sqrt()
        raise ValueError(f"unknown primitive kind {self.kind!r}")


@dataclass
class ProceduralObject:
    primitives: list[Primitive] = field(default_factory=list)

    def sdf(self, p: torch.Tensor) -> torch.Tensor:  # [P, 3] -> [P]
        return torch.stack([prim.sdf(p) for prim in self.primitives], 0).amin(0)

    def albedo(self, p: torch.Tensor) -> torch.Tensor:  # [P, 3] -> [P, 3]: colour of the nearest primitive
        nearest = torch.stack([prim.sdf(p) for prim in self.primitives], 0).argmin(0)
        colors = torch.stack([prim.color for prim in self.primitives])
        return colors[nearest]

    def sdf_grid(self, resolution: int = 64, radius: float = 1.0) -> torch.Tensor:  # [R, R, R], x-major
        """The SDF sampled on a regular grid over ``[−radius, radius]³`` (ground truth for 3D metrics)."""
        axis = torch.linspace(-radius, radius, resolution)
        pts = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        return torch.cat([self.sdf(chunk) for chunk in pts.split(65536)]).reshape(resolution, resolution, resolution)


# Kinds that may be laid down in the upright distribution (their symmetry axis, local y, then lies
# horizontal: a cylinder or capsule on its side, a ring on its edge).
_MAY_LIE = ("cylinder", "capsule", "torus")


def _upright_rotation(kind: str, gen: torch.Generator) -> torch.Tensor:
    """World-from-local rotation of a resting primitive: optionally laid on its side (90° about x)
    if its kind may lie, then turned about the vertical (y) axis by a uniform angle."""
    lying = kind in _MAY_LIE and bool(torch.rand((), generator=gen) < 0.5)
    yaw = 2 * torch.pi * float(torch.rand((), generator=gen))
    c, s = math.cos(yaw), math.sin(yaw)
    turn = torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    lay = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]) if lying else torch.eye(3)
    return turn @ lay


@dataclass(frozen=True)
class ObjectSampling:
    """How :func:`random_object` draws objects.

    ``orientation="upright"``: primitives rest as on a table and turn about the vertical axis only,
    so one view fixes an object up to its azimuth, which is what the method assumes of its
    conditioning image (the released model was fine-tuned on gravity-aligned Objaverse objects).
    ``"any"``: uniform 3D rotations (the default; the shipped iso3d-tiny was trained on upright single
    primitives at scale 1.5, see its ``config.json: training_objects``).

    ``scale`` multiplies every primitive's sizes and centre: at 1 a lone sphere's radius is 0.15–0.35,
    so at 32² it spans 7–15 pixels; 1.5 (the shipped iso3d-tiny's) gives a small model more pixels of
    each shape. Keep the object inside the unit ball (the NeRF's box is [−1, 1]³): scales above 2 are
    refused.
    """

    max_primitives: int = 3
    orientation: Literal["upright", "any"] = "any"
    scale: float = 1.0

    def __post_init__(self):
        if self.orientation not in ("upright", "any"):
            raise ValueError(f"ObjectSampling.orientation must be 'upright' or 'any', got {self.orientation!r}")
        if isinstance(self.max_primitives, bool) or not isinstance(self.max_primitives, int) or self.max_primitives < 1:
            raise ValueError(f"ObjectSampling.max_primitives must be an int >= 1, got {self.max_primitives!r}")
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not 0 < self.scale <= 2:
            raise ValueError(f"ObjectSampling.scale must be a number in (0, 2], got {self.scale!r}")


def random_object(seed: int, sampling: ObjectSampling = ObjectSampling()) -> ProceduralObject:
    """A deterministic random object (union of 1..``sampling.max_primitives`` primitives) for ``seed``."""
    if not isinstance(sampling, ObjectSampling):
        raise TypeError(f"random_object: sampling must be an ObjectSampling, got {type(sampling).__name__}")
    gen = torch.Generator().manual_seed(seed)
    u = lambda lo, hi, n=1: lo + (hi - lo) * torch.rand(n, generator=gen)  # noqa: E731
    n = int(torch.randint(1, sampling.max_primitives + 1, (1,), generator=gen))
    prims = []
    for _ in range(n):
        kind = PRIMITIVES[int(torch.randint(len(PRIMITIVES), (1,), generator=gen))]
        size = {
            "sphere": u(0.15, 0.35), "box": u(0.08, 0.3, 3), "cylinder": torch.cat([u(0.08, 0.25), u(0.1, 0.3)]),
            "cone": torch.cat([u(0.12, 0.3), u(0.12, 0.3)]), "torus": torch.cat([u(0.15, 0.28), u(0.04, 0.09)]),
            "capsule": torch.cat([u(0.06, 0.15), u(0.08, 0.25)]),
        }[kind]
        center = u(-0.25, 0.25, 3) if n > 1 else u(-0.05, 0.05, 3)
        color = u(0.1, 0.95, 3)
        rotation = _random_rotation(gen) if sampling.orientation == "any" else _upright_rotation(kind, gen)
        prims.append(Primitive(kind, center * sampling.scale, rotation, size * sampling.scale, color))
    return ProceduralObject(prims)


@dataclass(frozen=True)
class RenderSettings:
    image_size: int = 32
    fovy: float = 40.0
    distance: float = 2.0  # the unit box's content fills most of the frame at fovy 40
    ambient: float = 0.35
    supersample: int = 2
    max_steps: int = 64
    hit_eps: float = 1e-3


def render_object(
    obj: ProceduralObject,
    elevation: torch.Tensor,  # [V] degrees
    azimuth: torch.Tensor,  # [V] degrees
    settings: RenderSettings = RenderSettings(),
) -> torch.Tensor:  # [V, 4, H, W] RGBA in [0, 1] (RGB on white)
    """Sphere-trace ``obj`` from cameras looking at the origin (see module docstring)."""
    c2w = camera_to_world(elevation, azimuth, torch.full_like(elevation, settings.distance))
    return render_object_from(obj, c2w, settings)


def render_object_from(obj: ProceduralObject, c2w: torch.Tensor, settings: RenderSettings = RenderSettings()) -> torch.Tensor:
    """:func:`render_object` from any cameras ``c2w`` ``[V, 4, 4]`` (fovy and supersampling from ``settings``)."""
    s = settings.supersample
    size = settings.image_size * s
    rays_o, rays_d = generate_rays(c2w, torch.full((c2w.shape[0],), settings.fovy), size, size)
    o, d = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)
    # Objects lie within the unit sphere: march from |o| − 1 (the camera distance minus one, as
    # cameras look at the origin) to |o| + 1.
    t = (o.norm(dim=-1) - 1.0).clamp(min=0.0)
    far = o.norm(dim=-1) + 1.0
    hit = torch.zeros(o.shape[0], dtype=torch.bool)
    for _ in range(settings.max_steps):
        active = ~hit & (t < far)
        if not active.any():
            break
        dist = obj.sdf(o[active] + d[active] * t[active, None])
        t[active] = t[active] + dist
        hit[active] = dist.abs() < settings.hit_eps
    points = o + d * t[:, None]
    rgb = torch.ones_like(o)
    if hit.any():
        p = points[hit]
        eps = 1e-3
        offsets = torch.eye(3) * eps
        grad = torch.stack([obj.sdf(p + offsets[i]) - obj.sdf(p - offsets[i]) for i in range(3)], -1)
        normal = F.normalize(grad, dim=-1)
        light = settings.ambient + (1 - settings.ambient) * (normal * -d[hit]).sum(-1).clamp(min=0)
        rgb[hit] = (obj.albedo(p) * light[:, None]).clamp(0, 1)
    img = torch.cat([rgb, hit.float()[:, None]], -1).reshape(-1, size, size, 4).permute(0, 3, 1, 2)
    if s > 1:
        img = F.avg_pool2d(img, s)
    return img
