"""Sampling speed at the paper's scale: the full-cache path of before against the windowed cache.

For the demo model and a 1280-position model (256 text + 32x32 image positions), with the
paper's sparse masks (or causal ones: --attention), 4, 32 and 512 candidates of one caption,
each path in a fresh process (so that its peak memory is its own): images/s, image tokens/s, the
time the run's FLOPs take at the matmul rate (the better of a 2048^3 matmul just before and just
after the run, in its process), the peak memory over the model's, and the KV-cache bytes per
candidate. Then the compiled decode step against the eager one (cold compile time, ms per step,
from how many candidates it pays), and, computed rather than run, the cache bytes per candidate
of larger models in bf16.

FLOPs of a run: 2 per weight per position (the blocks, and the image head at image positions)
for the caption's text once and every candidate's image positions, plus 4 d per key a query's
mask allows in each layer (its scores and its weighted sum).

    python bench/sampling_speed.py              # everything (about 15 minutes on 2 cores)
    python bench/sampling_speed.py --quick      # 4 and 32 candidates, no compile rows
    python bench/sampling_speed.py --device cuda --precision bf16 --models 1280 1280-wide
    python bench/sampling_speed.py --models 1280 --candidates 512 --no-full --precision fp32 bf16
    python bench/sampling_speed.py --quick --models 1280 --attention sparse causal \
        --candidates 4 32 512                   # the paper's masks and causal ones, no compile
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import full_cache_sampling  # noqa: E402
import torch  # noqa: E402
from transformer_speed import DEMO, LONG  # noqa: E402

from dalle1.device import pick_device  # noqa: E402
from dalle1.kv_cache import row_bytes, slot_plan  # noqa: E402
from dalle1.masks import StreamLayout, layer_masks  # noqa: E402
from dalle1.sampling import (  # noqa: E402
    SamplingConfig,
    decode_step,
    generate,
    prefill,
    sample_candidates,
)
from dalle1.transformer import DALLE, DALLEConfig  # noqa: E402

MODELS = {"demo": DEMO, "1280": LONG, "1280-wide": LONG | dict(width=1024, depth=8, heads=16)}
COMPUTED = {  # name: (text positions, grid, conv kernel, width, depth)
    "paper 12B (configs/dalle_paper.yaml)": (256, 32, 11, 3968, 64),
    "gpu256 preset (configs/dalle_gpu256.yaml)": (256, 32, 11, 1024, 24),
    "demo (configs/dalle_shapes.yaml)": (24, 8, 5, 192, 4),
}


def matmul_rate(dtype: torch.dtype, device: torch.device, size: int = 2048) -> float:
    """FLOP/s of a size^3 matmul: the machine's practical peak."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    a @ a
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, repeats = time.perf_counter(), 5 if device.type == "cpu" else 50
    for _ in range(repeats):
        a @ a
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    names = [
        line for line in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in line
    ]
    name = names[0].split(":", 1)[1].strip() if names else platform.machine()
    return f"{name}, {torch.get_num_threads()} threads"


def paths_agree(name: str, device: torch.device) -> bool:
    """Whether both paths give the same greedy codes for 4 candidates of two captions."""
    model = build(name, device)
    text = torch.randint(0, model.config.text_vocab_size, (2, model.config.text_length))
    text = text.to(device).repeat_interleave(2, dim=0)
    before = full_cache_sampling.generate(model, text, greedy=True)
    return torch.equal(before, generate(model, text, SamplingConfig(temperature=0)))


def build(name: str, device: torch.device, attention: str = "sparse") -> DALLE:
    torch.manual_seed(0)
    config = DALLEConfig(**MODELS[name], attention=attention, attention_impl="dense")
    return DALLE(config).eval().to(device)


