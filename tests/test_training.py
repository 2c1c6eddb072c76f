"""The shared training machinery, exercised through the vqvae stage with the tiny config."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dalle1.config import load_config
from dalle1.device import autocast_dtype, cpu_has_native_bf16
from dalle1.stages.vqvae import VQVAERunConfig, VQVAEStage, train_vqvae
from dalle1.training import OptimConfig, TrainConfig, Trainer, TrainingDiverged
from dalle1.training.checkpoint import atomic_checkpoint, latest_checkpoint, list_checkpoints
from dalle1.training.muon import MuonAdamW, orthogonalize, uses_muon
from dalle1.training.optim import build_optimizer, lr_at
from pretrained import resolve_model_folder
from vqvae import DiscreteVAE

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "vqvae_tiny.yaml"


@pytest.fixture
def shapes_folder(shapes_data):
    return shapes_data


def tiny_config(run_dir, source, *overrides) -> VQVAERunConfig:
    return load_config(
        VQVAERunConfig,
        TINY_CONFIG,
        [f"train.run_dir={run_dir}", f"data.source={source}", "train.ema_decay=0.9", *overrides],
    )


def test_resume_gives_the_same_weights_as_one_run(tmp_path, shapes_folder):
    k = 4
    overrides = [
        f"train.max_steps={2 * k}",
        f"train.checkpoint_every={k}",
        "train.keep_checkpoints=5",
    ]
    overrides.append("loss.restart_dead_codes_every=3")
    one_run = train_vqvae(tiny_config(tmp_path, shapes_folder, *overrides))
    weights = {k: v.clone() for k, v in one_run.model.state_dict().items()}
    ema_weights = {k: v.clone() for k, v in one_run.parallel.ema.state_dict().items()}
    # Stop after k steps: keep only that checkpoint, then resume the same run.
    shutil.rmtree(tmp_path / "checkpoints" / f"step_{2 * k:07d}")
    resumed = train_vqvae(tiny_config(tmp_path, shapes_folder, *overrides), resume=True)
    assert resumed.step == 2 * k
    for mine, theirs in [(resumed.model, weights), (resumed.parallel.ema, ema_weights)]:
        for name, value in mine.state_dict().items():
            torch.testing.assert_close(value, theirs[name], rtol=1e-5, atol=1e-6, msg=name)


def test_checkpoints_hold_what_resume_needs_and_keep_the_last_n(tmp_path, shapes_folder):
    config = tiny_config(
        tmp_path,
        shapes_folder,
        "train.max_steps=7",
        "train.checkpoint_every=2",
        "train.keep_checkpoints=2",
    )
    train_vqvae(config)
    names = [p.name for p in list_checkpoints(tmp_path / "checkpoints")]
    assert names == ["step_0000006", "step_0000007"]
    folder = latest_checkpoint(tmp_path / "checkpoints")
    assert json.loads((folder / "state.json").read_text())["step"] == 7
    assert set(load_file(folder / "model.safetensors")) == set(
        load_file(folder / "train_weights.safetensors")
    )
    torch.load(folder / "optimizer.pt", weights_only=True)
    torch.load(folder / "rng.pt", weights_only=True)
    model = DiscreteVAE.from_pretrained(folder)
    assert model.config == config.model
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "metrics.jsonl").is_file()
    assert list((tmp_path / "previews").glob("reconstructions_*.png"))


def test_corrupt_checkpoint_stops_resume_with_a_clear_error(tmp_path, shapes_folder):
    train_vqvae(tiny_config(tmp_path, shapes_folder, "train.max_steps=2"))
    weights = latest_checkpoint(tmp_path / "checkpoints") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(ValueError, match="cannot resume from .*step_0000002"):
        train_vqvae(tiny_config(tmp_path, shapes_folder, "train.max_steps=4"), resume=True)


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path, shapes_folder):
    train_vqvae(tiny_config(tmp_path, shapes_folder, "train.max_steps=2"))
    with pytest.raises(ValueError, match="do not fit this model's config"):
        train_vqvae(
            tiny_config(tmp_path, shapes_folder, "train.max_steps=4", "model.codebook_size=64"),
            resume=True,
        )


class Images(torch.utils.data.Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, index):
        return torch.full((3, 16, 16), index / 16), "caption"


def test_nan_loss_stops_with_the_step_and_saves_nothing_corrupt(tmp_path):
    model = DiscreteVAE(load_config(VQVAERunConfig, TINY_CONFIG).model)
    config = TrainConfig(
        run_dir=str(tmp_path), max_steps=10, batch_size=4, checkpoint_every=2, tensorboard=False
    )
    trainer = Trainer(config, OptimConfig(), model, Images(), config)

    def step_fn(model, batch, step):
        loss = model(batch[0], tau=1.0).mu.mean()
        return (loss * float("nan") if step == 3 else loss), {}

    with pytest.raises(TrainingDiverged, match="at step 3"):
        trainer.fit(step_fn)
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_0000002"]
    weights = load_file(tmp_path / "checkpoints" / "step_0000002" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_lr_schedule_warms_up_then_decays():
    optim = OptimConfig(lr=1.0, final_lr=0.1, warmup_steps=10)
    assert lr_at(0, optim, 100) == pytest.approx(0.1) and lr_at(9, optim, 100) == pytest.approx(1.0)
    assert lr_at(10, optim, 100) == pytest.approx(1.0) and lr_at(100, optim, 100) == pytest.approx(
        0.1
    )
    assert lr_at(55, optim, 100) == pytest.approx(0.55)


def test_lr_schedule_restarts_each_cycle():
    optim = OptimConfig(lr=1.0, final_lr=0.1, warmup_steps=10, cycles=2)
    single = OptimConfig(lr=1.0, final_lr=0.1, warmup_steps=10)
    # the first cycle is the single-cycle schedule of half the steps, and so is the second
    for step in (0, 9, 25, 40, 49):
        assert lr_at(step, optim, 100) == pytest.approx(lr_at(step, single, 50))
        assert lr_at(50 + step, optim, 100) == pytest.approx(lr_at(step, single, 50))
    assert lr_at(49, optim, 100) < 0.11 and lr_at(60, optim, 100) == pytest.approx(1.0)
    assert lr_at(100, optim, 100) == pytest.approx(0.1)
    assert lr_at(50, OptimConfig(lr=1.0, final_lr=0.1, cycles=3), 101) == pytest.approx(
        lr_at(17, OptimConfig(lr=1.0, final_lr=0.1), 33)  # cycles of 33 steps, the last of 35
    )
    with pytest.raises(ValueError, match="cycles"):
        OptimConfig(cycles=0)
    assert lr_at(100, OptimConfig(lr=1.0, final_lr=0.1, cycles=3), 101) == pytest.approx(
        lr_at(34, OptimConfig(lr=1.0, final_lr=0.1), 35)
    )


def test_orthogonalize_brings_every_singular_value_near_one():
    for rows, columns in [(48, 12), (12, 48), (32, 32)]:
        k = min(rows, columns)
        left, right = (
            torch.linalg.qr(torch.randn(rows, k))[0],
            torch.linalg.qr(torch.randn(columns, k))[0],
        )
        matrix = left @ torch.diag(torch.logspace(-1, 1, k)) @ right.T  # singular values 0.1 .. 10
        result = orthogonalize(matrix)
        assert result.shape == (rows, columns)
        singular = torch.linalg.svdvals(result)
        assert singular.min() > 0.5 and singular.max() < 1.3, singular


def test_muon_takes_the_block_matrices_and_learns():
    model = torch.nn.ModuleDict(
        {"embed": torch.nn.Embedding(8, 16), "blocks": torch.nn.Sequential(torch.nn.Linear(16, 16))}
    )
    model["head"] = torch.nn.Linear(16, 8)
    optimizer = build_optimizer(model, OptimConfig(optimizer="muon", lr=0.02))
    assert isinstance(optimizer, MuonAdamW)
    muon = [p for group in optimizer.param_groups if group["muon"] for p in group["params"]]
    assert [p is model["blocks"][0].weight for p in muon] == [True]
    assert not uses_muon("embed.weight", model["embed"].weight)
    tokens = torch.randint(0, 8, (64,))
    targets = (3 * tokens + 1) % 8  # a permutation to learn
    losses = []
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(
            model["head"](model["blocks"](model["embed"](tokens))), targets
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_atomic_checkpoint_leaves_nothing_on_error(tmp_path):
    with pytest.raises(RuntimeError), atomic_checkpoint(tmp_path, 5, keep=2) as folder:
        (folder / "half.bin").write_bytes(b"x")
        raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


KILL_SCRIPT = """
import sys, time
from pathlib import Path
import dalle1.training.checkpoint as checkpoint
from dalle1.config import load_config
from dalle1.device import autocast_dtype, cpu_has_native_bf16
from dalle1.stages.vqvae import VQVAERunConfig, VQVAEStage, train_vqvae

