"""Memory and speed per process of DDP vs FSDP (`train.parallel`), through the shared Trainer.

Each process trains the 1280-position transformer of bench/transformer_speed.py (LONG: 256 text
+ 32x32 image positions, width 256, 4 layers) on random tokens for a few steps, first under DDP
and then under FSDP, and reports what one process holds after the steps: parameters, gradients and
AdamW moments (local shards under FSDP), and the seconds per step. Start it with torchrun:

    torchrun --standalone --nproc_per_node=2 bench/parallel_memory.py [--steps 4] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transformer_speed import LONG  # noqa: E402

from dalle1.training import OptimConfig, TrainConfig, Trainer  # noqa: E402
from dalle1.training.distributed import distributed_context, init_distributed  # noqa: E402
from dalle1.transformer import DALLE, DALLEConfig  # noqa: E402


def local_bytes(tensors) -> int:
    """Bytes this process holds for `tensors` (a DTensor counts its local shard only)."""
    total = 0
    for t in tensors:
        t = t.to_local() if hasattr(t, "to_local") else t
        total += t.numel() * t.element_size()
    return total


def measure(parallel: str, steps: int, batch_size: int) -> dict:
    config = DALLEConfig(**LONG, attention_impl="dense")
    torch.manual_seed(0)
    model = DALLE(config)
    n = batch_size * (steps + 1)
    text = torch.randint(config.text_vocab_size, (n, config.text_length))
    codes = torch.randint(config.codebook_size, (n, config.grid**2))
    with tempfile.TemporaryDirectory() as run_dir:
        train = TrainConfig(
            run_dir=run_dir,
            max_steps=steps + 1,  # the first step (optimizer state created) is not timed
            batch_size=batch_size,
            log_every=1,
            eval_every=0,
            checkpoint_every=10_000,
            tensorboard=False,
            parallel=parallel,
        )
        trainer = Trainer(train, OptimConfig(lr=1e-4), model, TensorDataset(text, codes), config)
        trainer.save = lambda: None  # nothing to keep
        times = []

        def step_fn(model, batch, step):
            times.append(time.perf_counter())
            return model(*batch).loss, {}

        trainer.fit(step_fn)
        params = list(trainer.model.parameters())
        moments = [t for s in trainer.optimizer.state.values() for t in s.values() if t.ndim]
        return {
            "parallel": parallel,
            "parameters_mib": local_bytes(params) / 2**20,
            "gradients_mib": local_bytes(p.grad for p in params if p.grad is not None) / 2**20,
            "adam_moments_mib": local_bytes(moments) / 2**20,
            "s_per_step": (times[-1] - times[0]) / (len(times) - 1),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps per mode")
    parser.add_argument("--batch-size", type=int, default=4, help="global batch")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    init_distributed()
    rank, world = distributed_context()
    if world < 2:
        parser.error("start it with torchrun --nproc_per_node=N (N >= 2)")
    results = [measure(mode, args.steps, args.batch_size) for mode in ("ddp", "fsdp")]
    if rank != 0:
        return
    params = sum(p.numel() for p in DALLE(DALLEConfig(**LONG)).parameters())
    print(f"{params / 1e6:.1f}M parameters, {world} processes, {platform.machine()}")
    print("parallel  parameters  gradients  AdamW moments  s/step   (MiB per process)")
    for r in results:
        print(
            f"{r['parallel']:8s} {r['parameters_mib']:10.1f} {r['gradients_mib']:10.1f} "
            f"{r['adam_moments_mib']:14.1f} {r['s_per_step']:7.2f}"
        )
    if args.json:
        report = {"processes": world, "parameters": params, "results": results}
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
