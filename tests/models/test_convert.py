"""Conversion of the released checkpoint, tested on its full key/shape table (no 6.5 GB file needed)."""

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers", reason="diffusers not installed (pip install diffusers)")
pytest.importorskip("open_clip", reason="open_clip not installed (pip install open-clip-torch)")

from iso3d.models import CLIPImageEncoder, ImageEncoderConfig, MultiViewUNetConfig  # noqa: E402
from iso3d.models.convert import SD_VAE_CONFIG, check_state_dict, convert_isotropic3d_checkpoint  # noqa: E402

# A copy ships in tests/data so CI always runs this; ../shared/data is the workplace's original.
_CANDIDATES = [Path(__file__).resolve().parents[1] / "data" / "isotropic3d_ckpt_keys.json",
               Path(__file__).resolve().parents[3] / "shared" / "data" / "isotropic3d_ckpt_keys.json"]
KEY_TABLE = next((p for p in _CANDIDATES if p.exists()), _CANDIDATES[0])


@pytest.fixture(scope="module")
def release_on_meta():
    if not KEY_TABLE.exists():
        pytest.skip(f"key table not found at {KEY_TABLE}")
    table = json.loads(KEY_TABLE.read_text())
    tensors = {name: torch.empty(shape, device="meta") for name, shape in table["tensors"].items()}
    assert len(tensors) == table["num_tensors"]
    return tensors


def test_every_released_tensor_maps_with_matching_shape(release_on_meta):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    converted = convert_isotropic3d_checkpoint(release_on_meta)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**MultiViewUNetConfig.official().to_diffusers())
        vae = AutoencoderKL(**SD_VAE_CONFIG)
        encoder = CLIPImageEncoder(ImageEncoderConfig("ViT-H-14"))
    check_state_dict("unet", converted.unet, unet.state_dict())
    check_state_dict("vae", converted.vae, vae.state_dict())
    check_state_dict("image_encoder", converted.image_encoder, encoder.visual.state_dict())
    # Nothing silently ignored: every tensor is mapped once or deliberately dropped.
    n_unet = sum(k.startswith("model.diffusion_model.") for k in release_on_meta)
    assert len(converted.unet) == n_unet
    mapped = len(converted.unet) + len(converted.vae) + len(converted.image_encoder)
    assert mapped + len(converted.dropped) == len(release_on_meta)
    assert len(converted.dropped) == 12 + 6  # schedule buffers + text-tower leftovers
    # The camera MLP lands on diffusers' projection class embedding.
    assert converted.unet["class_embedding.linear_1.weight"].shape == (1280, 16)


def test_check_state_dict_reports_problems():
    with pytest.raises(ValueError, match=r"missing 1 \['b'\].*unexpected 1 \['c'\].*shape mismatches 1"):
        check_state_dict("m", {"a": torch.zeros(2), "c": torch.zeros(1)},
                         {"a": torch.zeros(3), "b": torch.zeros(1)})


def test_rejects_foreign_checkpoints():
    with pytest.raises(ValueError, match="unrecognised tensors"):
        convert_isotropic3d_checkpoint({"encoder.weight": torch.zeros(1)})
