"""Soft shading of the SDS stage (threestudio's diffuse-with-point-light material).

``albedo``: the albedo; ``textureless``: white lit by ambient + diffuse point light;
``lambertian``: albedo × (ambient + diffuse·max(0, n·l)).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["ShadingMode", "shade"]

ShadingMode = Literal["albedo", "lambertian", "textureless"]


def shade(
    albedo: torch.Tensor,  # [P, 3]
    normal: torch.Tensor | None,  # [P, 3]
    points: torch.Tensor,  # [P, 3]
    light_position: torch.Tensor | None,  # [P, 3]
    *,
    mode: ShadingMode,
    ambient: float = 0.1,
) -> torch.Tensor:  # [P, 3]
    """Colour of each sample under ``mode``; diffuse strength is ``1 − ambient``."""
    if mode == "albedo":
        return albedo
    if mode not in ("lambertian", "textureless"):
        raise ValueError(f"shade: mode must be 'albedo', 'lambertian' or 'textureless', got {mode!r}")
    if normal is None or light_position is None:
        raise ValueError(f"shade: mode {mode!r} needs normals and a light position")
    light_dir = F.normalize(light_position - points, dim=-1)
    light = ambient + (1 - ambient) * (normal * light_dir).sum(-1, keepdim=True).clamp(min=0.0)
    return light.expand_as(albedo) if mode == "textureless" else albedo * light