def sampling_flops(model: DALLE, n: int) -> float:
    """Matmul FLOPs of n candidates of one caption (see the module's docstring)."""
    c, layout = model.config, model.config.layout
    weights = sum(
        m.weight.numel() for m in model.blocks.modules() if isinstance(m, torch.nn.Linear)
    )
    head = model.image_head.weight.numel()
    t, cells = c.text_length, c.grid**2
    flops = 2 * weights * (t + n * cells) + 2 * head * n * cells
    for mask in layer_masks(c.depth, c.attention):
        allowed = layout.dense_mask(mask)
        flops += 4 * c.width * (allowed[:t].sum() + n * allowed[t:].sum()).item()
    return flops


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def cache_bytes_per_candidate(model: DALLE, path: str, n: int, element: int) -> float:
    c = model.config
    if path == "full cache (before)":
        return 2 * c.depth * c.layout.length * c.width * 4  # fp32, text per candidate
    masks = layer_masks(c.depth, c.attention)
    text = 2 * c.depth * c.text_length * c.width * element  # once per batch of one caption
    return row_bytes(c.layout, masks, c.width, element) + text / n


def run_path(
    name: str, path: str, n: int, device: str, precision: str, attention: str = "sparse"
) -> dict:
    """One row of the table, in its own process."""
    device = pick_device(device)
    model = build(name, device, attention)
    text = torch.randint(0, model.config.text_vocab_size, (model.config.text_length,))
    text = text.to(device)
    generator = torch.Generator(device).manual_seed(0)
    element = 2 if precision == "bf16" or (precision == "auto" and device.type == "cuda") else 4
    dtype = torch.bfloat16 if element == 2 and path == "windowed" else torch.float32
    rate = matmul_rate(dtype, device)
    before = peak_bytes(device)
    start = time.perf_counter()
    if path == "full cache (before)":
        full_cache_sampling.sample_candidates(model, text, n, generator)
    else:
        sample_candidates(model, text, n, SamplingConfig(precision=precision), generator=generator)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    rate = max(rate, matmul_rate(dtype, device))  # the better of before and after the run
    return {
        "seconds": seconds,
        "matmul_gflops": rate / 1e9,
        "dtype": str(dtype).removeprefix("torch."),
        "peak_mib": (peak_bytes(device) - before) / 2**20,
        "cache_mib_per_candidate": cache_bytes_per_candidate(model, path, n, element) / 2**20,
        "flops": sampling_flops(model, n),
    }


