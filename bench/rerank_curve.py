"""The reranking curve: how CLIP's choice gets better as it chooses from more candidates.

For each suite, every scene's caption gets 512 candidates (drawn once, each judged once, each
scored once by CLIP). For N = 1, 2, 4, ..., 512, groups of N of them are ranked by CLIP: the
judged accuracy of its top-1, the mean accuracy of its best k (k = 4 and 32, where N >= k), and
how often any of the N passes (what a perfect reranker would reach), averaged over the 512 / N
disjoint groups of every scene. At N = 1 the top-1 is the transformer's own accuracy. Written
as JSON and drawn as a PNG (accuracy against N, log scale), one colour per suite.

    python bench/rerank_curve.py --run runs/demo/dalle [--scenes 30] [--out docs/rerank_curve.png]
    python bench/rerank_curve.py --run RUN --candidates 16 --scenes 50 [--clip OTHER_CLIP_RUN]
        [--top-p P] [--temperature T]   (sampling: default the run's)
    python bench/rerank_curve.py --run runs/icons0/dalle --icons data/icons/split_0 --scenes 100
        the icon grid: its held-out and seen cells, a candidate right when the icons' judge
        reads both its object (top-1) and its style

It also counts how many of the candidates drawn fail each attribute the judge checks.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from dalle1.icons.benchmark import judge_icon_candidates, load_judge
from dalle1.icons.data import read_cells
from dalle1.pipeline import Pipeline
from dalle1.shapes.benchmark import SUITES, judge_candidates, suite_folder

KEPT = (4, 32)
COLOURS = {"single": (31, 119, 180), "pair": (214, 39, 40), "novel": (44, 160, 44)}
COLOURS |= {"completion": (148, 103, 189), "edit": (255, 127, 14)}
COLOURS |= {"heldout": (214, 39, 40), "seen": (31, 119, 180)}


def curve(judged: list, counts: list[int]) -> dict:
    """{"top1", "best4", "best32", "any"}: accuracies over counts (None: N < k). judged: per
    scene, (passes (n,) bool, CLIP scores (n,)), in drawing order.

    For N candidates, each scene's candidates are cut into disjoint groups of N in drawing order
    and CLIP ranks each group: the mean over groups is the expected accuracy of reranking N."""
    result = {"top1": [], "any": []} | {f"best{k}": [] for k in KEPT}
    for count in counts:
        ranked = []  # (groups, count) passes in CLIP's order, every scene's groups together
        for passes, scores in judged:
            groups = scores.view(-1, count).argsort(dim=1, descending=True, stable=True)
            ranked.append(passes.view(-1, count).gather(1, groups).float())
        ranked = torch.cat(ranked)
        result["top1"].append(ranked[:, 0].mean().item())
        result["any"].append(ranked.max(dim=1).values.mean().item())
        for k in KEPT:
            result[f"best{k}"].append(ranked[:, :k].mean().item() if count >= k else None)
    return result


def draw(curves: dict, counts: list[int], title: str, path: Path, size=(760, 460)) -> None:
    """Accuracy (0-100%) against candidates (log2): thick CLIP top-1, thin the best 32's mean,
    dots any of N (a perfect reranker)."""
    image = Image.new("RGB", size, "white")
    pen = ImageDraw.Draw(image)
    left, top, right, bottom = 60, 40, size[0] - 170, size[1] - 50
    x = lambda i: left + (right - left) * i / max(len(counts) - 1, 1)  # noqa: E731
    y = lambda a: bottom - (bottom - top) * a  # noqa: E731
    pen.rectangle([left, top, right, bottom], outline="black")
    for i, count in enumerate(counts):
        pen.line([x(i), bottom, x(i), bottom + 5], fill="black")
        pen.text((x(i) - 8, bottom + 8), str(count), fill="black")
    for a in range(0, 101, 20):
        pen.line([left - 5, y(a / 100), right, y(a / 100)], fill=(225, 225, 225))
        pen.text((left - 35, y(a / 100) - 6), f"{a}%", fill="black")
    pen.text((left, 12), title, fill="black")
    pen.text(((left + right) // 2 - 80, bottom + 28), "candidates reranked by CLIP", fill="black")
    for row, (suite, lines) in enumerate(curves.items()):
        colour = COLOURS[suite]
        for key, width in (("top1", 3), ("best32", 1)):
            points = [(x(i), y(a)) for i, a in enumerate(lines[key]) if a is not None]
            pen.line(points, fill=colour, width=width)
        for i, a in enumerate(lines["any"]):
            pen.ellipse([x(i) - 3, y(a) - 3, x(i) + 3, y(a) + 3], outline=colour)
        pen.line(
            [right + 15, top + 20 * row + 7, right + 40, top + 20 * row + 7], fill=colour, width=3
        )
        pen.text((right + 45, top + 20 * row), suite, fill="black")
    pen.text((right + 15, top + 100), "thick: CLIP top-1", fill="black")
    pen.text((right + 15, top + 116), "thin: mean of best 32", fill="black")
    pen.text((right + 15, top + 132), "dots: any of N passes", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def judged_shapes(pipe, args, config, data: Path):
    """{suite: (per scene (passes (N,) bool, CLIP scores (N,)), failures per attribute)}."""
    for suite in SUITES:
        folder = suite_folder(data, suite)
        judged, failures = [], Counter()  # how many candidates fail each attribute
        for scene in judge_candidates(
            pipe, suite, folder, args.scenes, args.candidates, config, args.seed
        ):
            judged.append((torch.tensor([v["pass"] for v in scene.verdicts]), scene.scores))
            failures.update(f for v in scene.verdicts for f in v["failures"])
        yield suite, judged, failures


def judged_icons(pipe, args, config):
    """The icons' suites: a candidate passes when the judge reads its object and style."""
    judge, cells = load_judge(args.icons, args.judge), read_cells(args.icons)
    for suite in ("heldout", "seen"):
        judged, failures = [], Counter()
        for cell in judge_icon_candidates(
            pipe, judge, cells[suite][: args.scenes], args.candidates, config, args.seed
        ):
            judged.append((cell.judged["both"], cell.scores))
            failures["object"] += int((~cell.judged["object"]).sum())
            failures["style"] += int((~cell.judged["style"]).sum())
        yield suite, judged, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/demo/dalle", help="a transformer run with CLIP")
    parser.add_argument("--data", help="the shapes data (default: RUN/../data)")
    parser.add_argument("--scenes", type=int, default=30, help="scenes per suite")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--candidates", type=int, default=512, help="largest N, a power of 2")
    parser.add_argument("--clip", help="rerank with this CLIP run (default: the run's data.clip)")
    parser.add_argument("--top-p", type=float, help="nucleus sampling (default: the run's)")
    parser.add_argument("--temperature", type=float, help="default: the run's")
    parser.add_argument("--icons", help="an icons split (data/icons/split_0): its cells instead")
    parser.add_argument("--judge", help="the icons' judge (default: ICONS/../judge)")
    parser.add_argument("--out", default="runs/bench/rerank_curve.png")
    parser.add_argument("--json", default="runs/bench/rerank_curve.json")
    args = parser.parse_args()
    if args.candidates < 1 or args.candidates & (args.candidates - 1):
        parser.error(f"--candidates must be a power of 2, got {args.candidates}")
    counts = [2**i for i in range(args.candidates.bit_length())]
    pipe = Pipeline.load(args.run, clip=args.clip)
    if pipe.clip is None:
        parser.error(f"{args.run} names no CLIP run (data.clip): nothing to rerank with")
    given = {"top_p": args.top_p, "temperature": args.temperature}
    config = replace(pipe.sampling, **{k: v for k, v in given.items() if v is not None})
    data = Path(args.data) if args.data else Path(args.run).resolve().parent / "data"
    start, curves, failures = time.perf_counter(), {}, {}
    if args.icons:
        suites = judged_icons(pipe, args, config)
    else:
        suites = judged_shapes(pipe, args, config, data)
    for suite, judged, failures[suite] in suites:
        curves[suite] = curve(judged, counts)
        print(
            suite,
            json.dumps({k: [v and round(v, 3) for v in vs] for k, vs in curves[suite].items()}),
            "failures of the candidates drawn:",
            dict(failures[suite]),
        )
    report = {"run": args.run, "scenes": args.scenes, "counts": counts, "curves": curves}
    report |= {"sampling": asdict(config), "failures": failures}
    report["seconds"] = time.perf_counter() - start
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    title = f"{args.run}: judged accuracy of CLIP's choice, {args.scenes} scenes per suite"
    draw(curves, counts, title, Path(args.out))
    print(f"{report['seconds']:.0f} s; plot: {args.out}")


if __name__ == "__main__":
    main()
