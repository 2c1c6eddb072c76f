"""The icons benchmark: draw each benchmark cell's caption, judge every candidate.

A split (`DIR/split_SEED`, data.py) names one held-out cell per object (an object in a style the
transformer never saw it in) and as many seen cells. For each cell, the caption
"OBJECT, STYLE style" gets `candidates` images; the judge (judge.py) reads every one, and the
report gives, for the first candidate drawn and for CLIP's top-1:
- object: the judge's top-1 object is the cell's; object_top5: it is among its top 5;
- style: the judge's style is the cell's; both: object (top-1) and style right;
- frechet: the Fréchet distance between those images and the cells' real drawings in the
  judge's features (ours, not comparable to published FIDs).
`any_of_N`: how often at least one of the N candidates has it, the ceiling of any reranker.
The tokenizer's ceiling is the same judge on its reconstructions of the cells' real drawings.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm import tqdm

from dalle1.clip import clip_scores
from dalle1.icons.data import captions, load_images, read_cells
from dalle1.icons.judge import IconJudge, frechet_distance, score_cells, to_tensor, train_judge
from dalle1.images import make_grid, save_image
from dalle1.pipeline import Pipeline
from dalle1.sampling import SamplingConfig

SUITES = ("heldout", "seen")
MEASURES = ("object", "object_top5", "style", "both")
ROWS_PER_CALL = 512  # candidates drawn and judged together (several cells' at once)


def data_folder(split: str | Path) -> Path:
    """DIR of a DIR/split_SEED folder."""
    return Path(split).resolve().parent


def load_judge(split: str | Path, judge: str | Path | None = None) -> IconJudge:
    """The judge at `judge` (default DIR/judge); trained there first when it is missing."""
    folder = Path(judge) if judge else data_folder(split) / "judge"
    if not (folder / "model.safetensors").is_file():
        print(f"no icon judge in {folder}: training one on {data_folder(split)} (a few minutes)")
        return train_judge(data_folder(split), folder)
    return IconJudge.from_pretrained(folder).eval()


def real_images(split: str | Path, cells: list[list[str]], size: int) -> torch.Tensor:
    """(N, 3, S, S) the cells' real drawings, resized to S."""
    return to_tensor(load_images(data_folder(split) / "images", cells, size))


@dataclass
class JudgedCell:
    """One cell's candidates, in drawing order."""

    cell: list[str]  # [object, style]
    caption: str
    images: torch.Tensor  # (N, 3, S, S) in [0, 1]
    judged: dict[str, torch.Tensor]  # MEASURES -> (N,) bool; "features" -> (N, F)
    scores: torch.Tensor | None  # (N,) CLIP's similarity to the caption; None: no CLIP


