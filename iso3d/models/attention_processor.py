"""diffusers attention processor for the UNet's self-attention (``attn1``): joint multi-view attention.

Installed with ``unet.set_attn_processor`` on every ``attn1`` (attn2, the cross-attention to the CLIP
token, keeps diffusers' own processor). The UNet sees ``B·F`` frames; the processor lets every token
of an object's ``F`` frames attend over all ``F·N`` tokens of that object through
:func:`iso3d.kernels.mv_attention` (no concatenation, no head transposes on the Triton path).

EMA reference frame (stage 2): the clean reference is the last of each object's frames.

* ``reference="full"`` (default of the method): the reference tokens are queries, keys and values —
  mathematically the joint attention over all ``F`` frames, so it is the same kernel call.
* ``reference="kv"``: the reference frame only lends keys and values to the views; its own tokens
  attend to themselves.
* ``reference="none"``: no reference frame; all ``F`` frames are views.

``backend`` is :func:`~iso3d.kernels.mv_attention`'s (``"auto"``, ``"triton"``, ``"torch"``), or
``"naive"``: :func:`~iso3d.kernels.mv_attention_naive`, the materialized fp32-score attention of
MVDream's fallback, kept only as the slow baseline of the benchmarks.
"""

from __future__ import annotations

from typing import Literal

import torch

from iso3d.kernels import mv_attention, mv_attention_naive

__all__ = ["MultiViewAttnProcessor", "ReferenceMode"]

ReferenceMode = Literal["none", "full", "kv"]


class MultiViewAttnProcessor:
    """Joint self-attention over the frames of each object (see module docstring).

    ``num_frames`` and ``reference`` are set per forward pass by :class:`MultiViewUNet`; with
    ``num_frames=1`` this matches diffusers' ``AttnProcessor2_0`` to float tolerance.
    """

    def __init__(self, num_frames: int = 1, reference: ReferenceMode = "none", backend: str = "auto"):
        self.num_frames = num_frames
        self.reference = reference
        self.backend = backend

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if encoder_hidden_states is not None:
            raise ValueError("MultiViewAttnProcessor is for self-attention (attn1); encoder_hidden_states must be None")
        if attention_mask is not None:
            raise ValueError("MultiViewAttnProcessor does not support attention_mask")
        if getattr(attn, "norm_q", None) is not None or getattr(attn, "norm_k", None) is not None:
            raise ValueError("MultiViewAttnProcessor does not support q/k normalization")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        out = self._attend(q, k, v, attn.heads, attn.scale).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))

        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _op(self, *args, **kwargs):
        if self.backend == "naive":
            return mv_attention_naive(*args, **kwargs)
        return mv_attention(*args, backend=self.backend, **kwargs)

    def _attend(self, q, k, v, heads, scale):
        frames = self.num_frames
        rows, tokens, channels = q.shape
        if rows % frames:
            raise ValueError(f"MultiViewAttnProcessor: {rows} frames in the batch are not a multiple of num_frames={frames}")
        if self.reference in ("none", "full"):
            out, _ = self._op(q, k, v, n_views=frames, n_heads=heads, scale=scale)
            return out
        if self.reference != "kv":
            raise ValueError(f"MultiViewAttnProcessor: reference must be 'none', 'full' or 'kv', got {self.reference!r}")
        if frames < 2:
            raise ValueError("MultiViewAttnProcessor: reference='kv' needs at least one view besides the reference frame")
        objects = rows // frames
        split = lambda x: (x.view(objects, frames, tokens, channels)[:, :-1].reshape(-1, tokens, channels),  # noqa: E731
                           x.view(objects, frames, tokens, channels)[:, -1])
        (qv, qr), (kv, kr), (vv, vr) = split(q), split(k), split(v)
        out_views, _ = self._op(qv, kv, vv, n_views=frames - 1, n_heads=heads, k_ref=kr, v_ref=vr, scale=scale)
        out_ref, _ = self._op(qr, kr, vr, n_views=1, n_heads=heads, scale=scale)
        out = torch.cat([out_views.view(objects, frames - 1, tokens, channels), out_ref[:, None]], dim=1)
        return out.view(rows, tokens, channels)
