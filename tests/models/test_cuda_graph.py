"""CUDAGraphedForward: the signature cache, copy-in/copy-out, fallbacks; a real capture where CUDA exists.

Without a GPU the capture step is replaced by one that runs the function on the static inputs at
"replay" time, which is what a graph replay computes, so the cache's own logic (which buffers are
written, which output is returned, when a new capture happens) is checked on the CPU.
"""

import warnings

import pytest
import torch

from iso3d.models.cuda_graph import CaptureFailed, CUDAGraphedForward, _Graph


class FakeCapture:
    """Stands in for a CUDA capture: replay recomputes ``fn`` from the static inputs into the static output."""

    def __init__(self, fail: bool = False):
        self.calls, self.fail = [], fail

    def __call__(self, fn, inputs, kwargs, warmup):
        self.calls.append((tuple(tuple(x.shape) for x in inputs), tuple(sorted(kwargs.items())), warmup))
        static = [x.clone() for x in inputs]
        for _ in range(warmup):  # as the real capture: the function's own errors surface here
            fn(*static, **kwargs)
        if self.fail:
            raise CaptureFailed("RuntimeError: operation not permitted when stream is capturing")
        output = fn(*static, **kwargs)

        def replay():
            output.copy_(fn(*static, **kwargs))

        return _Graph(static, output, replay)


def _affine(x, w, *, scale=1.0):
    return scale * (x @ w) + 1


def test_replays_follow_new_inputs_and_return_copies():
    capture = FakeCapture()
    graphed = CUDAGraphedForward(_affine, capture=capture, device_type="cpu", warmup=3)
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(5, 3, generator=gen)
    xs = [torch.randn(7, 5, generator=gen) for _ in range(3)]
    outs = [graphed(x, w, scale=2.0) for x in xs]
    for x, out in zip(xs, outs):  # each call's own inputs, and earlier results are not overwritten
        torch.testing.assert_close(out, _affine(x, w, scale=2.0), rtol=0, atol=0)
    assert len(capture.calls) == 1 and capture.calls[0][2] == 3 and graphed.replays == 3


def test_a_new_signature_is_captured_once_each():
    capture = FakeCapture()
    graphed = CUDAGraphedForward(_affine, capture=capture, device_type="cpu")
    w = torch.randn(5, 3)
    for rows, scale in [(7, 1.0), (3, 1.0), (7, 1.0), (7, 0.5), (3, 1.0), (7, 0.5)]:
        x = torch.randn(rows, 5)
        torch.testing.assert_close(graphed(x, w, scale=scale), _affine(x, w, scale=scale), rtol=0, atol=0)
    assert [c[:2] for c in capture.calls] == [(((7, 5), (5, 3)), (("scale", 1.0),)),
                                              (((3, 5), (5, 3)), (("scale", 1.0),)),
                                              (((7, 5), (5, 3)), (("scale", 0.5),))]
    assert len(graphed.graphs) == 3 and graphed.replays == 6
    x64 = torch.randn(7, 5, dtype=torch.float64)  # a dtype is part of the signature too
    graphed(x64, w.double(), scale=1.0)
    assert len(capture.calls) == 4
    graphed.reset()
    graphed(x64, w.double(), scale=1.0)
    assert len(capture.calls) == 5


def test_a_failed_capture_runs_eagerly_from_then_on():
    capture = FakeCapture(fail=True)
    graphed = CUDAGraphedForward(_affine, capture=capture, device_type="cpu")
    x, w = torch.randn(4, 5), torch.randn(5, 3)
    with pytest.warns(UserWarning, match="capture failed .*stream is capturing.*running eagerly"):
        out = graphed(x, w)
    torch.testing.assert_close(out, _affine(x, w), rtol=0, atol=0)
    assert "RuntimeError" in graphed.disabled_reason
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, no second try
        torch.testing.assert_close(graphed(2 * x, w), _affine(2 * x, w), rtol=0, atol=0)
    assert len(capture.calls) == 1 and graphed.replays == 0
    capture.fail = False
    graphed.reset()  # forgets the failure: the next call captures again
    torch.testing.assert_close(graphed(x, w), _affine(x, w), rtol=0, atol=0)
    assert graphed.disabled_reason is None and len(capture.calls) == 2 and graphed.replays == 1


