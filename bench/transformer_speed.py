"""Transformer speed on this machine: training tokens/s against matmul peak (sampling:
bench/sampling_speed.py).

- matmul: a 2048^3 matmul in fp32 and bf16, the machine's practical peak;
- train: tokens/s of forward + backward + AdamW for the demo model (configs/dalle_shapes.yaml
  with the demo's sizes) and for a 1280-position model (256 text + 32x32 image, small width),
  sparse (the paper's masks) on the dense and the banded path vs plain causal, fp32 and bf16
  autocast, the model FLOPs/s that gives and the FLOPs each path actually does;
- crossover: forward + backward of the sparse model at growing lengths, dense vs banded path
  (what `attention_impl=auto` should take on the CPU: dalle1/transformer.py attention_path);
- optimizer: the demo model's step with AdamW and with Muon (optim.optimizer=muon), alternated,
  the best of three each;
- attention: one forward of the 1280-position model, FlexAttention vs the dense masked path.

Model FLOPs per position: 6 N for the N weights of the blocks and of the output head the
position uses, plus the attention matmuls as if causal (12 d per earlier position). Done FLOPs:
the same weights, plus the attention matmuls over the key positions the path really scores
(dense: all L; banded: the text and its band; causal: the earlier ones).

    python bench/transformer_speed.py            # everything (a few minutes on 2 cores)
    python bench/transformer_speed.py --quick    # fewer steps
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from dalle1.attention import make_band
from dalle1.masks import layer_masks
from dalle1.training.optim import OptimConfig, build_optimizer
from dalle1.transformer import DALLE, DALLEConfig

DEMO = dict(
    text_length=24,
    text_vocab_size=400,
    grid=8,
    codebook_size=512,
    width=192,
    depth=4,
    heads=6,
    conv_kernel=5,
)
LONG = dict(
    text_length=256,
    text_vocab_size=16384,
    grid=32,
    codebook_size=8192,
    width=256,
    depth=4,
    heads=4,
    conv_kernel=11,
)


def matmul_rate(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def flops_per_token(model: DALLE) -> float:
    """Matmul FLOPs per stream position: the blocks' weights, the head its part uses, and the
    attention scores and sums over the earlier positions (counted as causal)."""
    c = model.config
    blocks = sum(p.numel() for n, p in model.named_parameters() if n.startswith("blocks"))
    heads = (
        (c.text_length - 1) * model.text_head.weight.numel()
        + c.grid**2 * model.image_head.weight.numel()
    ) / c.layout.length
    attention = c.depth * 2 * c.width * c.layout.length  # 4 d per earlier position, causal
    return 6 * (blocks + heads) + 3 * attention


def done_flops_per_token(model: DALLE, path: str) -> float:
    """Matmul FLOPs per position that a training step really does: the weights as in
    flops_per_token, and the attention over the key positions each layer's path scores."""
    c, layout = model.config, model.config.layout
    length, text = layout.length, layout.text_length
    keys = 0.0  # scored (query, key) pairs over the layers
    for mask in layer_masks(c.depth, c.attention):
        if mask == "causal":
            keys += length * (length + 1) / 2
        elif path == "banded":
            band = make_band(layout, mask, torch.device("cpu"))
            keys += text * text + layout.image_length * band.allowed.shape[-1]
        else:
            keys += length * length
    blocks_and_heads = flops_per_token(model) - 3 * c.depth * 2 * c.width * length
    return blocks_and_heads + 3 * 4 * c.width * keys / length


def train_speed(
    config: dict,
    attention: str,
    precision: str,
    batch: int,
    steps: int,
    optimizer="adamw",
    path: str = "dense",
) -> dict:
    torch.manual_seed(0)
    model = DALLE(DALLEConfig(**config, attention=attention, attention_impl=path))
    optimizer = build_optimizer(model, OptimConfig(optimizer=optimizer, lr=1e-4))
    c = model.config
    text = torch.randint(0, c.total_text_vocab, (batch, c.text_length))
    codes = torch.randint(0, c.codebook_size, (batch, c.grid**2))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    for step in range(steps + 1):
        if step == 1:  # the first step warms up
            start = time.perf_counter()
        with autocast:
            loss = model(text, codes).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    seconds = (time.perf_counter() - start) / steps
    tokens = batch * c.layout.length / seconds
    return {
        "tokens_per_s": tokens,
        "model_flops_per_s": tokens * flops_per_token(model),
        "done_flops_per_token": done_flops_per_token(model, path),
        "final_loss": loss.item(),
    }


