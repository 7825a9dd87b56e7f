"""CheckpointWriter: background writes that are snapshots, atomic, ordered, and report their errors."""

import threading

import pytest
import torch

from iso3d.utils.checkpoint import CheckpointWriter, host_copy


def test_host_copy_is_isolated_from_later_updates():
    weights, losses = torch.randn(5), [1.0, 2.0]
    before = weights.clone()
    state = {"field": {"w": weights}, "losses": losses, "step": 2, "pair": (weights, "x"), "none": None}
    copy = host_copy(state)
    weights += 1
    losses.append(3.0)
    assert torch.equal(copy["field"]["w"], before) and torch.equal(copy["pair"][0], before)
    assert copy["losses"] == [1.0, 2.0] and copy["step"] == 2 and copy["pair"][1] == "x" and copy["none"] is None
    assert copy["field"]["w"].data_ptr() != weights.data_ptr()


@pytest.mark.parametrize("background", [True, False])
def test_writes_are_snapshots_in_order(tmp_path, background):
    path = tmp_path / "deep" / "checkpoint.pt"
    writer = CheckpointWriter(path, background=background)
    weights = torch.zeros(1000)
    for step in range(1, 4):
        writer.save({"weights": weights, "step": step})
        weights += 1  # the optimizer's in-place update, while the write may still run
    writer.wait()
    saved = torch.load(path, weights_only=True)
    assert saved["step"] == 3 and torch.equal(saved["weights"], torch.full((1000,), 2.0))
    assert not path.with_name("checkpoint.pt.tmp").exists()  # renamed into place


def test_the_write_runs_in_another_thread_and_wait_true_blocks(tmp_path, monkeypatch):
    threads = []
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f: (threads.append(threading.current_thread().name), real_save(obj, f)))
    writer = CheckpointWriter(tmp_path / "c.pt")
    writer.save({"step": 1})
    writer.wait()
    writer.save({"step": 2}, wait=True)
    assert threads[0] == "iso3d-checkpoint" and len(threads) == 2
    assert torch.load(tmp_path / "c.pt", weights_only=True)["step"] == 2


def test_a_failed_write_is_raised_by_the_next_call(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    writer = CheckpointWriter(tmp_path / "file" / "checkpoint.pt")
    writer.save({"step": 1})  # fails in the thread
    with pytest.raises(OSError, match="writing the checkpoint .*checkpoint.pt failed"):
        writer.wait()
    writer.wait()  # reported once
