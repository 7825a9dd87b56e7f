"""Convert the released ``isotropic3d.ckpt`` (ldm layout) into iso3d's parts.

Layout of the release (``shared/data/isotropic3d_ckpt_keys.json`` lists every tensor):

* ``model.diffusion_model.*`` — the multi-view UNet; diffusers' ``convert_ldm_unet_checkpoint`` maps
  the generic part once ``camera_embed.{0,2}`` is renamed to ldm's ``label_emb.0.{0,2}`` (the
  projection class embedding, i.e. diffusers' ``class_embedding.linear_{1,2}``);
* ``first_stage_model.*`` — the SD VAE; diffusers' ``convert_ldm_vae_checkpoint``;
* ``cond_stage_model.model.visual.*`` — open_clip ViT-H-14's vision tower, kept in open_clip's names;
* ``cond_stage_model.model.{positional_embedding, text_projection, …}`` — text-tower leftovers and the
  12 diffusion schedule buffers: not needed (the schedule is rebuilt from its three numbers).

Every mapping is checked against the target module's state dict: a missing, unexpected or
mis-shaped tensor raises ``ValueError`` listing them, so a silent partial load cannot happen.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from iso3d.utils.imports import require

from .unet import MultiViewUNetConfig

__all__ = [
    "IMAGE_ENCODER_PREFIX",
    "SD_VAE_CONFIG",
    "ConvertedCheckpoint",
    "check_state_dict",
    "convert_isotropic3d_checkpoint",
    "diffusers_unet_to_ldm",
]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
IMAGE_ENCODER_PREFIX = "cond_stage_model.model.visual."
TEXT_LEFTOVER_PREFIX = "cond_stage_model.model."
SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
)

# The Stable Diffusion VAE (DESIGN.md §2: scale 0.18215), in diffusers' AutoencoderKL terms.
SD_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    sample_size=256,
    scaling_factor=0.18215,
)


@dataclass
class ConvertedCheckpoint:
    unet: dict[str, torch.Tensor]  # diffusers UNet2DConditionModel names
    vae: dict[str, torch.Tensor]  # diffusers AutoencoderKL names
    image_encoder: dict[str, torch.Tensor]  # open_clip VisionTransformer names
    dropped: list[str] = field(default_factory=list)  # text-tower leftovers and schedule buffers


def check_state_dict(name: str, converted: dict, expected: dict) -> None:
    """Raise ``ValueError`` unless ``converted`` has exactly ``expected``'s keys and shapes."""
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    mismatched = sorted(
        f"{k}: {tuple(converted[k].shape)} vs {tuple(expected[k].shape)}"
        for k in set(converted) & set(expected) if tuple(converted[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or mismatched:
        def show(items):
            return f"{len(items)} {items[:5]}{' …' if len(items) > 5 else ''}"

        raise ValueError(f"{name}: conversion does not match the model: missing {show(missing)}, "
                         f"unexpected {show(unexpected)}, shape mismatches {show(mismatched)}")


def convert_isotropic3d_checkpoint(
    state_dict: dict[str, torch.Tensor],
    unet_config: MultiViewUNetConfig = MultiViewUNetConfig.official(),
) -> ConvertedCheckpoint:
    """Split and rename an ldm-layout Isotropic3D state dict (see module docstring)."""
    from iso3d.utils.torchvision_compat import patch_torchvision_if_needed

    patch_torchvision_if_needed()
    require("diffusers", "converting the Isotropic3D checkpoint")
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    unknown = [k for k in state_dict if not k.startswith((UNET_PREFIX, VAE_PREFIX, TEXT_LEFTOVER_PREFIX)) and k not in SCHEDULE_BUFFERS]
    if unknown:
        raise ValueError(f"convert_isotropic3d_checkpoint: unrecognised tensors {unknown[:5]} (is this an Isotropic3D checkpoint?)")
    if not any(k.startswith(UNET_PREFIX) for k in state_dict):
        raise ValueError(f"convert_isotropic3d_checkpoint: no '{UNET_PREFIX}*' tensors found")
    camera = UNET_PREFIX + "camera_embed."
    unet_ldm = {
        (UNET_PREFIX + "label_emb.0." + k[len(camera):] if k.startswith(camera) else k): v
        for k, v in state_dict.items() if k.startswith(UNET_PREFIX)
    }
    unet = convert_ldm_unet_checkpoint(unet_ldm, unet_config.to_diffusers())
    vae_ldm = {k: v for k, v in state_dict.items() if k.startswith(VAE_PREFIX)}
    vae = convert_ldm_vae_checkpoint(vae_ldm, dict(SD_VAE_CONFIG)) if vae_ldm else {}
    image_encoder = {k[len(IMAGE_ENCODER_PREFIX):]: v for k, v in state_dict.items() if k.startswith(IMAGE_ENCODER_PREFIX)}
    dropped = sorted(k for k in state_dict if k in SCHEDULE_BUFFERS or (
        k.startswith(TEXT_LEFTOVER_PREFIX) and not k.startswith(IMAGE_ENCODER_PREFIX)))
    return ConvertedCheckpoint(unet=unet, vae=vae, image_encoder=image_encoder, dropped=dropped)


_RESNET_TO_LDM = {
    "norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection",
}


def _resnet_key(rest: str) -> str:
    name, _, param = rest.partition(".")
    return f"{_RESNET_TO_LDM[name]}.{param}"


def diffusers_unet_to_ldm(state_dict: dict[str, torch.Tensor], config: MultiViewUNetConfig) -> dict[str, torch.Tensor]:
    """Inverse of the UNet conversion: diffusers names → the release's ``model.diffusion_model.*`` names.

    Exports a bundle's UNet for the original Isotropic3D / MVDream code (``camera_embed`` included).
    """
    lpb, levels = config.layers_per_block, len(config.block_out_channels)
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if key.startswith("time_embedding.linear_"):
            new = f"time_embed.{2 * (int(parts[1][-1]) - 1)}.{parts[2]}"
        elif key.startswith("class_embedding.linear_"):
            new = f"camera_embed.{2 * (int(parts[1][-1]) - 1)}.{parts[2]}"
        elif key.startswith("conv_in."):
            new = f"input_blocks.0.0.{parts[1]}"
        elif key.startswith("conv_norm_out."):
            new = f"out.0.{parts[1]}"
        elif key.startswith("conv_out."):
            new = f"out.2.{parts[1]}"
        elif key.startswith("down_blocks."):
            i, kind = int(parts[1]), parts[2]
            if kind == "downsamplers":
                new = f"input_blocks.{1 + i * (lpb + 1) + lpb}.0.op.{parts[-1]}"
            else:
                j, rest = int(parts[3]), ".".join(parts[4:])
                n = 1 + i * (lpb + 1) + j
                new = f"input_blocks.{n}.0.{_resnet_key(rest)}" if kind == "resnets" else f"input_blocks.{n}.1.{rest}"
        elif key.startswith("mid_block."):
            kind, j, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            new = f"middle_block.{2 * j}.{_resnet_key(rest)}" if kind == "resnets" else f"middle_block.1.{rest}"
        elif key.startswith("up_blocks."):
            i, kind = int(parts[1]), parts[2]
            has_attn = config.attention_levels[levels - 1 - i]
            if kind == "upsamplers":
                new = f"output_blocks.{i * (lpb + 1) + lpb}.{2 if has_attn else 1}.conv.{parts[-1]}"
            else:
                j, rest = int(parts[3]), ".".join(parts[4:])
                n = i * (lpb + 1) + j
                new = f"output_blocks.{n}.0.{_resnet_key(rest)}" if kind == "resnets" else f"output_blocks.{n}.1.{rest}"
        else:
            raise ValueError(f"diffusers_unet_to_ldm: unexpected UNet tensor {key!r}")
        out[UNET_PREFIX + new] = value
    return out
