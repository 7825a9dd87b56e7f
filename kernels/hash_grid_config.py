"""Parameterization of the multiresolution hash grid, with tiny-cuda-nn's exact semantics.

One source of truth for level scales, resolutions, table offsets and sizes, used by the Triton
kernel, the PyTorch twin and the tiny-cuda-nn backend. The arithmetic is done in float32 as in
tcnn's ``GridEncodingTemplated`` constructor (``exp2f(l·log2(b))·N_min − 1``), so resolutions
agree with tcnn bit for bit and a parameter vector moves between backends unchanged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np

__all__ = ["HASH_PRIMES", "HashGridConfig", "HashGridLevel"]

# tcnn's coherent prime hash factors for x, y, z (the first is 1 for memory coherence).
HASH_PRIMES = (1, 2654435761, 805459861)


@dataclass(frozen=True)
class HashGridLevel:
    """One level: ``pos = x·scale + 0.5``, corners on a ``resolution³`` lattice, ``size`` table rows
    starting at row ``offset``; ``hashed`` when the dense lattice does not fit (``resolution³ > size``)."""

    scale: float
    resolution: int
    offset: int
    size: int
    hashed: bool


@dataclass(frozen=True)
class HashGridConfig:
    """tcnn ``HashGrid`` encoding config (same keys as tcnn / threestudio configs).

    Example:
        >>> cfg = HashGridConfig.from_tcnn({"otype": "HashGrid", "n_levels": 16, "n_features_per_level": 2,
        ...     "log2_hashmap_size": 19, "base_resolution": 16, "per_level_scale": 1.447269237440378})
        >>> [lvl.resolution for lvl in cfg.levels[:5]], cfg.levels[5].hashed, cfg.n_output_dims
        ([16, 24, 34, 49, 71], True, 32)
    """

    n_levels: int = 16
    n_features_per_level: int = 2
    log2_hashmap_size: int = 19
    base_resolution: int = 16
    per_level_scale: float = 1.447269237440378

    def __post_init__(self):
        for name in ("n_levels", "log2_hashmap_size", "base_resolution"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"HashGridConfig.{name} must be a positive int, got {value!r}")
        if self.n_features_per_level not in (1, 2, 4, 8):
            raise ValueError(f"HashGridConfig.n_features_per_level must be 1, 2, 4 or 8 (as tcnn), got {self.n_features_per_level!r}")
        if self.n_levels > 32:
            raise ValueError(f"HashGridConfig.n_levels must be <= 32 (tcnn's offset table), got {self.n_levels}")
        if self.log2_hashmap_size > 30:
            raise ValueError(f"HashGridConfig.log2_hashmap_size must be <= 30, got {self.log2_hashmap_size}")
        if not (isinstance(self.per_level_scale, (int, float)) and self.per_level_scale >= 1.0):
            raise ValueError(f"HashGridConfig.per_level_scale must be a float >= 1, got {self.per_level_scale!r}")

    @classmethod
    def from_tcnn(cls, config: dict) -> "HashGridConfig":
        """Build from a tcnn encoding dict; unknown keys are rejected (a typo must not pass silently)."""
        config = dict(config)
        otype = config.pop("otype", "HashGrid")
        if otype not in ("HashGrid", "Grid"):
            raise ValueError(f"HashGridConfig.from_tcnn: otype must be 'HashGrid', got {otype!r}")
        grid_type = config.pop("type", "Hash")
        if grid_type != "Hash":
            raise ValueError(f"HashGridConfig.from_tcnn: only type 'Hash' is supported, got {grid_type!r}")
        interpolation = config.pop("interpolation", "Linear")
        if interpolation != "Linear":
            raise ValueError(f"HashGridConfig.from_tcnn: only 'Linear' interpolation is supported, got {interpolation!r}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"HashGridConfig.from_tcnn: unknown keys {unknown}; expected some of {sorted(known)}")
        return cls(**config)

    def to_tcnn(self) -> dict:
        return {"otype": "HashGrid", **asdict(self)}

    @property
    def n_output_dims(self) -> int:
        return self.n_levels * self.n_features_per_level

    @cached_property
    def levels(self) -> tuple[HashGridLevel, ...]:
        log2_scale = np.float32(math.log2(np.float32(self.per_level_scale)))
        levels, offset = [], 0
        for level in range(self.n_levels):
            scale = np.float32(np.exp2(np.float32(level) * log2_scale)) * np.float32(self.base_resolution) - np.float32(1.0)
            resolution = int(np.ceil(scale)) + 1
            dense = resolution**3
            size = min(dense + (-dense) % 8, 2**self.log2_hashmap_size)  # next multiple of 8, capped
            levels.append(HashGridLevel(float(scale), resolution, offset, size, dense > size))
            offset += size
        return tuple(levels)

    @property
    def n_params(self) -> int:
        """Length of the flat parameter vector: table rows × features, level after level."""
        last = self.levels[-1]
        return (last.offset + last.size) * self.n_features_per_level