def crossover(steps: int) -> list[dict]:
    """Training tokens/s of the sparse model on the dense and the banded path, by length."""
    rows = []
    for text, grid in ((24, 8), (64, 12), (64, 16), (128, 20), (256, 32)):
        config = LONG | {"text_length": text, "grid": grid}
        row = {"length": text + grid * grid}
        for path in ("dense", "banded"):
            row[path] = train_speed(config, "sparse", "fp32", 2, steps, path=path)["tokens_per_s"]
        rows.append(row)
        print(
            f"crossover, {row['length']:4d} positions, tokens/s: dense {row['dense']:6.0f}, "
            f"banded {row['banded']:6.0f} ({row['banded'] / row['dense']:.2f}x)"
        )
    return rows


@torch.no_grad()
def attention_speed(impl: str, attention: str, batch: int = 2, repeats: int = 3) -> float:
    torch.manual_seed(0)
    model = DALLE(DALLEConfig(**LONG, attention=attention, attention_impl=impl)).eval()
    c = model.config
    text = torch.randint(0, c.total_text_vocab, (batch, c.text_length))
    codes = torch.randint(0, c.codebook_size, (batch, c.grid**2))
    model.image_logits(text, codes)  # compiles FlexAttention on the first call
    start = time.perf_counter()
    for _ in range(repeats):
        model.image_logits(text, codes)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps")
    parser.add_argument("--json", default="runs/bench/transformer_speed.json")
    args = parser.parse_args()
    steps = 3 if args.quick else 8
    report = {
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    rates = {"fp32": matmul_rate(torch.float32), "bf16": matmul_rate(torch.bfloat16)}
    report["matmul_flops_per_s"] = rates
    print(
        f"matmul 2048^3: fp32 {rates['fp32'] / 1e9:.0f} GFLOP/s, bf16 "
        f"{rates['bf16'] / 1e9:.0f} GFLOP/s"
    )

    report["train"] = []
    runs = [("demo (88 positions)", DEMO, 32, a, "dense") for a in ("sparse", "causal")]
    runs += [("1280 positions", LONG, 2, "sparse", path) for path in ("dense", "banded")]
    runs += [("1280 positions", LONG, 2, "causal", "dense")]
    for name, config, batch, attention, path in runs:
        for precision in ("fp32", "bf16"):
            row = train_speed(config, attention, precision, batch, steps, path=path)
            row |= {
                "model": name,
                "attention": attention,
                "path": path,
                "precision": precision,
                "share_of_matmul_peak": row["model_flops_per_s"] / rates[precision],
            }
            report["train"].append(row)
            print(
                f"train {name:>20} {attention:>6} {path:>6} {precision}: "
                f"{row['tokens_per_s']:8.0f} tokens/s, "
                f"{row['model_flops_per_s'] / 1e9:5.1f} GFLOP/s "
                f"({row['share_of_matmul_peak']:.0%} of matmul), "
                f"{row['done_flops_per_token'] / 1e6:.0f} MFLOP done per position, "
                f"loss {row['final_loss']:.4f}"
            )
    report["crossover"] = crossover(steps)

    best = {"adamw": 0.0, "muon": 0.0}
    for _ in range(3):
        for name in best:
            rate = train_speed(DEMO, "causal", "fp32", 32, steps, name)["tokens_per_s"]
            best[name] = max(best[name], rate)
    report["optimizer_tokens_per_s"] = best
    print(f"train demo causal fp32, tokens/s: AdamW {best['adamw']:.0f}, Muon {best['muon']:.0f}")

    report["attention_forward_1280_s"] = {}
    for impl, attention in (("flex", "sparse"), ("dense", "sparse"), ("dense", "causal")):
        seconds = attention_speed(impl, attention)
        report["attention_forward_1280_s"][f"{impl} {attention}"] = seconds
        print(f"forward, 1280 positions, batch 2, {impl} {attention}: {seconds * 1000:.0f} ms")

    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
