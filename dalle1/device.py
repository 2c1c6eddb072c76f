"""Where a model runs and in which precision: one answer for training and for sampling."""

from __future__ import annotations

import contextlib
import functools
import warnings

import torch


def pick_device(name: str = "auto") -> torch.device:
    """auto: CUDA when available, else the CPU; or a torch device name (cpu, cuda, cuda:1)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` (auto, fp32, bf16) on `device`, or None for fp32.

    auto: bf16 on CUDA, fp32 on the CPU, where bf16 pays only with native bf16 instructions
    (and costs some accuracy: measure it before making it a preset's choice).
    """
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn(
            "precision bf16 on a CPU without native bf16 instructions (AVX-512 BF16, AMX): "
            "it may run several times slower than precision fp32",
            stacklevel=2,
        )
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX-512 BF16, AMX, Arm's BF16)."""
    capabilities = torch.cpu.get_capabilities()
    return any(capabilities.get(name, False) for name in ("avx512_bf16", "amx_bf16", "bf16"))


def free_memory(device: torch.device) -> int:
    """Bytes free on `device`: CUDA's free memory, or the CPU's available RAM (Linux
    /proc/meminfo; 4 GiB where it cannot be read)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as info:
            fields = dict(line.split(":", 1) for line in info)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 4 << 30


def autocast(dtype: torch.dtype | None, device: torch.device) -> contextlib.AbstractContextManager:
    """torch.autocast in `dtype`, or nothing for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
