"""Training stages run end to end at tiny scale: the loss falls, checkpoints reload, resume is exact, DDP."""

import dataclasses
import json
import math

import pytest
import torch

from iso3d.utils.torchvision_compat import patch_torchvision_if_needed

patch_torchvision_if_needed()  # also in DDP worker processes, which import this module without conftest
pytest.importorskip("diffusers", reason="diffusers not installed (pip install diffusers)")
pytest.importorskip("open_clip", reason="open_clip not installed (pip install open-clip-torch)")

from iso3d.data import MultiViewDataset, ObjectSampling, RenderSettings  # noqa: E402
from iso3d.io.images import composite_on_white  # noqa: E402
from iso3d.models.bundle import MultiViewDiffusion, SchedulerConfig  # noqa: E402
from iso3d.models.presets import tiny_bundle_config  # noqa: E402
from iso3d.training import DataConfig, TrainConfig, diffusion_loss, train  # noqa: E402
from iso3d.training.trainer import _batch  # noqa: E402

IMAGE = 16


@pytest.fixture(scope="module")
def dataset():
    return MultiViewDataset("train", 4, settings=RenderSettings(image_size=IMAGE), progress=False)


def _model():
    return MultiViewDiffusion(tiny_bundle_config(image_size=IMAGE, width=16), seed=0)


def _fixed_loss(model, data, cfg):
    """The loss on one fixed batch, timestep and noise (no sampling noise in the comparison)."""
    batch = _batch(data, torch.arange(len(data)), "cpu")
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        return diffusion_loss(model, batch, dataclasses.replace(cfg, cond_dropout=0.0), gen,
                              timesteps=torch.tensor([100, 300, 500, 700])).item()


@pytest.mark.parametrize("stage, prediction", [("stage1", "epsilon"), ("stage2", "epsilon"), ("stage1", "v_prediction")])
def test_loss_falls_on_a_fixed_tiny_batch(stage, prediction, dataset, tmp_path):
    model = _model() if prediction == "epsilon" else MultiViewDiffusion(
        tiny_bundle_config(image_size=IMAGE, width=16, scheduler=SchedulerConfig(prediction_type=prediction)), seed=0)
    cfg = TrainConfig(stage=stage, steps=40, batch_size=4, lr=2e-3, checkpoint_every=1000, log_every=5,
                      data=DataConfig(cache_dir=None))
    before = _fixed_loss(model, dataset, cfg)
    result = train(model, cfg, tmp_path, dataset=dataset, progress=False)
    after = _fixed_loss(model, dataset, cfg)
    assert result["step"] == 40
    assert after < 0.7 * before, f"{stage}: loss {before:.4f} -> {after:.4f}"
    log = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(log) == 8 and '"loss"' in log[0]


def test_encoder_stage_learns_to_match_views(dataset, tmp_path):
    from iso3d.training.trainer import contrastive_loss

    model = _model()
    batch = _batch(dataset, torch.arange(4), "cpu")
    scale = torch.tensor(2.6593)
    with torch.no_grad():
        before = contrastive_loss(model, batch, scale, torch.Generator().manual_seed(0)).item()
    train(model, TrainConfig(stage="encoder", steps=30, batch_size=4, lr=1e-3, checkpoint_every=1000,
                             data=DataConfig(cache_dir=None)), tmp_path, dataset=dataset, progress=False)
    with torch.no_grad():
        after = contrastive_loss(model, batch, scale, torch.Generator().manual_seed(0)).item()
    assert after < before
    assert not any(p.requires_grad for p in model.image_encoder.parameters()), "the encoder is frozen again"