def run_compile(name: str, rows: int, device: str, steps: int = 16) -> dict:
    """Cold compile time and ms per decode step, compiled against eager, for `rows` rows."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp()  # a cold compile
    device = pick_device(device)
    model = build(name, device)
    text = torch.randint(0, 100, (1, model.config.text_length), device=device)
    code = torch.randint(0, model.config.codebook_size, (rows, 1), device=device)
    compiled = torch.compile(decode_step, dynamic=False)
    times = {}
    with torch.no_grad():
        for label, step, cell in (("eager", decode_step, 1), ("compiled", compiled, 1)):
            cache = model.new_cache(rows, 1, device)
            prefill(model, text, torch.full((1, 1), model.start_token, device=device), cache)
            start = time.perf_counter()
            step(model, code, cell if label == "eager" else torch.tensor([cell]), cache)
            first = time.perf_counter() - start
            start = time.perf_counter()
            for cell in range(2, 2 + steps):
                step(model, code, cell if label == "eager" else torch.tensor([cell]), cache)
            times[label] = (time.perf_counter() - start) / steps
            times[f"{label}_first"] = first
    saving = (times["eager"] - times["compiled"]) / rows * model.config.grid**2  # s per image
    return {
        "rows": rows,
        "compile_s": times["compiled_first"] - times["eager"],
        "eager_ms": 1000 * times["eager"],
        "compiled_ms": 1000 * times["compiled"],
        "pays_after_candidates": (times["compiled_first"] / saving) if saving > 0 else None,
    }


def in_fresh_process(function, *args) -> dict:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


def computed_rows() -> dict:
    """Cache bytes per candidate in bf16, full against windowed (the paper's layer schedule)."""
    rows = {}
    for name, (text, grid, kernel, width, depth) in COMPUTED.items():
        layout, masks = StreamLayout(text, grid, kernel), layer_masks(depth, "sparse")
        full = 2 * depth * layout.length * width * 2
        image = row_bytes(layout, masks, width, 2)
        windowed = image + 2 * depth * text * width * 2  # the text kept per candidate
        sizes = {m: slot_plan(layout, m, torch.device("cpu")).size for m in set(masks)}
        rows[name] = {
            "full_mib": full / 2**20,
            "windowed_mib": windowed / 2**20,
            "share": windowed / full,
            "text_shared_mib": image / 2**20,
            "image_slots_per_layer": sizes,
        }
    return rows


def print_table(report: dict) -> None:
    print(f"\n{report['machine']}")
    print(
        "| model | candidates | path | s | images/s | image tokens/s | matmul GFLOP/s | "
        "x FLOP time | peak MiB | cache MiB / candidate |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in report["rows"]:
        print(
            f"| {r['model']} | {r['n']} | {r['path']} | {r['seconds']:.1f} | "
            f"{r['images_per_s']:.2f} | {r['image_tokens_per_s']:,.0f} | "
            f"{r['matmul_gflops']:.0f} {r['dtype']} | {r['x_flop_time']:.1f} | "
            f"{r['peak_mib']:,.1f} | {r['cache_mib_per_candidate']:.2f} |"
        )
    for r in report["compile"]:
        pays = r["pays_after_candidates"]
        print(
            f"compile, {r['rows']} rows: {r['compile_s']:.1f} s cold; {r['eager_ms']:.1f} ms "
            f"eager vs {r['compiled_ms']:.1f} ms compiled per step; pays after "
            + ("never" if pays is None else f"{pays:,.0f} candidates")
        )
    for name, r in report["computed"].items():
        print(
            f"{name}: full {r['full_mib']:,.0f} MiB, windowed {r['windowed_mib']:,.0f} MiB "
            f"({r['share']:.1%}), text once per caption {r['text_shared_mib']:,.0f} MiB per "
            f"candidate (bf16)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 and 32 candidates, no compile")
    parser.add_argument("--models", nargs="+", default=["demo", "1280"], choices=MODELS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--precision",
        nargs="+",
        default=["auto"],
        help="the windowed path's, a row each: auto, fp32, bf16 (bf16 on a CPU with avx512_bf16 "
        "or amx: e.g. --precision fp32 bf16)",
    )
    parser.add_argument(
        "--candidates", nargs="+", type=int, help="candidate counts (default 4 32 512; quick: 4 32)"
    )
    parser.add_argument(
        "--no-full", action="store_true", help="skip the full-cache path of before (slow at 512)"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="run the paths of each count this often, in turn"
    )
    parser.add_argument(
        "--attention",
        nargs="+",
        default=["sparse"],
        choices=("sparse", "causal"),
        help="the models' masks, a row each (default sparse: the paper's)",
    )
    parser.add_argument("--json", default="runs/bench/sampling_speed.json")
    args = parser.parse_args()
    device = pick_device(args.device)
    report = {
        "machine": f"{machine()}, torch {torch.__version__}",
        "greedy_codes_agree": paths_agree(args.models[0], device),
        "rows": [],
        "compile": [],
        "computed": computed_rows(),
    }
    print(f"both paths give the same greedy codes: {report['greedy_codes_agree']}")
    for name, attention in [(m, a) for m in args.models for a in args.attention]:
        counts = args.candidates or ((4, 32) if args.quick else (4, 32, 512))
        paths = [("windowed", precision) for precision in args.precision]
        if not args.no_full:
            paths.insert(0, ("full cache (before)", "fp32"))
        for n in counts:
            for path, precision in paths * args.repeat:
                row = in_fresh_process(run_path, name, path, n, args.device, precision, attention)
                cells = n * build(name, torch.device("cpu")).config.grid ** 2
                row |= {
                    "model": name if attention == "sparse" else f"{name}, {attention}",
                    "n": n,
                    "path": path if precision == "auto" else f"{path}, {precision}",
                    "images_per_s": n / row["seconds"],
                    "image_tokens_per_s": cells / row["seconds"],
                    "x_flop_time": row["seconds"] * row["matmul_gflops"] * 1e9 / row["flops"],
                }
                report["rows"].append(row)
                print(json.dumps(row), flush=True)
    if not args.quick:
        for rows in (4, 32, 512):
            report["compile"].append(in_fresh_process(run_compile, "1280", rows, args.device))
            print(json.dumps(report["compile"][-1]), flush=True)
    print_table(report)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
