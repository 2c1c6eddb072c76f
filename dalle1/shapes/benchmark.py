"""The shapes benchmark: generate for a suite's captions, judge every candidate.

For each of n scenes of the suite (its caption and spec), draw `candidates` images and report:
- first: accuracy of the first candidate drawn (no reranking);
- reranked: accuracy of CLIP's top-1 among the candidates;
- kept: mean accuracy over CLIP's best `keep`;
each overall and per attribute. The completion suite gives the model the top half of each held-out
scene's codes with its caption, and judges the whole picture; so do the in-context suites, whose
top half is an object and whose caption asks for it transformed below (judge.judge_incontext;
`incontext_novel`: combinations held out of training). The edit suite boxes one object of
each two-object scene, asks for another object there (scenes.edit_request) and judges the edit
(judge.judge_edit: the other object must stay); it adds `combined`: the top-1 by CLIP and the
kept cells' likelihood together (Pipeline.edit's ranking).

`judge_candidates` does the drawing, judging and scoring for this and for
bench/rerank_curve.py; the candidates of many scenes share the sampler's batches.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from dalle1.clip import clip_scores
from dalle1.data.transforms import read_image
from dalle1.images import to_pil
from dalle1.pipeline import Pipeline, edit_scores
from dalle1.sampling import SamplingConfig
from dalle1.shapes.judge import judge_edit, judge_image, summarize
from dalle1.shapes.scenes import ShapesConfig, edit_request

SUITES = ("single", "pair", "novel", "completion", "edit", "incontext", "incontext_novel")
PREFIX_SUITES = ("completion", "incontext", "incontext_novel")  # the top half is given


def suite_folder(data: str | Path, suite: str) -> Path:
    """The demo's data folder of a suite: completion and edit start from the pair scenes."""
    return Path(data) / ("pair" if suite in ("completion", "edit") else suite)


ROWS_PER_CALL = 512  # candidates drawn, decoded and judged together (several scenes' at once)


def read_suite(folder: Path, n: int) -> list[tuple[str, str, dict]]:
    """The first n (name, caption, spec) of a shapes split folder."""
    specs = sorted(folder.glob("*.json"))[:n]
    if not specs:
        raise FileNotFoundError(f"{str(folder)!r} holds no shapes scenes (NAME.json + NAME.txt)")
    return [
        (s.stem, s.with_suffix(".txt").read_text().splitlines()[0], json.loads(s.read_text()))
        for s in specs
    ]


@dataclass
class JudgedScene:
    """One scene's candidates, in drawing order."""

    name: str
    caption: str
    images: torch.Tensor  # (N, 3, S, S) in [0, 1]
    verdicts: list[dict]  # judge_image's result for each candidate
    scores: torch.Tensor | None  # (N,) CLIP's cosine similarity to the caption; None: no CLIP
    loglik: torch.Tensor | None = None  # (N,) edits: the kept cells' log-likelihood