def test_colour_jitter_changes_each_frames_colour_but_not_its_shape():
    from iso3d.training.trainer import colour_jitter

    gen = torch.Generator().manual_seed(0)
    rgb = torch.rand(1, 3, 9, 7, generator=gen)
    alpha = (torch.rand(1, 1, 9, 7, generator=gen) > 0.5).float()
    frames = torch.cat([rgb, alpha], 1).expand(2, 5, 4, 9, 7)  # [B, F, 4, H, W]: ten copies of one frame
    out = colour_jitter(frames, 0.3, torch.Generator().manual_seed(1))
    assert out.shape == frames.shape
    assert torch.equal(out[:, :, 3], frames[:, :, 3]), "alpha (the silhouette) is kept"
    assert out.min() >= 0 and out.max() <= 1
    flat = out[:, :, :3].flatten(0, 1)  # [10, 3, H, W]
    assert all(not torch.allclose(flat[0], flat[i]) for i in range(1, 10)), "each frame gets its own colour"
    # Per frame and channel the change is an affine map of the input (before clamping): check where unclamped.
    f, c = 3, 1
    x, y = rgb[0, c].flatten(), flat[f, c].flatten()
    inside = (y > 0) & (y < 1)
    slope = (y[inside][1:] - y[inside][0]) / (x[inside][1:] - x[inside][0])
    assert torch.allclose(slope, slope[0].expand_as(slope), rtol=1e-4)
    assert torch.equal(colour_jitter(frames, 0.0, torch.Generator().manual_seed(1)), frames), "strength 0 is the identity"


def test_contrastive_loss_with_colour_jitter(dataset):
    from iso3d.training.trainer import contrastive_loss

    model = _model()
    batch = _batch(dataset, torch.arange(4), "cpu")
    scale = torch.tensor(2.6593)

    def loss(**kw):
        with torch.no_grad():
            return contrastive_loss(model, batch, scale, torch.Generator().manual_seed(0), **kw).item()

    assert loss(colour_jitter_strength=0.3) != loss()
    assert math.isfinite(loss(colour_jitter_strength=1.0))


def test_encoder_stage_trains_on_jittered_pairs_when_asked(dataset, tmp_path):
    def first_loss(jitter):
        cfg = TrainConfig(stage="encoder", steps=1, batch_size=4, lr=1e-3, checkpoint_every=1000,
                          encoder_colour_jitter=jitter, data=DataConfig(cache_dir=None))
        return train(_model(), cfg, tmp_path / str(jitter), dataset=dataset, progress=False)["loss"]

    assert first_loss(0.0) == first_loss(0.0)  # deterministic, so the difference below is the jitter's
    assert first_loss(0.5) != first_loss(0.0)


def test_train_command_checks_sampling_flags():
    from iso3d.cli import main

    for flag, value in (("--sampling-eta", "1.5"), ("--guidance-scale", "-1"), ("--sds-guidance-scale", "-2"),
                        ("--encoder-colour-jitter", "2")):
        with pytest.raises(ValueError, match=flag):
            main(["train", "stage1", "--out", "unused", flag, value])
    with pytest.raises(ValueError, match="encoder stage only"):  # stage1 would silently ignore it
        main(["train", "stage1", "--out", "unused", "--encoder-colour-jitter", "0.3"])


def test_train_command_exits_130_on_ctrl_c(tmp_path, monkeypatch, capsys):
    import iso3d.training.trainer as trainer
    from iso3d.cli import main

    def interrupted(model, cfg, out, **kwargs):
        raise KeyboardInterrupt(f"train: {cfg.stage} interrupted after step 3; its checkpoint is {out}/checkpoints/step_0000003.pt")

    monkeypatch.setattr(trainer, "train", interrupted)
    assert main(["train", "stage1", "--out", str(tmp_path), "--device", "cpu"]) == 130
    err = capsys.readouterr().err
    assert "stage1 interrupted after step 3" in err and "Traceback" not in err
    assert not (tmp_path / "stage1" / "bundle").exists()  # nothing half-trained is saved as a finished stage


