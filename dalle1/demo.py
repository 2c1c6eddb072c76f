"""`python train.py demo`: every stage on the shapes data, then samples, completion, benchmark.

    OUT/data/{train,single,pair,novel}   the scenes (judge-checked)
    OUT/tokenizer.model                  BPE over the training captions
    OUT/vqvae, OUT/clip, OUT/dalle       runs of configs/{vqvae,clip,dalle}_shapes.yaml
    OUT/cache/{train,single}             token caches
    OUT/samples/*.png                    reranked grids for fixed captions (two held-out pairs)
    OUT/completion.png                   a held-out scene's top half, completed
    OUT/report.json                      what each stage took and the benchmark figures

A second run reuses every finished stage and resumes an interrupted one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from dalle1.config import load_config, save_config
from dalle1.data import iter_captions
from dalle1.data.transforms import read_image
from dalle1.images import make_grid, save_image
from dalle1.pipeline import Pipeline
from dalle1.shapes import SUITES, evaluate_suite, judge_folder
from dalle1.shapes.scenes import ShapesConfig, write_split
from dalle1.stages.clip import CLIPRunConfig, train_clip
from dalle1.stages.dalle import DALLERunConfig, train_dalle
from dalle1.stages.encode import encode_dataset
from dalle1.stages.vqvae import VQVAERunConfig, train_vqvae
from dalle1.tokenizer import train_tokenizer
from dalle1.training.checkpoint import latest_checkpoint

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

SPLIT_SIZES = {"train": 8000, "single": 200, "pair": 200, "novel": 200}
TOKENIZER_VOCAB = 400  # the shapes captions use about 40 words; 256 ids are byte fallback
SAMPLES, KEEP = 32, 8  # candidates per caption and the best kept in the grids
EVAL_SCENES, EVAL_CANDIDATES, EVAL_KEEP = 50, 16, 4


def finished(run_dir: Path, max_steps: int) -> bool:
    latest = latest_checkpoint(run_dir / "checkpoints")
    return (
        latest is not None and json.loads((latest / "state.json").read_text())["step"] >= max_steps
    )


class Demo:
    """The demo's run folder: each stage is done once, timed, and recorded in report.json."""

    def __init__(self, out: Path, size: int, holdout: str) -> None:
        self.out, self.size = out, size
        self.pairs = [s for s in holdout.split(",") if s]
        self.data, self.tokenizer = out / "data", out / "tokenizer.model"
        out.mkdir(parents=True, exist_ok=True)
        self.report_path = out / "report.json"
        self.report = json.loads(self.report_path.read_text()) if self.report_path.is_file() else {}
        self.timings = self.report.setdefault("seconds", {})

    def stage(self, name: str, work) -> None:
        """Run work() (True: it did something, False: all was there) and record its time."""
        start = time.perf_counter()
        did = work()
        if did or name not in self.timings:
            self.timings[name] = round(time.perf_counter() - start, 1)
        self.report_path.write_text(json.dumps(self.report, indent=1))
        print(f"[demo] {name}: {'done' if did else 'reused'} ({self.timings[name]} s)", flush=True)

    def make_data(self) -> bool:
        made = False
        for split, n in SPLIT_SIZES.items():
            folder = self.data / split
            if (folder / f"{split}_config.yaml").is_file():
                continue
            values = {"out": str(folder), "n": n, "size": self.size, "split": split}
            config = load_config(ShapesConfig, None, (), values | {"holdout": self.pairs})
            write_split(config)
            accuracy = judge_folder(folder, progress=False)["accuracy"]
            self.report.setdefault("data", {})[split] = {"n": n, "judge_accuracy": accuracy}
            save_config(config, folder / f"{split}_config.yaml")  # last: marks the split done
            made = True
        return made

    def make_tokenizer(self) -> bool:
        if self.tokenizer.is_file():
            return False
        train_tokenizer(iter_captions(str(self.data / "train")), TOKENIZER_VOCAB, self.tokenizer)
        return True

    def encode(self) -> bool:
        done = False
        for split in ("train", "single"):
            cache = self.out / "cache" / split
            if not (cache / "meta.json").is_file():
                encode_dataset(self.out / "vqvae", str(self.data / split), cache)
                done = True
        return done

    def trained(self, kind: str, config_cls, train_fn, overrides: list[str]):
        """The work of a training stage: configs/KIND_shapes.yaml into OUT/KIND, unless done."""

        def work() -> bool:
            args = [*overrides, f"train.run_dir={self.out / kind}"]
            config = load_config(config_cls, CONFIGS / f"{kind}_shapes.yaml", args)
            if finished(Path(config.train.run_dir), config.train.max_steps):
                return False
            train_fn(config, resume=True)
            return True

        return work