def test_the_functions_own_errors_are_raised_and_do_not_disable_graphs():
    def picky(x):
        if x.shape[0] % 4:
            raise ValueError("batch of frames is not a multiple of n_views=4")
        return x * 2

    capture = FakeCapture()
    graphed = CUDAGraphedForward(picky, capture=capture, device_type="cpu")
    with pytest.raises(ValueError, match="not a multiple of n_views"):
        graphed(torch.randn(3, 2))  # fails in the warm-up: the caller's mistake, not the capture's
    assert graphed.disabled_reason is None and graphed.graphs == {}
    x = torch.randn(8, 2)
    torch.testing.assert_close(graphed(x), 2 * x, rtol=0, atol=0)
    assert graphed.replays == 1


def test_beyond_max_graphs_new_signatures_run_eagerly_with_one_warning():
    capture = FakeCapture()
    graphed = CUDAGraphedForward(_affine, capture=capture, device_type="cpu", max_graphs=1)
    w = torch.randn(5, 3)
    graphed(torch.randn(2, 5), w)
    with pytest.warns(UserWarning, match="more than max_graphs=1"):
        graphed(torch.randn(3, 5), w)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = torch.randn(4, 5)
        torch.testing.assert_close(graphed(x, w), _affine(x, w), rtol=0, atol=0)
    assert len(capture.calls) == 1 and graphed.replays == 1


def test_other_devices_pass_through_and_bad_arguments_are_refused():
    capture = FakeCapture()
    graphed = CUDAGraphedForward(_affine, capture=capture)  # captures CUDA inputs only
    x, w = torch.randn(4, 5), torch.randn(5, 3)
    torch.testing.assert_close(graphed(x, w), _affine(x, w), rtol=0, atol=0)
    assert capture.calls == [] and graphed.replays == 0
    with pytest.raises(ValueError, match="positional argument 0 requires grad"):
        graphed(x.requires_grad_(), w)
    with pytest.raises(TypeError, match="positional argument 1 must be a tensor, got float"):
        graphed(x.detach(), 2.0)
    with pytest.raises(TypeError, match="fn must be callable"):
        CUDAGraphedForward(3)
    with pytest.raises(TypeError, match="keyword argument 'scale' is a tensor"):
        graphed(x.detach(), w, scale=torch.tensor(2.0))
    with pytest.raises(TypeError, match="keyword argument 'scale' must be hashable"):
        graphed(x.detach(), w, scale=[2.0])
    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match="warmup must be an int >= 1"):
            CUDAGraphedForward(_affine, warmup=bad)
        with pytest.raises(ValueError, match="max_graphs must be an int >= 1"):
            CUDAGraphedForward(_affine, max_graphs=bad)


def test_sds_step_through_the_graphed_unet_gives_the_same_loss_and_gradient():
    pytest.importorskip("diffusers", reason="diffusers not installed (pip install diffusers)")
    pytest.importorskip("open_clip", reason="open_clip not installed (pip install open-clip-torch)")
    import dataclasses

    from iso3d.generation import GenerateConfig, sds_step
    from iso3d.kernels.hash_grid import HashGridConfig
    from iso3d.models.bundle import MultiViewDiffusion
    from iso3d.models.presets import tiny_bundle_config
    from iso3d.nerf import FieldConfig, ImplicitVolume, RendererConfig, VolumeRenderer

    model = MultiViewDiffusion(tiny_bundle_config(image_size=16, width=16), seed=0).eval()
    cfg = dataclasses.replace(GenerateConfig.cpu_tiny(steps=4), renderer=RendererConfig(num_samples_per_ray=16),
                              field=FieldConfig(encoding=HashGridConfig(n_levels=4, log2_hashmap_size=12), hidden_dims=16))
    token = torch.randn(1, 1, model.config.unet.cross_attention_dim)
    acp = model.config.scheduler.alphas_cumprod(torch.device("cpu"))
    capture = FakeCapture()
    graphed = CUDAGraphedForward(model.unet, capture=capture, device_type="cpu")
    results = {}
    for name, unet in (("eager", None), ("graphed", graphed)):
        fld, renderer = ImplicitVolume(cfg.field, seed=0), VolumeRenderer(cfg.renderer)
        losses = []
        for step in range(3):  # three steps: three timesteps and renders through one capture
            loss = sds_step(model, fld, renderer, token, acp, cfg, step, torch.Generator().manual_seed(step), unet=unet)
            losses.append(loss.detach())
        loss.backward()
        results[name] = (torch.stack(losses), fld.encoding.params.grad.clone())
    torch.testing.assert_close(results["graphed"][0], results["eager"][0], rtol=0, atol=0)
    torch.testing.assert_close(results["graphed"][1], results["eager"][1], rtol=0, atol=0)
    assert len(capture.calls) == 1 and graphed.replays == 3


