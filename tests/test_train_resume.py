"""Autoresume under faults: new LR / weight decay on a relaunch, refused recipe changes, the save-folder lock,
checkpoints cut by a kill at any point of a save, and a non-finite loss."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from composer.core import Callback
from composer.loggers import InMemoryLogger

from mmbert_train.config import load_recipe
from mmbert_train.locks import LockHeldError
from mmbert_train.processes import pythonpath_with
from mmbert_train.train.callbacks import NonFiniteLossError
from mmbert_train.train.resume import (
    ResumeError,
    compare_recipes,
    install_atomic_checkpoint_writes,
    is_complete_checkpoint,
    is_complete_sharded_checkpoint,
    repair_save_folder,
)
from mmbert_train.train.testing import fixed_data_spec, packed_batches
from mmbert_train.train.trainer import build_trainer, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RECIPE = """
name: tiny
phase: pretrain
model: {{preset: tiny, vocab_size: 512}}
data: {{root: mds, languages: [eng], tau: 0.7, sources: {{udhr: {{}}}}, max_seq_len: 64, mask_ratio: 0.3}}
optimizer: {{lr: 3.0e-3, weight_decay: 1.0e-4}}
scheduler: {{name: constant}}
trainer:
  max_duration: {steps}ba
  global_batch_size: 4
  save_folder: {folder}
  save_interval: {interval}
  progress_bar: false
eval: {{enabled: false}}
"""


def recipe_at(tmp_path, steps=4, interval="2ba", overrides=(), name="r.yaml", folder="ckpt"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(RECIPE.format(steps=steps, folder=tmp_path / folder, interval=interval)))
    return load_recipe(path, overrides)


def data(n=4):
    return fixed_data_spec(packed_batches(n, 4, 64, 512, seed=5))


def lrs(memory):
    return {int(t.batch): float(v) for t, v in memory.data["lr-StableAdamW/group0"]}


def fit(recipe, **kwargs):
    trainer = build_trainer(recipe, train_dataloader=data(), **kwargs)
    trainer.fit()
    trainer.close()
    return trainer


# ------------------------------------------------------------------------------------------- new LR on resume


def test_relaunch_with_halved_lr_and_weight_decay_trains_the_new_batches_at_the_new_values(tmp_path):
    fit(recipe_at(tmp_path, steps=4))
    memory = InMemoryLogger()
    halved = ["trainer.max_duration=8ba", "optimizer.lr=1.5e-3", "optimizer.weight_decay=5.0e-5"]
    trainer = build_trainer(
        recipe_at(tmp_path, steps=8, overrides=halved), train_dataloader=data(), loggers=[memory]
    )
    assert int(trainer.state.timestamp.batch) == 4  # resumed
    groups = trainer.state.optimizers[0].param_groups
    assert [g["lr"] for g in groups] == pytest.approx([1.5e-3, 1.5e-3])
    assert groups[0]["weight_decay"] == pytest.approx(5e-5) and groups[1]["weight_decay"] == 0.0
    assert [g["max_lr"] for g in groups] == pytest.approx([1.5e-3, 1.5e-3])  # decoupled decay: lr / max_lr
    assert trainer.state.schedulers[0].base_lrs == pytest.approx([1.5e-3, 1.5e-3])
    trainer.fit()
    trainer.close()
    assert lrs(memory) == pytest.approx({5: 1.5e-3, 6: 1.5e-3, 7: 1.5e-3, 8: 1.5e-3})
    saved = load_recipe(tmp_path / "ckpt" / "recipe.yaml")
    assert saved.optimizer.lr == 1.5e-3 and saved.trainer.max_duration == "8ba"
    assert os.readlink(tmp_path / "ckpt" / "latest-rank0.pt").endswith("-ba8-rank0.pt")
    state = torch.load(tmp_path / "ckpt" / "latest-rank0.pt", weights_only=False)["state"]
    assert state["optimizers"]["StableAdamW"]["param_groups"][0]["lr"] == pytest.approx(1.5e-3)


def test_relaunch_with_a_new_lr_keeps_the_schedule_multiplier(tmp_path):
    """Mid-warmup (a run stopped after 2 of 6 batches): the LR of the next batch is the new peak times the
    schedule's value there."""
    warm = ["scheduler.name=warmup_stable_decay", "scheduler.t_warmup=4ba"]
    first = build_trainer(recipe_at(tmp_path, steps=6, overrides=warm), train_dataloader=data())
    first.fit(duration="2ba")
    first.close()
    memory = InMemoryLogger()
    again = ["optimizer.lr=1.0e-3", *warm]
    trainer = build_trainer(
        recipe_at(tmp_path, steps=6, overrides=again), train_dataloader=data(), loggers=[memory]
    )
    trainer.fit()
    trainer.close()
    # warmup is t / 4 of the peak at batch t (0-based), whatever the recipe's duration
    assert lrs(memory) == pytest.approx({3: 0.5e-3, 4: 0.75e-3, 5: 1e-3, 6: 1e-3})


