"""``HashGridEncoding``: the hash grid as an ``nn.Module`` holding tcnn-layout parameters."""

from __future__ import annotations

import torch
from torch import nn

from iso3d.kernels.hash_grid import HashGridConfig, hash_grid_encode, init_hash_grid_params

__all__ = ["HashGridEncoding"]


class HashGridEncoding(nn.Module):
    """Multiresolution hash encoding of points in ``[0, 1]³`` (tiny-cuda-nn semantics).

    ``params`` is tcnn's flat parameter vector: a state dict moves between this module and a
    ``tinycudann.Encoding`` with the same config unchanged.

    Example:
        >>> enc = HashGridEncoding(HashGridConfig(n_levels=4, log2_hashmap_size=12), seed=0)
        >>> enc(torch.rand(10, 3)).shape
        torch.Size([10, 8])
    """

    def __init__(self, config: HashGridConfig | dict = HashGridConfig(), *, backend: str = "auto",
                 seed: int | None = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.config = HashGridConfig.from_tcnn(config) if isinstance(config, dict) else config
        self.backend = backend
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.params = nn.Parameter(init_hash_grid_params(self.config, generator=generator, dtype=dtype))

    @property
    def n_output_dims(self) -> int:
        return self.config.n_output_dims

    def forward(self, x: torch.Tensor, *, check_range: bool = True) -> torch.Tensor:  # [P, 3] -> [P, L·F]
        return hash_grid_encode(x, self.params, self.config, backend=self.backend, check_range=check_range)
