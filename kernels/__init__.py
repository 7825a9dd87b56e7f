"""iso3d.kernels — Triton kernels, each beside its pure-PyTorch twin (``reference``).

Importing this package does not import Triton, touch a GPU or compile anything: kernels are
loaded on first use. Tests run them on the CPU through Triton's interpreter (``TRITON_INTERPRET=1``).
"""

from ._backends import BackendUnavailableError
from .mv_attention import mv_attention
from .reference import mv_attention_naive, mv_attention_ref

__all__ = ["BackendUnavailableError", "mv_attention", "mv_attention_naive", "mv_attention_ref"]
