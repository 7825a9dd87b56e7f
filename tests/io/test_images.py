"""Odd and bad images: documented conversions or clear errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from iso3d.io import ImageLoadError, load_image, save_image_grid


def _save(tmp_path, img, name="x.png"):
    path = tmp_path / name
    img.save(path)
    return path


def test_rgba_keeps_alpha(tmp_path):
    arr = np.zeros((20, 30, 4), dtype=np.uint8)
    arr[..., 0] = 255
    arr[5:15, 5:15, 3] = 255
    out = load_image(_save(tmp_path, Image.fromarray(arr, "RGBA")))
    assert out.shape == (4, 20, 30) and out.dtype == torch.float32
    assert out[3, 10, 10] == 1.0 and out[3, 0, 0] == 0.0 and out[0, 0, 0] == 1.0


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "LA"])
def test_other_modes_become_rgba(tmp_path, mode):
    img = Image.new("RGB", (24, 24), (200, 100, 50)).convert(mode)
    out = load_image(_save(tmp_path, img, "x.png" if mode != "CMYK" else "x.jpg"))
    assert out.shape == (4, 24, 24)
    assert (out[3] == 1).all()


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (20, 20), 0)
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    img.paste(1, (0, 0, 10, 20))
    img.info["transparency"] = 0
    out = load_image(_save(tmp_path, img))
    assert out[3, 5, 15] == 0.0 and out[3, 5, 5] == 1.0 and out[1, 5, 5] == 1.0


def test_16_bit_is_rescaled(tmp_path):
    arr = np.full((20, 20), 65535, dtype=np.uint16)
    arr[:10] = 32768
    out = load_image(_save(tmp_path, Image.fromarray(arr)))
    assert out[0, 15, 0].item() == pytest.approx(1.0) and out[0, 0, 0].item() == pytest.approx(32768 / 65535, abs=1e-4)
    assert load_image(arr)[0, 0, 0].item() == pytest.approx(32768 / 65535, abs=1e-4)


def test_arrays_and_tensors():
    assert load_image(np.random.rand(20, 20, 3)).shape == (4, 20, 20)
    assert load_image(torch.rand(4, 20, 20)).shape == (4, 20, 20)
    assert load_image(torch.randint(0, 255, (3, 20, 20), dtype=torch.uint8)).max() <= 1


def test_huge_images_are_downscaled():
    out = load_image(np.zeros((3000, 1500, 3), dtype=np.uint8), max_side=512)
    assert out.shape == (4, 512, 256)


@pytest.mark.parametrize(
    "image, error, match",
    [
        (np.zeros((8, 100, 3)), ImageLoadError, "too small"),
        (np.concatenate([np.ones((20, 20, 3)), np.zeros((20, 20, 1))], -1), ImageLoadError, "fully transparent"),
        (np.full((20, 20, 3), 2.0), ImageLoadError, r"must lie in \[0, 1\]"),
        (np.full((20, 20, 3), np.nan), ImageLoadError, "NaN"),
        (np.zeros((20, 20, 5)), ImageLoadError, "expected an array"),
        (torch.zeros(20, 20, 3), ImageLoadError, r"expected a tensor \[C, H, W\]"),
        ([[0.0]], TypeError, "expected a path, PIL.Image"),
    ],
)
def test_bad_images_are_refused_clearly(image, error, match):
    with pytest.raises(error, match=match):
        load_image(image)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_image(tmp_path / "nope.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ImageLoadError, match="cannot decode"):
        load_image(bad)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageLoadError, match="cannot decode"):
        load_image(empty)


def test_save_grid_roundtrip(tmp_path):
    images = torch.rand(4, 3, 8, 8)
    path = save_image_grid(images, tmp_path / "g.png")
    back = np.asarray(Image.open(path))
    assert back.shape == (8, 32, 3)
    np.testing.assert_allclose(back[:, 8:16] / 255.0, images[1].permute(1, 2, 0).numpy(), atol=1 / 255)