def judge_candidates(
    pipe: Pipeline,
    suite: str,
    folder: str | Path,
    n: int = 50,
    candidates: int = 16,
    config: SamplingConfig | None = None,
    seed: int = 0,
    progress: bool = True,
) -> Iterator[JudgedScene]:
    """Draw `candidates` images for each of the first n scenes of a suite's folder (the
    completion suite: from the top half of each scene's codes), judge each, score each with
    the pipeline's CLIP. config: default the run's (pipe.sampling). Scenes are drawn
    ROWS_PER_CALL candidates at a time."""
    if suite not in SUITES:
        raise ValueError(f"suite must be one of {SUITES}, got {suite!r}")
    if suite == "edit":
        yield from judge_edits(pipe, folder, n, candidates, config, seed, progress)
        return
    folder, scenes = Path(folder), read_suite(Path(folder), n)
    drawer = replace(pipe, clip=None, clip_tokenizer=None)  # candidates in drawing order
    size, rows = pipe.image_tokenizer.image_size, pipe.dalle.config.grid // 2
    per_call = max(1, ROWS_PER_CALL // candidates)
    with tqdm(total=len(scenes), desc=suite, disable=not progress) as bar:
        for first in range(0, len(scenes), per_call):
            chunk = scenes[first : first + per_call]
            prefix = None
            if suite in PREFIX_SUITES:
                given = [read_image(folder / f"{name}.png", size) for name, _, _ in chunk]
                codes = pipe.image_tokenizer.encode(torch.stack(given).to(pipe.device))
                prefix = codes[:, :rows].flatten(1)  # (C, rows * w): each scene's top rows
            captions = [caption for _, caption, _ in chunk]
            drawn = drawer.sample_many(
                captions, candidates, config=config, seed=seed + first, prefix=prefix
            )
            for (name, caption, spec), (images, _) in zip(chunk, drawn, strict=True):
                verdicts = [judge_image(to_pil(image), spec) for image in images]
                scores = None
                if pipe.clip is not None:
                    scores = clip_scores(pipe.clip, pipe.clip_tokenizer, images, caption)
                yield JudgedScene(name, caption, images, verdicts, scores)
                bar.update()


def judge_edits(
    pipe: Pipeline,
    folder: str | Path,
    n: int = 50,
    candidates: int = 16,
    config: SamplingConfig | None = None,
    seed: int = 0,
    progress: bool = True,
) -> Iterator[JudgedScene]:
    """The edit suite: for each of the first n two-object scenes, a box around object B and a
    caption asking for another object there (edit_request); `candidates` edits of the scene,
    judged by judge_edit, scored by CLIP, with their kept-cell likelihoods."""
    folder, scenes = Path(folder), read_suite(Path(folder), n)
    size, holdout = pipe.image_tokenizer.image_size, ShapesConfig().holdout
    written = folder / f"{folder.name}_config.yaml"  # the split's settings, where recorded
    if written.is_file():
        holdout = yaml.safe_load(written.read_text()).get("holdout", holdout)
    for i, (name, _, spec) in enumerate(tqdm(scenes, desc="edit", disable=not progress)):
        box, caption, edited = edit_request(spec, name, holdout)
        pixels = tuple(round(v * size) for v in box)
        image = read_image(folder / f"{name}.png", size)
        images, loglik = pipe.edit_candidates(image, pixels, caption, candidates, config, seed + i)
        verdicts = [judge_edit(to_pil(picture), edited) for picture in images]
        scores = None
        if pipe.clip is not None:
            scores = clip_scores(pipe.clip, pipe.clip_tokenizer, images, caption)
        yield JudgedScene(name, caption, images, verdicts, scores, loglik)


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
    """Judge n scenes x `candidates` images of a suite. Returns the report (see module doc);
    save_dir: CLIP's pick (or the first candidate) of each scene, as SUITE/NAME.png."""
    if candidates < 1 or not 1 <= keep <= candidates:
        raise ValueError(
            f"need candidates >= 1 and 1 <= keep <= candidates, got {candidates}, {keep}"
        )
    first, reranked, kept, combined = {}, {}, {}, {}
    for scene in judge_candidates(pipe, suite, folder, n, candidates, config, seed, progress):
        first[scene.name] = scene.verdicts[0]
        best = 0
        if scene.scores is not None:
            order = torch.sort(scene.scores, descending=True, stable=True).indices[:keep]
            best = int(order[0])
            reranked[scene.name] = scene.verdicts[best]
            for r, i in enumerate(order.tolist()):
                kept[f"{scene.name}#{r}"] = scene.verdicts[i]
        if scene.loglik is not None:  # an edit's ranking: CLIP and the kept cells' likelihood
            best = int(edit_scores(scene.scores, scene.loglik).argmax())
            combined[scene.name] = scene.verdicts[best]
        if save_dir is not None:
            out = Path(save_dir) / suite
            out.mkdir(parents=True, exist_ok=True)
            to_pil(scene.images[best]).save(out / f"{scene.name}.png")
            (out / f"{scene.name}.txt").write_text(scene.caption)
    report = {"suite": suite, "n": len(first), "candidates": candidates, "keep": keep}
    report["first"] = _brief(summarize(first))
    if reranked:
        report["reranked"] = _brief(summarize(reranked))
        report["kept"] = _brief(summarize(kept))
    if combined:
        report["combined"] = _brief(summarize(combined))
    return report


def _brief(summary: dict) -> dict:
    return {
        "accuracy": summary["accuracy"],
        "per_attribute": {k: v["accuracy"] for k, v in summary["per_attribute"].items()},
    }