def test_resume_continues_exactly(dataset, tmp_path):
    cfg = TrainConfig(stage="stage2", steps=4, batch_size=2, lr=1e-3, checkpoint_every=2, data=DataConfig(cache_dir=None))
    straight = _model()
    train(straight, cfg, tmp_path / "a", dataset=dataset, progress=False)
    interrupted = _model()
    train(interrupted, dataclasses.replace(cfg, steps=2), tmp_path / "b", dataset=dataset, progress=False)
    resumed = _model()  # a fresh process would start from scratch weights
    train(resumed, cfg, tmp_path / "b", dataset=dataset, progress=False, resume=True)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs after resume"
    ckpts = sorted((tmp_path / "b" / "checkpoints").glob("*.pt"))
    assert [p.name for p in ckpts] == ["step_0000002.pt", "step_0000004.pt"]
    with pytest.raises(ValueError, match="latest checkpoint is from stage 'stage2'"):
        train(_model(), dataclasses.replace(cfg, stage="stage1", steps=6), tmp_path / "b", dataset=dataset,
              progress=False, resume=True)


def test_ctrl_c_keeps_the_finished_step_and_resume_continues_exactly(dataset, tmp_path, monkeypatch):
    import signal

    import iso3d.training.trainer as trainer

    cfg = TrainConfig(stage="stage1", steps=4, batch_size=2, lr=1e-3, checkpoint_every=10, data=DataConfig(cache_dir=None))
    straight = _model()
    train(straight, cfg, tmp_path / "a", dataset=dataset, progress=False)
    real_loss, calls = trainer.diffusion_loss, []

    def loss_with_ctrl_c(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # Ctrl-C during the second step: it still finishes and is saved
            signal.raise_signal(signal.SIGINT)
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(trainer, "diffusion_loss", loss_with_ctrl_c)
    with pytest.raises(KeyboardInterrupt, match="stage1 interrupted after step 2; its checkpoint is .*step_0000002.pt"):
        train(_model(), cfg, tmp_path / "b", dataset=dataset, progress=False)
    monkeypatch.setattr(trainer, "diffusion_loss", real_loss)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    resumed = _model()
    assert train(resumed, cfg, tmp_path / "b", dataset=dataset, progress=False, resume=True)["step"] == 4
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs after the interrupted run's resume"


def _ddp_worker(rank, world, port, out, result):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank))
    import torch.distributed as dist

    data = MultiViewDataset("train", 4, settings=RenderSettings(image_size=IMAGE), progress=False)
    model = _model()
    train(model, TrainConfig(stage="stage1", steps=2, batch_size=2, checkpoint_every=10,
                             data=DataConfig(cache_dir=None)), out, dataset=data, progress=False)
    result[rank] = torch.cat([p.detach().flatten() for p in model.unet.parameters()])
    dist.destroy_process_group()


def test_ddp_two_processes_gloo(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    result = manager.dict()
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path), result), nprocs=2, join=True)
    assert torch.equal(result[0], result[1]), "gradients must be averaged across ranks"
    assert (tmp_path / "checkpoints" / "step_0000002.pt").exists()


def test_time_limit_stops_early_with_a_checkpoint(dataset, tmp_path):
    cfg = TrainConfig(stage="stage1", steps=10_000, batch_size=2, checkpoint_every=10_000, time_limit=1e-9,
                      data=DataConfig(cache_dir=None))
    result = train(_model(), cfg, tmp_path, dataset=dataset, progress=False)
    assert result["stopped_by_time_limit"] and result["step"] == 0
    assert [p.name for p in (tmp_path / "checkpoints").glob("*.pt")] == ["step_0000000.pt"]
    result = train(_model(), dataclasses.replace(cfg, steps=3, time_limit=3600.0), tmp_path / "b", dataset=dataset,
                   progress=False)
    assert not result["stopped_by_time_limit"] and result["step"] == 3


