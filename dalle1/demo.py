"""`python train.py demo`: the shapes data, then `train.py all` on it, then the benchmark.

    OUT/data/{train,single,pair,novel}   the scenes (the evaluation splits judge-checked)
    OUT/...                              every stage, as `train.py all --preset shapes` writes it
                                         (dalle1/stages/run_all.py), held-out data: the pair suite
    OUT/samples/*.png                    reranked grids for two single, two pair and two held-out
                                         (novel) captions
    OUT/report.json                      each stage's time and the benchmark figures

A second run reuses every finished stage and resumes an interrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dalle1.config import load_config, save_config
from dalle1.pipeline import Pipeline
from dalle1.shapes import SUITES, evaluate_suite, judge_folder, suite_folder
from dalle1.shapes.scenes import ShapesConfig, write_split
from dalle1.stages.run_all import CONFIGS, TRAINED, AllStages

SPLIT_SIZES = {"train": 32000, "single": 200, "pair": 200, "novel": 200}
SPLIT_SIZES |= {"incontext": 200, "incontext_novel": 200}
TOKENIZER_VOCAB = 400  # the shapes captions use about 40 words; 256 ids are byte fallback
EVAL_SCENES, EVAL_CANDIDATES, EVAL_KEEP = 50, 16, 4
# Two-panel in-context scenes among the training scenes: at 0.2 the in-context suite passes and
# the other suites are as good as without them (docs/results.md).
INCONTEXT_SHARE = 0.2


@dataclass
class DemoConfig:
    """What `python train.py demo` runs."""

    out: str = "runs/demo"  # the run folder
    size: int = 64  # canvas side in pixels
    # COLOUR:SHAPE pairs held out of training
    holdout: list[str] = field(default_factory=lambda: ["red:triangle", "blue:circle"])
    seed: int = 0  # of every training stage (the data stays the same)
    incontext_share: float = INCONTEXT_SHARE  # of two-panel in-context training scenes
    eval: bool = True  # run the benchmark at the end


def make_data(
    out: Path, size: int, pairs: list[str], report: dict, incontext_share: float = 0.0
) -> bool:
    made = False
    for split, n in SPLIT_SIZES.items():
        folder = out / "data" / split
        if (folder / f"{split}_config.yaml").is_file():
            continue
        values = {"out": str(folder), "n": n, "size": size, "split": split, "holdout": pairs}
        if split == "train":
            values["incontext_fraction"] = incontext_share
        config = load_config(ShapesConfig, None, (), values)
        write_split(config)
        made_split = report.setdefault("data", {})[split] = {"n": n}
        if split != "train":  # the benchmark's scenes: each must pass the judge as drawn
            made_split["judge_accuracy"] = judge_folder(folder, progress=False)["accuracy"]
        save_config(config, folder / f"{split}_config.yaml")  # last: marks the split done
        made = True
    return made


def read_caption(folder: Path, index: int) -> str:
    return sorted(folder.glob("*.txt"))[index].read_text().splitlines()[0]


def run_demo(
    out: str | Path,
    size: int = 64,
    holdout: str = "red:triangle,blue:circle",
    evaluate: bool = True,
    configs: Path = CONFIGS,
    seed: int = 0,
    incontext_share: float = INCONTEXT_SHARE,
    stage_overrides: list[str] = (),
) -> dict:
    """seed: of every training stage (weights, data order, noise); the data is always the same.
    incontext_share: of two-panel in-context scenes among the training scenes; stage_overrides:
    STAGE.key=value, after the demo's own."""
    out, pairs = Path(out), [s for s in holdout.split(",") if s]
    data = out / "data"
    overrides = [f"{kind}.model.image_size={size}" for kind in ("vqvae", "clip")]
    overrides += [f"{kind}.train.seed={seed}" for kind in TRAINED] + list(stage_overrides)
    run = AllStages(
        out, str(data / "train"), str(data / "pair"), "shapes", overrides, TOKENIZER_VOCAB, configs
    )
    run.stage("data", lambda: make_data(out, size, pairs, run.report, incontext_share))
    run.run([read_caption(data / s, i) for s in ("single", "pair", "novel") for i in (0, 1)])
    if evaluate:
        run.stage("eval", lambda: run_benchmark(out, run.report))
        print(benchmark_table(run.report["benchmark"]), flush=True)
    print(run.summary(), flush=True)
    return run.report


def benchmark_table(benchmark: dict) -> str:
    """The benchmark of report.json as the README's Markdown table."""
    lines = [
        f"| suite | first | CLIP top-1 of {EVAL_CANDIDATES} | kept (best {EVAL_KEEP}) "
        "| CLIP top-1 per attribute |",
        "|---|---|---|---|---|",
    ]
    for suite, result in benchmark.items():
        attributes = result["reranked"]["per_attribute"].items()
        lines.append(
            f"| {suite} | {result['first']['accuracy']:.0%} | "
            f"{result['reranked']['accuracy']:.0%} | {result['kept']['accuracy']:.1%} | "
            + ", ".join(f"{name} {value:.0%}" for name, value in attributes)
            + " |"
        )
    return "\n".join(lines)


def run_benchmark(out: Path, report: dict) -> bool:
    if "benchmark" in report:
        return False
    pipe = Pipeline.load(out / "dalle")
    results = {}
    for suite in SUITES:
        folder = suite_folder(out / "data", suite)
        results[suite] = evaluate_suite(
            pipe, suite, folder, EVAL_SCENES, EVAL_CANDIDATES, EVAL_KEEP, save_dir=out / "eval"
        )
        first, best = results[suite]["first"]["accuracy"], results[suite]["reranked"]["accuracy"]
        print(
            f"[all] {suite:>10}: first candidate {first:.1%}, CLIP top-1 of "
            f"{EVAL_CANDIDATES} {best:.1%}",
            flush=True,
        )
    report["benchmark"] = results
    return True
