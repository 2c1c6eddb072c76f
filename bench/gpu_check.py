"""One prepared GPU check (bench/gpu_check.sh): the transformer's GPU paths, timed and checked.

- train: the gpu256 preset's transformer (256 text + 32x32 image positions, width 1024, depth
  24, K = 8192, bf16 autocast, activation checkpointing) on random tokens, its sparse masks on
  FlexAttention, on the banded path and on the dense path: tokens/s, model FLOP utilisation
  against the card's bf16 peak (and against a measured bf16 matmul), peak memory;
- sample: 512 candidates of one caption from that model, with and without the compiled decode
  step (CUDA graphs): images/s and the time over the run's FLOP time at the measured matmul rate;
- exact: a tiny model on the device against the CPU (fp32): greedy codes equal, each attention
  path's loss within 1e-4 of the CPU's dense path.

    python bench/gpu_check.py [--tiny] [--out runs/gpu_check]

--tiny: the same at tiny sizes (on the CPU: FlexAttention has no backward there and compiling
the decode step is skipped), which CI runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from sampling_speed import machine, matmul_rate, sampling_flops  # noqa: E402
from transformer_speed import flops_per_token  # noqa: E402

from dalle1.device import pick_device  # noqa: E402
from dalle1.sampling import SamplingConfig, generate, sample_candidates  # noqa: E402
from dalle1.transformer import DALLE, DALLEConfig  # noqa: E402

GPU256 = dict(text_length=256, text_vocab_size=16384, grid=32, codebook_size=8192, width=1024)
GPU256 |= dict(depth=24, heads=16, conv_kernel=11, activation_checkpointing=True)
TINY = dict(text_length=6, text_vocab_size=20, grid=4, codebook_size=16, width=32, depth=5)
TINY |= dict(heads=4, conv_kernel=3)
# Dense bf16 tensor-core peaks (no sparsity), by the first name that the device's name holds.
PEAK_BF16 = {
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
}


def card_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model(config: dict, device: torch.device, path: str = "dense") -> DALLE:
    torch.manual_seed(0)
    return DALLE(DALLEConfig(**config, attention="sparse", attention_impl=path)).to(device)


def random_tokens(net: DALLE, batch: int, device: torch.device, seed: int = 0):
    c, g = net.config, torch.Generator().manual_seed(seed)
    text = torch.randint(0, c.total_text_vocab, (batch, c.text_length), generator=g)
    codes = torch.randint(0, c.codebook_size, (batch, c.grid**2), generator=g)
    return text.to(device), codes.to(device)


def train_row(config: dict, path: str, device: torch.device, batch: int, steps: int) -> dict:
    """Tokens/s, FLOP utilisation and peak memory of forward + backward + AdamW."""
    net = model(config, device, path)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=device.type == "cuda")
    text, codes = random_tokens(net, batch, device)
    bf16 = device.type == "cuda"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(steps + 2):  # two warm-up steps (FlexAttention compiles on the first)
        if step == 2:
            synchronize(device)
            start = time.perf_counter()
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            loss = net(text, codes).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize(device)
    tokens = batch * net.config.layout.length * steps / (time.perf_counter() - start)
    row = {"path": path, "tokens_per_s": tokens, "model_flops_per_s": tokens * flops_per_token(net)}
    if device.type == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


@torch.no_grad()
def sample_row(config: dict, device: torch.device, n: int, compiled: bool, rate: float) -> dict:
    """n candidates of one caption: images/s and the time over their FLOP time."""
    net = model(config, device).eval()
    text, _ = random_tokens(net, 1, device)
    settings = SamplingConfig(compile="yes" if compiled else "no", batch_size=n)
    generator = torch.Generator(device).manual_seed(0)
    # warm-up; the compiled step is compiled (and its CUDA graph recorded) for n rows
    sample_candidates(net, text[0], n if compiled else min(n, 8), settings, generator=generator)
    synchronize(device)
    start = time.perf_counter()
    sample_candidates(net, text[0], n, settings, generator=generator)
    synchronize(device)
    seconds = time.perf_counter() - start
    flop_seconds = sampling_flops(net, n) / rate
    return {
        "compiled": compiled,
        "candidates": n,
        "seconds": seconds,
        "images_per_s": n / seconds,
        "x_flop_time": seconds / flop_seconds,
    }


def exactness(device: torch.device) -> dict:
    """A tiny fp32 model on the device against the CPU's dense path."""
    cpu = model(TINY, torch.device("cpu")).eval()
    text, codes = random_tokens(cpu, 3, torch.device("cpu"), seed=1)
    with torch.no_grad():
        want_loss = cpu(text, codes).loss.item()
        want_codes = generate(cpu, text, SamplingConfig(temperature=0, precision="fp32"))
    paths = ["dense", "banded"] + ["flex"] * (device.type == "cuda")
    report = {}
    for path in paths:
        net = model(TINY, device, path).eval()
        with torch.no_grad():
            loss = net(text.to(device), codes.to(device)).loss.item()
            greedy = SamplingConfig(temperature=0, precision="fp32")
            drawn = generate(net, text.to(device), greedy).cpu()
        report[path] = {
            "loss_difference": abs(loss - want_loss),
            "codes_equal": bool(torch.equal(drawn, want_codes)),
        }
    report["pass"] = all(r["loss_difference"] < 1e-4 and r["codes_equal"] for r in report.values())
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (CI, on the CPU)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="runs/gpu_check")
    args = parser.parse_args()
    device = pick_device(args.device)
    config, batch, steps, n = (TINY, 4, 2, 8) if args.tiny else (GPU256, 32, 8, 512)
    rate = matmul_rate(torch.bfloat16 if device.type == "cuda" else torch.float32, device)
    peak = card_peak(device)
    report = {"device": machine(), "torch": torch.__version__, "matmul_flops_per_s": rate}
    report["card_bf16_peak"] = peak
    paths = ["flex"] * (device.type == "cuda") + ["banded", "dense"]
    report["train"] = [train_row(config, path, device, batch, steps) for path in paths]
    compiled = [True] * (device.type == "cuda") + [False]
    report["sample"] = [sample_row(config, device, n, c, rate) for c in compiled]
    report["exact"] = exactness(device)

    print(f"## bench/gpu_check.py on {report['device']}, torch {torch.__version__}")
    print(
        f"measured matmul: {rate / 1e12:.1f} TFLOP/s; card bf16 peak: "
        f"{f'{peak / 1e12:.0f} TFLOP/s' if peak else 'unknown'}\n"
    )
    print("| part | path | tokens/s, images/s | of bf16 peak / matmul | memory, x FLOP time |")
    print("|---|---|---|---|---|")
    for row in report["train"]:
        utilisation = f"{row['model_flops_per_s'] / peak:.0%}" if peak else "-"
        memory = f"{row['peak_gib']:.1f} GiB" if "peak_gib" in row else "-"
        print(
            f"| train | {row['path']} | {row['tokens_per_s']:,.0f} tokens/s | "
            f"{utilisation} / {row['model_flops_per_s'] / rate:.0%} | {memory} |"
        )
    for row in report["sample"]:
        kind = "compiled decode step" if row["compiled"] else "eager decode step"
        print(
            f"| sample {row['candidates']} | {kind} | {row['images_per_s']:.2f} images/s | - | "
            f"{row['x_flop_time']:.1f}x |"
        )
    exact = report["exact"]
    details = ", ".join(
        f"{path}: loss {r['loss_difference']:.1e}, codes "
        + ("equal" if r["codes_equal"] else "DIFFER")
        for path, r in exact.items()
        if path != "pass"
    )
    print(f"| exact | against the CPU | {'pass' if exact['pass'] else 'FAIL'} | {details} | - |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