def test_weight_average_is_saved_and_resumes_exactly(dataset, tmp_path):
    cfg = TrainConfig(stage="stage1", steps=4, batch_size=2, lr=1e-2, checkpoint_every=2, ema_decay=0.5,
                      data=DataConfig(cache_dir=None))
    last = _model()
    train(last, dataclasses.replace(cfg, ema_decay=0.0), tmp_path / "plain", dataset=dataset, progress=False)
    averaged = _model()
    train(averaged, cfg, tmp_path / "a", dataset=dataset, progress=False)
    start = _model()
    differs = [not torch.equal(a, b) for a, b in zip(averaged.unet.parameters(), last.unet.parameters())]
    moved = [not torch.equal(a, b) for a, b in zip(averaged.unet.parameters(), start.unet.parameters())]
    assert any(differs) and any(moved), "the average is neither the last weights nor the start"
    interrupted = _model()
    train(interrupted, dataclasses.replace(cfg, steps=2), tmp_path / "b", dataset=dataset, progress=False)
    resumed = _model()
    train(resumed, cfg, tmp_path / "b", dataset=dataset, progress=False, resume=True)
    for a, b in zip(averaged.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_weight_average_warms_up():
    """The first updates follow the weights closely (min(d, (1+k)/(10+k))), so the start fades fast."""
    cfg = TrainConfig(ema_decay=0.998)
    assert [round(cfg.ema_decay_at(k), 4) for k in (0, 1, 90)] == [0.1, round(2 / 11, 4), round(91 / 100, 4)]
    assert cfg.ema_decay_at(10**6) == 0.998
    start_weight = math.prod(cfg.ema_decay_at(k) for k in range(805))
    assert start_weight < 1e-6  # without warm-up: 0.998**805 ≈ 0.2


def test_learning_rate_schedule():
    cfg = TrainConfig(lr=1.0, steps=110, warmup_steps=10, lr_schedule="cosine")
    assert [round(cfg.lr_at(s), 6) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]  # linear warm-up
    assert cfg.lr_at(60) == pytest.approx(0.5)  # half-way through the cosine
    assert cfg.lr_at(110) == pytest.approx(0.0, abs=1e-12) and cfg.lr_at(10_000) == pytest.approx(0.0, abs=1e-12)
    assert TrainConfig(lr=0.3).lr_at(12345) == 0.3  # the default is constant, without warm-up
    assert cfg.lr_at(60, elapsed=1e9) == pytest.approx(0.5)  # wall time counts only when asked


def test_cosine_to_time_limit_ends_the_decay_at_whichever_limit_comes_first():
    cfg = TrainConfig(lr=1.0, steps=110, warmup_steps=10, lr_schedule="cosine", time_limit=100.0,
                      cosine_to_time_limit=True)
    assert cfg.lr_at(60, elapsed=0.0) == pytest.approx(0.5)  # steps ahead of the clock: the step fraction
    assert cfg.lr_at(20, elapsed=50.0) == pytest.approx(0.5)  # the clock ahead: the time fraction
    assert cfg.lr_at(20, elapsed=100.0) == pytest.approx(0.0, abs=1e-12)
    assert cfg.lr_at(4, elapsed=99.0) == pytest.approx(0.5)  # warm-up is by steps only
    for bad in (dict(lr_schedule="constant", time_limit=100.0), dict(lr_schedule="cosine", time_limit=None)):
        with pytest.raises(ValueError, match="cosine_to_time_limit"):
            TrainConfig(cosine_to_time_limit=True, **bad)


def test_reference_dropout_trains_stage2_steps_as_stage1(dataset):
    model = _model()
    batch = _batch(dataset, torch.arange(len(dataset)), "cpu")

    def loss(**kw):
        cfg = TrainConfig(cond_dropout=0.0, data=DataConfig(cache_dir=None), **kw)
        with torch.no_grad():
            return diffusion_loss(model, batch, cfg, torch.Generator().manual_seed(5)).item()

    dropped = loss(stage="stage2", reference_dropout=1.0)
    assert dropped == loss(stage="stage1", reference_dropout=1.0)  # same draws, no reference frame
    assert dropped != loss(stage="stage2", reference_dropout=0.0)


def test_min_snr_weighting(dataset):
    """Min-SNR-γ: per-object weights min(SNR_t, γ)/SNR_t on the ε-MSE, 1 where SNR_t <= γ."""
    model = _model()
    batch = _batch(dataset, torch.arange(len(dataset)), "cpu")
    t = torch.tensor([20, 300, 600, 950])  # SNR ≈ 52, 1.4, 0.19, 0.008 under the release's schedule
    noise = torch.randn(len(dataset) * 4, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))

    def loss(gamma, rows):
        cfg = TrainConfig(cond_dropout=0.0, snr_gamma=gamma, data=DataConfig(cache_dir=None))
        sub = {k: v[rows] for k, v in batch.items()}
        n = len(sub["views"])
        with torch.no_grad():
            return diffusion_loss(model, sub, cfg, torch.Generator().manual_seed(5), noise=noise[rows.start * 4:rows.start * 4 + 4 * n],
                                  timesteps=t[rows]).item()

    acp = model.config.scheduler.alphas_cumprod("cpu")
    snr = acp[t] / (1 - acp[t])
    per_object = torch.tensor([loss(None, slice(i, i + 1)) for i in range(4)])
    expected = (per_object * snr.clamp(max=5.0) / snr).mean()
    assert loss(5.0, slice(0, 4)) == pytest.approx(expected.item(), rel=1e-5)
    assert loss(5.0, slice(1, 4)) == pytest.approx(per_object[1:].mean().item(), rel=1e-5)  # all SNR_t < 5: unweighted
    assert loss(5.0, slice(0, 1)) < 0.2 * loss(None, slice(0, 1))  # t = 20: weight 5 / 52
    assert loss(1e9, slice(0, 4)) == pytest.approx(loss(None, slice(0, 4)), rel=1e-6)