@pytest.mark.parametrize(
    "overrides, keys",
    [
        (["model.hidden_size=128"], ["model.hidden_size 64 -> 128"]),
        (
            ["data.tau=0.5", "trainer.global_batch_size=8"],
            ["data.tau 0.7 -> 0.5", "trainer.global_batch_size"],
        ),
        (["phase=midtrain", "name=other"], ["name 'tiny' -> 'other'", "phase 'pretrain' -> 'midtrain'"]),
        (["optimizer.betas=[0.8,0.9]"], ["optimizer.betas"]),
    ],
)
def test_a_change_a_resume_cannot_apply_is_refused_before_the_saved_recipe_is_touched(
    tmp_path, overrides, keys
):
    fit(recipe_at(tmp_path, steps=2))
    saved = (tmp_path / "ckpt" / "recipe.yaml").read_text()
    with pytest.raises(ResumeError) as info:
        build_trainer(recipe_at(tmp_path, steps=4, overrides=overrides), train_dataloader=data())
    message = str(info.value)
    for key in keys:
        assert key in message
    assert "batch 2" in message and "init_from.path=" in message and "new trainer.save_folder" in message
    assert (tmp_path / "ckpt" / "recipe.yaml").read_text() == saved
    # the lock was released: the unchanged recipe continues
    trainer = build_trainer(recipe_at(tmp_path, steps=4), train_dataloader=data())
    assert int(trainer.state.timestamp.batch) == 2
    trainer.close()


def test_compare_recipes_sorts_changes():
    old = "optimizer: {lr: 1.0, betas: [0.9, 0.95]}\ntrainer: {max_duration: 4ba}\ndata: {tau: 0.7}\n"
    new = "optimizer: {lr: 0.5, betas: [0.9, 0.95]}\ntrainer: {max_duration: 8ba}\ndata: {tau: 0.7}\nnew: 1\n"
    changes = compare_recipes(old, new)
    assert changes.applied == {"optimizer.lr": (1.0, 0.5)}
    assert changes.followed == {"trainer.max_duration": ("4ba", "8ba")}
    assert changes.refused == {}  # `new` exists on one side only: a recipe from an older version


def test_autoresume_off_next_to_checkpoints_is_refused_up_front(tmp_path):
    from mmbert_train.train.trainer import TrainSetupError

    fit(recipe_at(tmp_path, steps=2))
    with pytest.raises(
        TrainSetupError, match="holds checkpoints up to batch 2 and trainer.autoresume is false"
    ):
        build_trainer(
            recipe_at(tmp_path, steps=4, overrides=["trainer.autoresume=false"]), train_dataloader=data()
        )


# --------------------------------------------------------------------------------------------------- the lock

