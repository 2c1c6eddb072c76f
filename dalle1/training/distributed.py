"""Training on many processes: DDP (every rank holds the whole model) or FSDP (each rank holds a
shard of the parameters, gradients and optimizer state), the EMA copy, and checkpoints that do not
depend on either.

`torchrun --nproc_per_node=N train.py STAGE ...` starts N processes for any stage;
`train.parallel` picks `ddp` or `fsdp`; `init_distributed` is the one place that joins the
process group (the Trainer calls it). FSDP (torch's `fully_shard`) shards each transformer block
and then the rest of the model, so a model whose weights, gradients and AdamW moments do not fit
one device trains across several.

Checkpoints always hold whole tensors keyed by parameter name, gathered onto rank 0's CPU memory
and written by rank 0 only; on resume rank 0 reads them and sends each rank its part. So a run
saved under FSDP on 8 processes resumes on 1, or under DDP, and the other way round.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger(__name__)

PARALLEL_MODES = ("ddp", "fsdp")


def init_distributed() -> None:
    """Join the process group when started by torchrun (WORLD_SIZE > 1): NCCL on CUDA, else gloo."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)


def exit_process(code: int) -> NoReturn:
    """End a train.py process with `code`; under torchrun, leave the process group first and
    skip the interpreter's shutdown.

    A gloo worker thread may still be freeing the tensors of the last collective (an FSDP
    gather) when the main thread returns; if the interpreter is shutting down by then, that
    thread cannot take the GIL and the process aborts ("terminate called without an active
    exception") after all its work is done. Logs and output are flushed first.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def distributed_context() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@dataclass
class ParallelModels:
    """The modules of one training run, placed and wrapped for its processes."""

    model: nn.Module  # the model being optimised (sharded in place under FSDP)
    train_model: nn.Module  # what a step calls: the DDP wrapper under DDP, else `model`
    ema: nn.Module | None  # the parameter EMA copy (sharded like `model`), or None
    sharded: bool  # FSDP: every rank must take part in evaluation and checkpoints


def wrap_for_training(
    model: nn.Module, parallel: str, ema_decay: float, device: torch.device
) -> ParallelModels:
    """The EMA copy (when ema_decay > 0), FSDP sharding or DDP, and the move to `device`."""
    rank, world = distributed_context()
    ema = copy.deepcopy(model).eval().requires_grad_(False) if ema_decay > 0 else None
    sharded = world > 1 and parallel == "fsdp"
    if sharded:  # before moving: only each rank's shards go to its device
        for module in (model, ema):
            if module is not None:
                shard(module)
    model = model.to(device)
    if ema is not None:
        ema.to(device)
    train_model = model
    if world > 1 and not sharded:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        train_model = DistributedDataParallel(model, device_ids=ids)
    if world > 1 and rank == 0:
        logger.info("training on %d processes (%s)", world, "FSDP, sharded" if sharded else "DDP")
    return ParallelModels(model, train_model, ema, sharded)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """ema <- decay * ema + (1 - decay) * model, with the decay warmed up over the first steps
    (early weights are forgotten fast); depends on the step only, so a resume continues it."""
    decay = min(decay, (1 + step) / (10 + step))
    for averaged, live in zip(ema.parameters(), model.parameters(), strict=True):
        averaged.lerp_(live, 1 - decay)
    for averaged, live in zip(ema.buffers(), model.buffers(), strict=True):
        averaged.copy_(live)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In place: the sum over all processes (a no-op on one)."""
    if distributed_context()[1] > 1:
        dist.all_reduce(tensor)
    return tensor


def all_gather_cat(tensor: torch.Tensor, with_grad: bool = False) -> torch.Tensor:
    """Every process's (n_rank, ...) tensor, concatenated in rank order (itself on one process).

    The n_rank may differ. with_grad: gradients flow back to each process's own rows (CLIP's
    contrastive loss over the global batch).
    """
    world = distributed_context()[1]
    if world == 1:
        return tensor
    sizes = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([len(tensor)], device=tensor.device))
    sizes = [int(n) for n in sizes]
    padded = torch.zeros((max(sizes), *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded = torch.cat([tensor, padded[len(tensor) :]]).contiguous()
    if with_grad:
        import torch.distributed.nn.functional as dist_nn

        parts = list(dist_nn.all_gather(padded))
    else:
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])


def shard(model: nn.Module) -> None:
    """FSDP in place: each of `model.blocks` is one unit, the rest of the model the root unit."""
    from torch.distributed.fsdp import fully_shard

    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(
            f"train.parallel=fsdp shards a model's transformer blocks (a ModuleList named "
            f"`blocks`); {type(model).__name__} has none. Use train.parallel=ddp."
        )
    for block in blocks:
        fully_shard(block)
    fully_shard(model)


@contextlib.contextmanager
def gathered(model: nn.Module) -> Iterator[None]:
    """Every parameter of a sharded model whole on every rank while inside (a no-op otherwise).

    For evaluation and sampling, which call the model's parts directly rather than through
    forward(); every rank must enter, since gathering is a collective.
    """
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.set_reshard_after_forward(False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True)


def _options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    world = distributed_context()[1]
    # Whole tensors on rank 0's CPU only (others get {}); on one process: the plain state.
    return StateDictOptions(full_state_dict=True, cpu_offload=world > 1, **kwargs)


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Whole CPU tensors by name on rank 0 ({} on the others). Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(model, options=_options())
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer state keyed by parameter name, whole, on rank 0. Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options())


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load whole tensors read by rank 0 ({} elsewhere) into each rank's model or shard."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    world = distributed_context()[1]
    set_model_state_dict(model, state, options=_options(broadcast_from_rank0=world > 1))


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    world = distributed_context()[1]
    set_optimizer_state_dict(
        model, optimizer, state, options=_options(broadcast_from_rank0=world > 1)
    )