saves = []
real_fsync_tree = checkpoint._fsync_tree

def slow_fsync_tree(folder):
    saves.append(folder)
    if len(saves) == 2:  # the second save: files written, not yet renamed into place
        Path(sys.argv[3]).write_text(str(folder))
        time.sleep(60)
    real_fsync_tree(folder)

checkpoint._fsync_tree = slow_fsync_tree
config = load_config(VQVAERunConfig, sys.argv[4], [
    f"train.run_dir={sys.argv[1]}", f"data.source={sys.argv[2]}", "train.max_steps=50",
    "train.checkpoint_every=2", "train.ema_decay=0.9"])
train_vqvae(config)
"""


def test_sigkill_mid_save_leaves_the_last_checkpoint_loadable(tmp_path, shapes_folder):
    marker = tmp_path / "saving"
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            KILL_SCRIPT,
            str(run_dir),
            str(shapes_folder),
            str(marker),
            str(TINY_CONFIG),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while not marker.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert marker.exists(), "the training process never reached its second save"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    half_written = Path(marker.read_text())
    assert half_written.exists() and any(half_written.iterdir())
    latest = latest_checkpoint(run_dir / "checkpoints")
    assert latest.name == "step_0000002"
    DiscreteVAE.from_pretrained(latest)
    resumed = train_vqvae(tiny_config(run_dir, shapes_folder, "train.max_steps=5"), resume=True)
    assert resumed.step == 5 and not half_written.exists()


def test_keep_best_holds_the_lowest_held_out_loss_and_readers_use_it(tmp_path, shapes_folder):
    """Held-out losses 3, 1, 2, 5 at steps 2, 4, 6, 8: best/ holds step 4's inference weights,
    a run folder resolves to it, a resumed run keeps comparing with it, --restart moves it."""
    losses = {2: 3.0, 4: 1.0, 6: 2.0, 8: 5.0, 10: 1.5, 12: 0.5}

    def held_out(model, step):
        return {"loss": losses[step]}, {}

    def train(steps: int, resume: bool = False, restart: bool = False) -> Trainer:
        config = tiny_config(
            tmp_path,
            shapes_folder,
            f"train.max_steps={steps}",
            "train.eval_every=2",
            "train.checkpoint_every=2",
            "train.keep_checkpoints=10",
        )
        stage = VQVAEStage(config, resume, restart, None)
        stage.trainer.fit(stage.step, held_out)
        return stage.trainer

    train(8)
    best = tmp_path / "best"
    assert json.loads((best / "state.json").read_text()) == {"step": 4, "loss": 1.0}
    assert resolve_model_folder(tmp_path) == best
    step_4 = load_file(tmp_path / "checkpoints" / "step_0000004" / "model.safetensors")
    for name, value in load_file(best / "model.safetensors").items():
        torch.testing.assert_close(value, step_4[name])
    DiscreteVAE.from_pretrained(tmp_path)  # a model folder like any other
    train(10, resume=True)  # 1.5 is not below 1.0
    assert json.loads((best / "state.json").read_text())["step"] == 4
    train(12, resume=True)
    assert json.loads((best / "state.json").read_text())["step"] == 12
    train(2, restart=True)
    assert json.loads((best / "state.json").read_text())["step"] == 2
    aside = next(tmp_path.glob("checkpoints_replaced_*"))
    assert json.loads((aside / "best" / "state.json").read_text())["step"] == 12


def test_keep_best_off_writes_no_best_folder(tmp_path, shapes_folder):
    train_vqvae(tiny_config(tmp_path, shapes_folder, "train.max_steps=4", "train.keep_best=false"))
    assert not (tmp_path / "best").exists()
    assert resolve_model_folder(tmp_path) == latest_checkpoint(tmp_path / "checkpoints")


def test_bf16_on_a_cpu_without_native_bf16_warns(monkeypatch):
    cpu = torch.device("cpu")
    for native in (False, True):
        capabilities = {"avx512_bf16": native}
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda c=capabilities: c)
        cpu_has_native_bf16.cache_clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert autocast_dtype("bf16", cpu) is torch.bfloat16
            assert autocast_dtype("auto", cpu) is None  # fp32 on the CPU: nothing to warn of
        warned = [w for w in caught if "without native bf16" in str(w.message)]
        assert len(warned) == (0 if native else 1)
    cpu_has_native_bf16.cache_clear()