def run_demo(
    out: str | Path,
    size: int = 64,
    holdout: str = "red:triangle,blue:circle",
    evaluate: bool = True,
) -> dict:
    demo = Demo(Path(out), size, holdout)
    out, data, tokenizer = demo.out, demo.data, demo.tokenizer
    demo.stage("data", demo.make_data)
    demo.stage("tokenizer", demo.make_tokenizer)
    images = [f"data.source={data / 'train'}", f"model.image_size={size}"]
    vqvae_args = [*images, f"data.eval_source={data / 'single'}"]
    demo.stage("vqvae", demo.trained("vqvae", VQVAERunConfig, train_vqvae, vqvae_args))
    demo.stage("token cache", demo.encode)
    clip_args = [*images, f"data.eval_source={data / 'pair'}", f"data.text_tokenizer={tokenizer}"]
    demo.stage("clip", demo.trained("clip", CLIPRunConfig, train_clip, clip_args))
    samples = [read_caption(data / s, i) for s in ("single", "pair", "novel") for i in (0, 1)]
    dalle_args = [
        f"data.source={out / 'cache' / 'train'}",
        f"data.eval_source={out / 'cache' / 'single'}",
        f"data.image_tokenizer={out / 'vqvae'}",
        f"data.text_tokenizer={tokenizer}",
        f"data.clip={out / 'clip'}",
        f"data.sample_captions={json.dumps(samples[::2])}",
    ]
    demo.stage("dalle", demo.trained("dalle", DALLERunConfig, train_dalle, dalle_args))
    demo.stage("samples", lambda: write_samples(out, samples))
    if evaluate:
        demo.stage("eval", lambda: run_benchmark(out, demo.report))
    print(
        f"[demo] grids in {out / 'samples'}, completion {out / 'completion.png'}, "
        f"report {demo.report_path}"
    )
    return demo.report


def read_caption(folder: Path, index: int) -> str:
    return sorted(folder.glob("*.txt"))[index].read_text().splitlines()[0]


def write_samples(out: Path, captions: list[str]) -> bool:
    """Reranked grids for each caption and one completion, best first."""
    if (out / "completion.png").is_file():
        return False
    pipe = Pipeline.load(out / "dalle")
    lines = []
    for i, caption in enumerate(captions):
        images, _ = pipe.sample(caption, SAMPLES, KEEP, seed=i)
        path = out / "samples" / f"{i:02d}.png"
        save_image(make_grid(images, columns=KEEP), path)
        lines.append(f"{path.name}: {caption}")
    (out / "samples" / "captions.txt").write_text("\n".join(lines) + "\n")

    scene = sorted((out / "data" / "pair").glob("*.png"))[0]
    caption = scene.with_suffix(".txt").read_text().splitlines()[0]
    image = read_image(scene, pipe.image_tokenizer.image_size)
    rows = pipe.dalle.config.grid // 2
    images, _ = pipe.complete(image, rows, caption, n=SAMPLES, keep=KEEP)
    grid = make_grid(torch.cat([image[None], images]), columns=KEEP + 1)
    save_image(grid, out / "completion.png")
    (out / "completion.txt").write_text(f"{scene.name}: {caption} (top {rows} code rows kept)\n")
    return True


def run_benchmark(out: Path, report: dict) -> bool:
    if "benchmark" in report:
        return False
    pipe = Pipeline.load(out / "dalle")
    results = {}
    for suite in SUITES:
        folder = out / "data" / ("pair" if suite == "completion" else suite)
        results[suite] = evaluate_suite(
            pipe, suite, folder, EVAL_SCENES, EVAL_CANDIDATES, EVAL_KEEP, save_dir=out / "eval"
        )
        first, best = results[suite]["first"]["accuracy"], results[suite]["reranked"]["accuracy"]
        print(
            f"[demo] {suite:>10}: first candidate {first:.1%}, CLIP top-1 of "
            f"{EVAL_CANDIDATES} {best:.1%}",
            flush=True,
        )
    report["benchmark"] = results
    return True
