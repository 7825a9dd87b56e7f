"""iso3d.kernels — Triton kernels, each beside its pure-PyTorch twin (``reference``).

Importing this package does not import Triton, touch a GPU or compile anything: kernels are
loaded on first use. Tests run them on the CPU through Triton's interpreter (``TRITON_INTERPRET=1``).
"""

from ._backends import BackendUnavailableError
from .density_gradient import hash_grid_density_with_gradient
from .group_norm import group_norm
from .hash_grid import HashGridConfig, hash_grid_encode, hash_grid_encode_with_jacobian, init_hash_grid_params
from .mlp_head import mlp_head, mlp_head_with_input_grad
from .mv_attention import mv_attention
from .reference import (group_norm_ref, hash_grid_density_with_gradient_ref, hash_grid_encode_ref, hash_grid_encode_with_jacobian_ref,
                        mlp_head_ref, mlp_head_with_input_grad_ref, mv_attention_naive, mv_attention_ref)

__all__ = [
    "BackendUnavailableError",
    "HashGridConfig",
    "group_norm",
    "group_norm_ref",
    "hash_grid_density_with_gradient",
    "hash_grid_density_with_gradient_ref",
    "hash_grid_encode",
    "hash_grid_encode_ref",
    "hash_grid_encode_with_jacobian",
    "hash_grid_encode_with_jacobian_ref",
    "init_hash_grid_params",
    "mlp_head",
    "mlp_head_ref",
    "mlp_head_with_input_grad",
    "mlp_head_with_input_grad_ref",
    "mv_attention",
    "mv_attention_naive",
    "mv_attention_ref",
]