HOLD_LOCK = """
import sys, time
from mmbert_train.locks import FileLock
FileLock(sys.argv[1], command="mmbert train other.yaml").acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_a_second_run_on_the_same_save_folder_is_refused_and_a_dead_holders_lock_taken_over(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    env = {**os.environ, "PYTHONPATH": pythonpath_with(Path(__file__).resolve().parents[1])}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(folder / ".lock")], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockHeldError, match=rf"held by PID {holder.pid} .*mmbert train other.yaml"):
            build_trainer(recipe_at(tmp_path, steps=2), train_dataloader=data())
        assert not (folder / "recipe.yaml").exists()  # refused before anything was written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (folder / ".lock").exists()  # what the killed run left
    trainer = train(recipe_at(tmp_path, steps=2), train_dataloader=data())
    assert int(trainer.state.timestamp.batch) == 2
    assert not (folder / ".lock").exists()  # released at the end of the run


# ------------------------------------------------------------------------------------ checkpoints cut by a kill


def checkpoint_names(folder):
    return sorted(p.name for p in folder.glob("ep*-ba*-rank0.pt"))


OLDER, NEWEST = "ep0-ba2-rank0.pt", "ep0-ba4-rank0.pt"  # 4 batches an epoch; the epoch counts after its end


@pytest.fixture
def two_checkpoints(tmp_path):
    """A finished 4-batch run with checkpoints at batches 2 and 4."""
    fit(recipe_at(tmp_path, steps=4))
    folder = tmp_path / "ckpt"
    assert checkpoint_names(folder) == [OLDER, NEWEST]
    return folder


@pytest.mark.parametrize("keep", [0, 1, 100, 0.5, 0.99, -1])
def test_a_checkpoint_cut_at_any_size_is_set_aside_and_the_run_resumes_from_the_previous_one(
    two_checkpoints, tmp_path, keep
):
    newest = two_checkpoints / NEWEST
    data_bytes = newest.read_bytes()
    size = {0.5: len(data_bytes) // 2, 0.99: int(len(data_bytes) * 0.99), -1: len(data_bytes) - 1}.get(
        keep, keep
    )
    newest.write_bytes(data_bytes[:size])
    assert not is_complete_checkpoint(newest) and is_complete_checkpoint(two_checkpoints / OLDER)
    trainer = build_trainer(recipe_at(tmp_path, steps=4), train_dataloader=data())
    assert int(trainer.state.timestamp.batch) == 2
    assert os.readlink(two_checkpoints / "latest-rank0.pt") == OLDER
    assert (two_checkpoints / "incomplete" / NEWEST).stat().st_size == size  # kept, out of the way
    trainer.fit()  # Composer would refuse a "future" ba4 file next to a batch-2 state
    trainer.close()
    assert checkpoint_names(two_checkpoints) == [OLDER, NEWEST]
    assert is_complete_checkpoint(two_checkpoints / NEWEST)


@pytest.mark.parametrize("latest", ["missing", "dangling", "older"])
def test_a_broken_latest_link_is_pointed_at_the_newest_complete_checkpoint(two_checkpoints, tmp_path, latest):
    link = two_checkpoints / "latest-rank0.pt"
    link.unlink()
    if latest == "dangling":
        os.symlink("ep9-ba99-rank0.pt", link)
    elif latest == "older":  # killed after the new file was complete, before the link moved
        os.symlink(OLDER, link)
    trainer = build_trainer(recipe_at(tmp_path, steps=6), train_dataloader=data())
    assert int(trainer.state.timestamp.batch) == 4
    assert os.readlink(link) == NEWEST
    trainer.close()


def test_no_complete_checkpoint_at_all_starts_from_zero_without_a_conflict(two_checkpoints, tmp_path):
    for name in checkpoint_names(two_checkpoints):
        (two_checkpoints / name).write_bytes(b"")
    state = repair_save_folder(two_checkpoints)
    assert state.resume_from is None and len(state.set_aside) == 2
    assert not os.path.lexists(two_checkpoints / "latest-rank0.pt")
    trainer = build_trainer(recipe_at(tmp_path, steps=2), train_dataloader=data())
    assert int(trainer.state.timestamp.batch) == 0
    trainer.fit()
    trainer.close()
    assert checkpoint_names(two_checkpoints) == [OLDER]


@pytest.mark.parametrize("damage", ["no metadata", "cut metadata", "cut shard", "missing shard"])
def test_an_incomplete_sharded_checkpoint_is_set_aside_and_latest_points_at_the_previous_one(
    tmp_path, damage
):
    """Sharded (FSDP, torch.distributed.checkpoint) saves are folders whose .metadata is written last: a save
    killed before it, or with a cut file, is moved to incomplete/ and latest-rank0.pt re-pointed."""
    from mmbert_train.checkpoints.testing import random_state, write_dcp_checkpoint
    from mmbert_train.model import ModelConfig

    config = ModelConfig.preset("tiny")
    folder = tmp_path / "save"
    for name in ("ep0-ba2", "ep0-ba4"):
        write_dcp_checkpoint(folder / name, config, random_state(config, seed=1))
        assert is_complete_sharded_checkpoint(folder / name)
    os.symlink("ep0-ba4", folder / "latest-rank0.pt")
    newest = folder / "ep0-ba4"
    shard = next(newest.glob("*.distcp"))
    if damage == "no metadata":
        (newest / ".metadata").unlink()
    elif damage == "cut metadata":
        (newest / ".metadata").write_bytes((newest / ".metadata").read_bytes()[:50])
    elif damage == "cut shard":
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    else:
        shard.unlink()
    assert not is_complete_sharded_checkpoint(newest)
    state = repair_save_folder(folder)
    assert state.resume_from == folder / "ep0-ba2" and state.batch == 2
    assert (
        state.set_aside == [folder / "incomplete" / "ep0-ba4"]
        and (folder / "incomplete" / "ep0-ba4").is_dir()
    )
    assert os.readlink(folder / "latest-rank0.pt") == "ep0-ba2"
    assert not is_complete_sharded_checkpoint(tmp_path / "nothing-here")


def test_checkpoint_writes_go_through_a_temporary_name(tmp_path):
    from composer.utils import checkpoint as composer_checkpoint

    install_atomic_checkpoint_writes()

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("killed mid-write")

    target = tmp_path / "ep1-ba1-rank0.pt"
    with pytest.raises(RuntimeError, match="killed mid-write"):
        composer_checkpoint._write_checkpoint_file({"a": torch.zeros(1000), "b": Unpicklable()}, str(target))
    assert list(tmp_path.iterdir()) == []  # neither a cut checkpoint nor a temporary file
    composer_checkpoint._write_checkpoint_file({"a": torch.zeros(3)}, str(target))
    assert list(tmp_path.iterdir()) == [target] and is_complete_checkpoint(target)


KILLED_RUN = """
import sys
from mmbert_train.config import load_recipe
from mmbert_train.train.testing import fixed_data_spec, packed_batches
from mmbert_train.train.trainer import build_trainer
recipe = load_recipe(sys.argv[1], ["trainer.max_duration=400ba", "trainer.save_interval=1ba"])
build_trainer(recipe, train_dataloader=fixed_data_spec(packed_batches(4, 4, 64, 512, seed=5))).fit()
"""


@pytest.mark.slow
def test_sigkill_at_many_points_of_a_save_always_resumes_from_the_newest_complete_checkpoint(tmp_path):
    """A real run saving every batch, killed -9 at different moments after a new checkpoint write started (while
    the file is written, renamed, or between two saves); each relaunch continues from the newest complete
    checkpoint, and the run goes on from there."""
    recipe_at(tmp_path, steps=4)  # writes r.yaml
    folder = tmp_path / "ckpt"
    env = {**os.environ, "PYTHONPATH": pythonpath_with(Path(__file__).resolve().parents[1])}
    newest = 0
    for delay in [0.0, 0.003, 0.02, 0.25]:
        proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(tmp_path / "r.yaml")], env=env)
        deadline = time.monotonic() + 600
        # let it write one more complete checkpoint, then kill `delay` seconds into the write of the next
        while time.monotonic() < deadline and proc.poll() is None:
            done = (
                [n for n in checkpoint_names(folder) if is_complete_checkpoint(folder / n)]
                if folder.exists()
                else []
            )
            if len(done) > newest and any(folder.glob(".tmp-*")):
                break
            time.sleep(0.001)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        names = checkpoint_names(folder)
        complete = [int(n.split("-ba")[1].split("-")[0]) for n in names if is_complete_checkpoint(folder / n)]
        assert max(complete) > newest, (delay, names)  # the run went on from the previous relaunch
        newest = max(complete)
        trainer = build_trainer(
            recipe_at(
                tmp_path, steps=4, overrides=["trainer.max_duration=400ba", "trainer.save_interval=1ba"]
            ),
            train_dataloader=data(),
        )
        assert int(trainer.state.timestamp.batch) == newest, (delay, names)
        trainer.close()
        assert not any(folder.glob(".tmp-*"))  # the killed run's temporary file is gone
        assert not any(folder.glob("ep*-ba*-rank0.pt")) or all(
            is_complete_checkpoint(folder / n) for n in checkpoint_names(folder)
        )


# ------------------------------------------------------------------------------------------- non-finite loss


class PoisonWeights(Callback):
    """Makes the model produce NaN from batch ``at`` (1-based) on."""

    def __init__(self, at: int) -> None:
        self.at = at

    def before_forward(self, state, logger):
        if int(state.timestamp.batch) + 1 == self.at:
            with torch.no_grad():
                state.model.model.model.final_norm.weight.fill_(float("nan"))


def test_a_nan_loss_stops_training_naming_the_batch_and_no_nan_checkpoint_is_saved(tmp_path):
    recipe = recipe_at(tmp_path, steps=4, interval="1ba")
    trainer = build_trainer(recipe, train_dataloader=data(), callbacks=[PoisonWeights(3)])
    with pytest.raises(NonFiniteLossError, match="not finite at batch 3"):
        trainer.fit()
    trainer.close()
    folder = tmp_path / "ckpt"
    assert checkpoint_names(folder) == ["ep0-ba1-rank0.pt", "ep0-ba2-rank0.pt"]
    for name in checkpoint_names(folder):
        model = torch.load(folder / name, weights_only=False)["state"]["model"]
        assert all(torch.isfinite(v).all() for v in model.values()), name


def test_allow_nonfinite_loss_trains_on(tmp_path):
    recipe = recipe_at(tmp_path, steps=4, overrides=["trainer.allow_nonfinite_loss=true"])
    trainer = build_trainer(recipe, train_dataloader=data(), callbacks=[PoisonWeights(3)])
    trainer.fit()
    trainer.close()
    assert int(trainer.state.timestamp.batch) == 4