def test_multiview_pipeline_samples_the_same_through_a_graph():
    pytest.importorskip("diffusers", reason="diffusers not installed (pip install diffusers)")
    pytest.importorskip("open_clip", reason="open_clip not installed (pip install open-clip-torch)")
    from iso3d.models.bundle import MultiViewDiffusion
    from iso3d.models.presets import tiny_bundle_config
    from iso3d.pipelines import MultiViewPipeline

    model = MultiViewDiffusion(tiny_bundle_config(image_size=16, width=16), seed=0)
    image = torch.rand(4, 16, 16)
    eager = MultiViewPipeline(model)
    on_cpu = MultiViewPipeline(model, cuda_graph=True)  # CPU tensors: the wrapper passes the calls through
    graphed = MultiViewPipeline(model, cuda_graph=True)
    capture = FakeCapture()
    graphed.unet = CUDAGraphedForward(model.unet, capture=capture, device_type="cpu")
    outs = []
    for pipe in (eager, on_cpu, graphed):
        pipe.set_progress_bar_config(disable=True)
        outs.append(pipe(image, num_inference_steps=3, seed=0).images)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    assert on_cpu.unet.replays == 0 and len(capture.calls) == 1 and graphed.unet.replays == 3
    with_ref = graphed(image, num_inference_steps=2, seed=0, reference_pose=(10.0, 0.0))  # runs eagerly
    assert with_ref.images.shape == outs[0].shape and graphed.unet.replays == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a real CUDA graph capture needs a GPU")
@pytest.mark.parametrize("backend", ["auto", "triton"])  # auto: SDPA on the concatenated views (no reference)
def test_real_capture_of_the_multiview_unet_matches_eager(backend):
    pytest.importorskip("diffusers", reason="diffusers not installed (pip install diffusers)")
    from iso3d.cameras import camera_embedding
    from iso3d.models import MultiViewUNet, MultiViewUNetConfig

    cfg = MultiViewUNetConfig(sample_size=8, block_out_channels=(32, 64), attention_levels=(True, True),
                              layers_per_block=1, head_dim=16, cross_attention_dim=32, norm_num_groups=8)
    torch.manual_seed(0)
    unet = MultiViewUNet(cfg, backend=backend).cuda().eval()
    graphed = CUDAGraphedForward(unet)
    for rows in (8, 8, 4, 8):  # re-use, a second signature, and back
        x, ctx = torch.randn(rows, 4, 8, 8, device="cuda"), torch.randn(rows, 1, 32, device="cuda")
        t = torch.randint(0, 1000, (rows,), device="cuda")
        cam = camera_embedding(torch.full((rows,), 15.0), torch.arange(rows) % 4 * 90.0).cuda()
        with torch.no_grad():
            eager = unet(x, t, ctx, cam, n_views=4)
        torch.testing.assert_close(graphed(x, t, ctx, cam, n_views=4), eager, rtol=1e-5, atol=1e-5)
    assert graphed.disabled_reason is None and len(graphed.graphs) == 2 and graphed.replays == 4


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_real_capture_on_a_device_that_is_not_the_current_one():
    lin = torch.nn.Linear(8, 8).to("cuda:1").eval()
    graphed = CUDAGraphedForward(lin)
    with torch.cuda.device(0):
        for _ in range(3):
            x = torch.randn(5, 8, device="cuda:1")
            torch.testing.assert_close(graphed(x), lin(x).detach(), rtol=1e-6, atol=1e-6)
    assert graphed.disabled_reason is None and graphed.replays == 3