def judge_icon_candidates(
    pipe: Pipeline,
    judge: IconJudge,
    cells: list[list[str]],
    candidates: int = 16,
    config: SamplingConfig | None = None,
    seed: int = 0,
    progress: bool = True,
) -> Iterator[JudgedCell]:
    """Draw `candidates` images for each cell's caption, judge each, score each with CLIP.
    config: default the run's (pipe.sampling)."""
    drawer = replace(pipe, clip=None, clip_tokenizer=None)  # candidates in drawing order
    per_call = max(1, ROWS_PER_CALL // candidates)
    with tqdm(total=len(cells), desc="icons", disable=not progress) as bar:
        for first in range(0, len(cells), per_call):
            chunk = cells[first : first + per_call]
            texts = [captions(obj, style)[0] for obj, style in chunk]
            drawn = drawer.sample_many(texts, candidates, config=config, seed=seed + first)
            for cell, caption, (images, _) in zip(chunk, texts, drawn, strict=True):
                judged = score_cells(judge, images.cpu(), [cell] * len(images))
                scores = None
                if pipe.clip is not None:
                    scores = clip_scores(pipe.clip, pipe.clip_tokenizer, images, caption)
                yield JudgedCell(
                    cell,
                    caption,
                    images.cpu(),
                    judged["per_image"] | {"features": judged["features"]},
                    scores,
                )
                bar.update()


def summarize(judged: list[dict[str, torch.Tensor]], real_features: torch.Tensor) -> dict:
    """Means of MEASURES over one pick per cell, and their Fréchet distance to the real."""
    report = {m: torch.stack([j[m] for j in judged]).float().mean().item() for m in MEASURES}
    features = torch.stack([j["features"] for j in judged])
    report["frechet"] = frechet_distance(features, real_features)
    return report


def tokenizer_ceiling(pipe: Pipeline, judge: IconJudge, real: torch.Tensor, cells) -> dict:
    """The judge on the image tokenizer's reconstructions of (N, 3, S, S) real drawings."""
    tokenizer = pipe.image_tokenizer
    rebuilt = []
    with torch.no_grad():
        for chunk in real.split(256):
            codes = tokenizer.encode(chunk.to(pipe.device))
            rebuilt.append(tokenizer.decode(codes).float().clamp(0, 1).cpu())
    scores = score_cells(judge, torch.cat(rebuilt), cells)
    return {m: scores[m] for m in MEASURES}


def evaluate_icons(
    pipe: Pipeline,
    split: str | Path,
    judge: IconJudge,
    n: int = 0,
    candidates: int = 16,
    config: SamplingConfig | None = None,
    seed: int = 0,
    save_dir: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """The report (module docstring) for the first n cells of each suite (0: all). save_dir:
    SUITE.png, for up to 8 cells a row of the real drawing and CLIP's best 8."""
    if candidates < 1:
        raise ValueError(f"need candidates >= 1, got {candidates}")
    cells_by_suite = read_cells(split)
    size = pipe.image_tokenizer.image_size
    report = {"split": str(split), "candidates": candidates}
    for suite in SUITES:
        cells = cells_by_suite[suite][: n or None]
        real = real_images(split, cells, size)
        real_features = judge.classify(real)["features"]
        first, picked, rows = [], [], []
        any_right = {m: 0 for m in MEASURES}
        for index, judged in enumerate(
            judge_icon_candidates(pipe, judge, cells, candidates, config, seed, progress)
        ):
            first.append({k: v[0] for k, v in judged.judged.items()})
            for m in MEASURES:
                any_right[m] += bool(judged.judged[m].any())
            if judged.scores is not None:
                order = judged.scores.argsort(descending=True, stable=True)
                picked.append({k: v[order[0]] for k, v in judged.judged.items()})
                if index < 8:
                    rows.append(torch.cat([real[index : index + 1], judged.images[order[:8]]]))
        result = {"n": len(cells), "first": summarize(first, real_features)}
        if picked:
            result[f"clip_top1_of_{candidates}"] = summarize(picked, real_features)
        result[f"any_of_{candidates}"] = {m: any_right[m] / len(cells) for m in MEASURES}
        result["tokenizer_ceiling"] = tokenizer_ceiling(pipe, judge, real, cells)
        report[suite] = result
        if save_dir is not None and rows:
            columns = rows[0].shape[0]
            grid = make_grid(torch.cat(rows), columns=columns)
            save_image(grid, Path(save_dir) / f"{suite}.png")
            lines = [f"row {i}: {captions(*c)[0]}" for i, c in enumerate(cells[: len(rows)])]
            (Path(save_dir) / f"{suite}.txt").write_text("\n".join(lines) + "\n")
    return report


def report_table(report: dict) -> str:
    """The report as a Markdown table: one row per suite and pick."""
    lines = [
        "| cells | pick | object top-1 | object top-5 | style | both | Fréchet (judge) |",
        "|---|---|---|---|---|---|---|",
    ]
    for suite in SUITES:
        result = report[suite]
        for pick, values in result.items():
            if not isinstance(values, dict):
                continue
            name = pick.replace("_", " ")
            frechet = f"{values['frechet']:.1f}" if "frechet" in values else "-"
            lines.append(
                f"| {suite} ({result['n']}) | {name} | {values['object']:.1%} | "
                f"{values['object_top5']:.1%} | {values['style']:.1%} | {values['both']:.1%} "
                f"| {frechet} |"
            )
    return "\n".join(lines)