def test_v_prediction_loss_targets_v_and_weights_min_snr_by_snr_plus_one(dataset):
    """A v-prediction bundle's loss is the MSE against v = √ᾱ·ε − √(1−ᾱ)·x₀ (zero for a UNet that
    returns exactly v), and its Min-SNR-γ weight is min(SNR_t, γ)/(SNR_t + 1)."""
    cfg_model = tiny_bundle_config(image_size=IMAGE, width=16,
                                   scheduler=SchedulerConfig(prediction_type="v_prediction", zero_terminal_snr=True))
    model = MultiViewDiffusion(cfg_model, seed=0)
    schedule = model.config.scheduler
    acp = schedule.alphas_cumprod("cpu")
    batch = _batch(dataset, torch.arange(len(dataset)), "cpu")
    t = torch.tensor([20, 300, 600, 999])  # the last: ᾱ = 0, x_t is pure noise and v = −x₀
    noise = torch.randn(len(dataset) * 4, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    x0 = model.encode_images(composite_on_white(batch["views"]).flatten(0, 1))
    a = acp[t].repeat_interleave(4).view(-1, 1, 1, 1)
    v = schedule.target(x0, noise, a)
    torch.testing.assert_close(v[-4:], -x0[-4:])

    class Oracle(torch.nn.Module):
        def forward(self, x_t, timesteps, *args, **kwargs):
            assert torch.equal(timesteps, t.repeat_interleave(4))
            torch.testing.assert_close(x_t, a.sqrt() * x0 + (1 - a).sqrt() * noise)
            return v + offset

    def loss(gamma):
        cfg = TrainConfig(cond_dropout=0.0, snr_gamma=gamma, data=DataConfig(cache_dir=None))
        with torch.no_grad():
            return diffusion_loss(model, batch, cfg, torch.Generator().manual_seed(5), noise=noise, timesteps=t).item()

    model.unet = Oracle()
    offset = torch.zeros(())
    assert loss(None) < 1e-10
    offset = torch.linspace(0.1, 0.4, 16).view(-1, 1, 1, 1)  # a known error per view
    per_view = offset.flatten().square()
    assert loss(None) == pytest.approx(per_view.mean().item(), rel=1e-5)
    snr = (a / (1 - a)).flatten()
    assert loss(5.0) == pytest.approx((per_view * snr.clamp(max=5.0) / (snr + 1)).mean().item(), rel=1e-5)


def test_batch_matches_single_samples(dataset):
    batch = dataset.batch(torch.tensor([2, 0]))
    for row, i in enumerate([2, 0]):
        sample = dataset[i]
        for name, value in batch.items():
            assert torch.equal(value[row], getattr(sample, name)), name


def test_bad_config():
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)
    with pytest.raises(ValueError, match="time_limit"):
        TrainConfig(time_limit=0)
    with pytest.raises(ValueError, match="stage must be"):
        TrainConfig(stage="stage3")
    with pytest.raises(ValueError, match="cond_dropout"):
        TrainConfig(cond_dropout=1.5)
    with pytest.raises(ValueError, match="reference_dropout"):
        TrainConfig(reference_dropout=-0.1)
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="linear")
    with pytest.raises(ValueError, match="snr_gamma"):
        TrainConfig(snr_gamma=0)
    with pytest.raises(ValueError, match="encoder_colour_jitter"):
        TrainConfig(encoder_colour_jitter=-0.1)
    with pytest.raises(ValueError, match="encoder stage only"):  # a diffusion stage would ignore it
        TrainConfig(stage="stage1", encoder_colour_jitter=0.3)


