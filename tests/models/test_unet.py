"""Multi-view UNet: processor equivalence, joint attention mixes views, EMA reference frame."""

import pytest
import torch

pytest.importorskip("diffusers", reason="diffusers not installed (pip install diffusers)")

from iso3d.cameras import camera_embedding  # noqa: E402
from iso3d.models import MultiViewAttnProcessor, MultiViewUNet, MultiViewUNetConfig, ReferenceFrame  # noqa: E402

TINY = MultiViewUNetConfig(sample_size=8, block_out_channels=(32, 64), attention_levels=(True, True),
                           layers_per_block=1, head_dim=16, cross_attention_dim=32, norm_num_groups=8)
V = 4


def _inputs(objects=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rows = objects * V
    x = torch.randn(rows, 4, 8, 8, generator=gen)
    t = torch.randint(0, 1000, (rows,), generator=gen)
    ctx = torch.randn(objects, 1, 32, generator=gen).repeat_interleave(V, dim=0)
    cam = camera_embedding(torch.full((rows,), 15.0), torch.arange(rows) % V * 90.0)
    return x, t, ctx, cam


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    model = MultiViewUNet(TINY, backend="torch").eval()
    # Random (non-zero) output convs so every block influences the prediction.
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return model


def test_processors_installed_on_attn1_only(unet):
    procs = unet.unet.attn_processors
    attn1 = [p for n, p in procs.items() if n.endswith("attn1.processor")]
    attn2 = [p for n, p in procs.items() if n.endswith("attn2.processor")]
    assert attn1 and all(isinstance(p, MultiViewAttnProcessor) for p in attn1)
    assert attn2 and not any(isinstance(p, MultiViewAttnProcessor) for p in attn2)


def test_one_view_matches_diffusers_default_processor(unet):
    from diffusers.models.attention_processor import AttnProcessor2_0

    x, t, ctx, cam = _inputs()
    with torch.no_grad():
        ours = unet(x, t, ctx, cam, n_views=1)
        unet.unet.set_attn_processor(AttnProcessor2_0())
        try:
            stock = unet.unet(x, t, encoder_hidden_states=ctx, class_labels=cam).sample
        finally:
            unet.install_processors()
    torch.testing.assert_close(ours, stock, rtol=1e-5, atol=1e-5)


def test_joint_attention_mixes_views_and_objects_stay_apart(unet):
    x, t, ctx, cam = _inputs()
    x2 = x.clone()
    x2[0] += 1.0  # perturb view 0 of object 0
    with torch.no_grad():
        a, b = unet(x, t, ctx, cam, n_views=V), unet(x2, t, ctx, cam, n_views=V)
        a1, b1 = unet(x, t, ctx, cam, n_views=1), unet(x2, t, ctx, cam, n_views=1)
    diff = (a - b).flatten(1).abs().amax(1)
    assert (diff[1:V] > 1e-4).all(), "the other views of the object must see the change"
    assert (diff[V:] == 0).all(), "another object must not"
    diff1 = (a1 - b1).flatten(1).abs().amax(1)
    assert (diff1[1:] == 0).all(), "without joint attention views are independent"


def test_reference_frame_changes_views_and_is_dropped(unet):
    x, t, ctx, cam = _inputs()
    gen = torch.Generator().manual_seed(1)
    ref_sample = torch.randn(2, 4, 8, 8, generator=gen)
    ref_cam = camera_embedding(torch.tensor([5.0, 5.0]), torch.tensor([30.0, 30.0]))
    with torch.no_grad():
        plain = unet(x, t, ctx, cam, n_views=V)
        full = unet(x, t, ctx, cam, n_views=V, reference=ReferenceFrame(ref_sample, ref_cam))
        kv = unet(x, t, ctx, cam, n_views=V, reference=ReferenceFrame(ref_sample, ref_cam, mode="kv"))
        other = unet(x, t, ctx, cam, n_views=V, reference=ReferenceFrame(ref_sample + 1, ref_cam))
    assert full.shape == plain.shape == kv.shape  # the reference's own prediction is dropped
    assert (full - plain).abs().max() > 1e-4
    assert (kv - full).abs().max() > 1e-4
    assert (other - full).abs().max() > 1e-4, "the views must read the reference content"


@pytest.mark.parametrize("backend", ["triton", "naive"])
@pytest.mark.parametrize("mode", ["full", "kv"])
def test_other_processor_backends_match_torch(unet, backend, mode, device):
    x, t, ctx, cam = _inputs(objects=1)
    ref = ReferenceFrame(torch.randn(1, 4, 8, 8), camera_embedding(torch.tensor([0.0]), torch.tensor([0.0])), mode=mode)
    with torch.no_grad():
        want = unet(x, t, ctx, cam, n_views=V, reference=ref)
        # Triton runs natively on a GPU (through its interpreter on CPU): compare there.
        dev = device if backend == "triton" else torch.device("cpu")
        on = lambda a: a.to(dev)  # noqa: E731
        unet.to(dev)
        for p in unet.processors:
            p.backend = backend
        try:
            got = unet(on(x), on(t), on(ctx), on(cam), n_views=V,
                       reference=ReferenceFrame(on(ref.sample), on(ref.camera), mode=mode)).cpu()
        finally:
            unet.cpu()
            for p in unet.processors:
                p.backend = "torch"
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_bad_arguments(unet):
    x, t, ctx, cam = _inputs()
    with pytest.raises(ValueError, match="not a multiple of n_views=3"):
        unet(x, t, ctx, cam, n_views=3)
    with pytest.raises(ValueError, match="camera must have shape"):
        unet(x, t, ctx, cam[:, :12], n_views=V)
    with pytest.raises(ValueError, match="context must have shape"):
        unet(x, t, ctx[:, :, :16], cam, n_views=V)
    with pytest.raises(ValueError, match="ReferenceFrame.sample must have shape"):
        unet(x, t, ctx, cam, n_views=V, reference=ReferenceFrame(torch.zeros(3, 4, 8, 8), torch.zeros(2, 16)))
    with pytest.raises(ValueError, match="width 48 must be divisible"):
        MultiViewUNetConfig(block_out_channels=(48, 64), attention_levels=(True, True), head_dim=32)


def test_clip_preprocessing_matches_the_release_recipe():
    from iso3d.models.image_encoder import OPENAI_MEAN, OPENAI_STD, preprocess_images

    rgba = torch.zeros(1, 4, 300, 200)
    rgba[:, 0] = 1.0  # red where opaque
    rgba[:, 3, :, 100:] = 1.0  # right half opaque, left half transparent
    x = preprocess_images(rgba)
    assert x.shape == (1, 3, 224, 224)
    white = (1 - torch.tensor(OPENAI_MEAN)) / torch.tensor(OPENAI_STD)
    red = (torch.tensor([1.0, 0, 0]) - torch.tensor(OPENAI_MEAN)) / torch.tensor(OPENAI_STD)
    torch.testing.assert_close(x[0, :, 112, 10], white, atol=1e-4, rtol=0)  # transparent -> white
    torch.testing.assert_close(x[0, :, 112, 210], red, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match=r"\[B, 3 or 4, H, W\]"):
        preprocess_images(torch.zeros(3, 32, 32))
    with pytest.raises(TypeError, match="floating point"):
        preprocess_images(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
