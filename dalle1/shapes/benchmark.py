"""The shapes benchmark: generate for a suite's captions, judge every candidate.

For each of n scenes of the suite (its caption and spec), draw `candidates` images and report:
- first: accuracy of the first candidate drawn (no reranking);
- reranked: accuracy of CLIP's top-1 among the candidates;
- kept: mean accuracy over CLIP's best `keep`;
each overall and per attribute. The completion suite gives the model the top half of each held-out
scene's codes with its caption, and judges the whole picture.
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from dalle1.clip import rerank
from dalle1.data.transforms import read_image
from dalle1.images import to_pil
from dalle1.pipeline import Pipeline
from dalle1.sampling import SamplingConfig
from dalle1.shapes.judge import judge_image, summarize

SUITES = ("single", "pair", "novel", "completion")


def read_suite(folder: Path, n: int) -> list[tuple[str, str, dict]]:
    """The first n (name, caption, spec) of a shapes split folder."""
    specs = sorted(folder.glob("*.json"))[:n]
    if not specs:
        raise FileNotFoundError(f"{str(folder)!r} holds no shapes scenes (NAME.json + NAME.txt)")
    return [
        (s.stem, s.with_suffix(".txt").read_text().splitlines()[0], json.loads(s.read_text()))
        for s in specs
    ]


def evaluate_suite(
    pipe: Pipeline,
    suite: str,
    folder: str | Path,
    n: int = 50,
    candidates: int = 16,
    keep: int = 4,
    config: SamplingConfig | None = None,
    seed: int = 0,
    save_dir: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Judge n scenes x `candidates` images of a suite. Returns the report (see module doc)."""
    if suite not in SUITES:
        raise ValueError(f"suite must be one of {SUITES}, got {suite!r}")
    if candidates < 1 or not 1 <= keep <= candidates:
        raise ValueError(
            f"need candidates >= 1 and 1 <= keep <= candidates, got {candidates}, {keep}"
        )
    scenes = read_suite(Path(folder), n)
    size = pipe.image_tokenizer.image_size
    rows = pipe.dalle.config.grid // 2
    first, reranked, kept = {}, {}, {}
    # Candidates in drawing order from this one, then CLIP's order of them.
    pipe_without_clip = Pipeline(pipe.dalle, pipe.image_tokenizer, pipe.tokenizer)
    for index, (name, caption, spec) in enumerate(tqdm(scenes, desc=suite, disable=not progress)):
        if suite == "completion":
            image = read_image(Path(folder) / f"{name}.png", size)
            drawn, _ = pipe_without_clip.complete(
                image, rows, caption, n=candidates, config=config, seed=seed + index
            )
        else:
            drawn, _ = pipe_without_clip.sample(
                caption, candidates, config=config, seed=seed + index
            )
        verdicts = [judge_image(to_pil(img), spec) for img in drawn]
        first[name] = verdicts[0]
        if pipe.clip is not None:
            order, _ = rerank(pipe.clip, pipe.clip_tokenizer, drawn, caption, keep)
            reranked[name] = verdicts[int(order[0])]
            for r, i in enumerate(order.tolist()):
                kept[f"{name}#{r}"] = verdicts[i]
            best = drawn[int(order[0])]
        else:
            best = drawn[0]
        if save_dir is not None:
            out = Path(save_dir) / suite
            out.mkdir(parents=True, exist_ok=True)
            to_pil(best).save(out / f"{name}.png")
            (out / f"{name}.txt").write_text(caption)
    report = {"suite": suite, "n": len(scenes), "candidates": candidates, "keep": keep}
    report["first"] = _brief(summarize(first))
    if reranked:
        report["reranked"] = _brief(summarize(reranked))
        report["kept"] = _brief(summarize(kept))
    return report


def _brief(summary: dict) -> dict:
    return {
        "accuracy": summary["accuracy"],
        "per_attribute": {k: v["accuracy"] for k, v in summary["per_attribute"].items()},
    }