def test_train_all_command_writes_reloadable_bundles(tmp_path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "iso3d", "train", "all", "--out", str(tmp_path / "run"), "--steps", "2",
           "--encoder-steps", "2", "--train-size", "4", "--image-size", str(IMAGE), "--width", "16",
           "--batch-size", "2", "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--orientation", "upright",
           "--max-primitives", "2", "--object-scale", "1.25", "--noise-schedule", "ddpm", "--prediction-type", "v_prediction", "--zero-terminal-snr",
           "--encoder-colour-jitter", "0.25", "--guidance-scale", "1.5", "--sampling-eta", "1", "--sds-guidance-scale", "5"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    objects = ObjectSampling(max_primitives=2, orientation="upright", scale=1.25)
    for stage in ("encoder", "stage1", "stage2"):
        saved = json.loads((tmp_path / "run" / stage / "result.json").read_text())
        assert saved["config"]["data"]["object_sampling"] == dataclasses.asdict(objects)
        assert saved["config"]["encoder_colour_jitter"] == (0.25 if stage == "encoder" else 0.0)
    expected = MultiViewDataset("train", 4, settings=RenderSettings(image_size=IMAGE), object_sampling=objects,
                                progress=False)
    assert [p.name for p in (tmp_path / "cache").glob("*.npz")] == [expected._cache_path(tmp_path / "cache").name]
    model = MultiViewDiffusion.from_pretrained(tmp_path / "run" / "stage2" / "bundle")
    assert model.config.image_size == IMAGE
    assert model.config.training_objects == dataclasses.asdict(objects)  # what eval-model and eval draw held-out objects from
    expected = dataclasses.replace(SchedulerConfig.ddpm(), prediction_type="v_prediction", zero_terminal_snr=True)
    assert model.config.scheduler == expected  # chosen for the new model, kept by stages 1 and 2
    assert (model.config.guidance_scale, model.config.sampling_eta, model.config.sds_guidance_scale) == (1.5, 1.0, 5.0)


def test_noise_schedule_option_is_for_new_models_only(tmp_path):
    from iso3d.cli import main

    with pytest.raises(ValueError, match="--noise-schedule sets a new model's schedule"):
        main(["train", "stage1", "--out", str(tmp_path), "--init", "iso3d-tiny", "--noise-schedule", "ddpm",
              "--device", "cpu"])
    with pytest.raises(ValueError, match="--prediction-type, --zero-terminal-snr set a new model's schedule"):
        main(["train", "stage1", "--out", str(tmp_path), "--init", "iso3d-tiny", "--prediction-type", "v_prediction",
              "--zero-terminal-snr", "--device", "cpu"])
    with pytest.raises(ValueError, match="zero_terminal_snr=True needs prediction_type='v_prediction'"):
        main(["train", "stage1", "--out", str(tmp_path), "--zero-terminal-snr", "--device", "cpu"])
