"""How to rank the icons' candidates, and what the rankers see (the icon grid's reranking gap).

For the first N held-out and N seen cells of a split, C candidates of each cell's caption are
drawn once (guidance as given) and judged (dalle1/icons/judge.py). Each ranking then picks one:
the first draw, each CLIP (the run's and any --clip), the transformer's log-likelihood of the
candidate's codes given the caption, their pointwise mutual information with it (that minus the
likelihood given the padding-only caption, which classifier-free guidance trains), and CLIP +
w x that (each standardised over the C). Per ranking: object top-1, style and both right, and the
AUC of its score between the candidates the judge calls the right object and the others (0.5:
blind to the object). Then each CLIP's zero-shot object top-1 among every object of the split,
asked "OBJECT, STYLE style" in the cell's style, on the cells' real drawings and on the image
tokenizer's reconstructions of them; and for each --tokenizers run the judge on its
reconstructions (the tokenizer's ceiling, as eval-icons reports it).

    python bench/icons_ranking.py --run runs/icons0/dalle --data data/icons/split_0 --n 64 \
        --clip runs/icons0/clip_conv --tokenizers runs/icons0/vqvae8
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dalle1.clip import CLIP, clip_scores  # noqa: E402
from dalle1.icons.benchmark import SUITES, load_judge, real_images  # noqa: E402
from dalle1.icons.data import captions, read_cells  # noqa: E402
from dalle1.icons.judge import score_cells  # noqa: E402
from dalle1.pipeline import Pipeline, standardised  # noqa: E402
from dalle1.sampling import padding_text, sample_candidates  # noqa: E402
from dalle1.tokenizer import TextTokenizer  # noqa: E402
from vqvae import load_image_tokenizer  # noqa: E402

CELLS_PER_CALL = 8
MEASURES = ("object", "style", "both")


def log_likelihood(pipe: Pipeline, text: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """(B, T) ids, (B, N) codes -> (B,) log p(codes | text), summed over the cells."""
    logits = pipe.dalle.image_logits(text, codes).float()
    return logits.log_softmax(-1).gather(-1, codes[..., None])[..., 0].sum(-1)


def auc(score: torch.Tensor, right: torch.Tensor) -> tuple[float, int]:
    """(wins, pairs) of right candidates scored above wrong ones (ties count half)."""
    if right.all() or not right.any():
        return 0.0, 0
    diff = score[right][:, None] - score[~right][None, :]
    return float((diff > 0).sum() + 0.5 * (diff == 0).sum()), diff.numel()


def reconstruct(tokenizer, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat(
            [tokenizer.decode(tokenizer.encode(c)).float().clamp(0, 1) for c in images.split(256)]
        )


def zero_shot(clip: CLIP, tokenizer: TextTokenizer, images, cells, objects) -> float:
    """CLIP's object top-1 among `objects`, each image asked in its own cell's style."""
    right = 0
    with torch.no_grad():
        image_emb = clip.encode_images(images)
        for emb, (obj, style) in zip(image_emb, cells, strict=True):
            texts = [captions(o, style)[0] for o in objects]
            text_emb = clip.encode_text(tokenizer.encode_batch(texts))
            right += objects[int((text_emb @ emb).argmax())] == obj
    return right / len(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="an icons transformer run")
    parser.add_argument("--data", required=True, help="its split folder (DIR/split_SEED)")
    parser.add_argument("--n", type=int, default=64, help="cells per suite (default 64)")
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--clip", nargs="*", default=[], help="more CLIP runs to rank with")
    parser.add_argument("--weights", nargs="+", type=float, default=[0.25, 0.5, 1.0])
    parser.add_argument("--tokenizers", nargs="*", default=[], help="image tokenizer runs")
    parser.add_argument("--json", default="runs/bench/icons_ranking.json")
    args = parser.parse_args()
    pipe = Pipeline.load(args.run)
    clips = {"CLIP (the run's)": (pipe.clip, pipe.clip_tokenizer)}
    for folder in args.clip:
        model = CLIP.from_pretrained(folder).eval()
        tokenizer = TextTokenizer.load(
            pipe.parts.text_tokenizer, model.config.text_length, model.config.text_vocab_size
        )
        clips[f"CLIP {folder}"] = (model, tokenizer)
    judge = load_judge(args.data)
    config = replace(pipe.sampling, guidance_scale=args.guidance)
    n = args.candidates
    report = {}
    for suite in SUITES:
        all_cells = read_cells(args.data)[suite]
        cells = all_cells[: args.n]
        picks: dict[str, list[dict]] = {}
        pairs: dict[str, list[float]] = {}
        right_any = []
        for first in range(0, len(cells), CELLS_PER_CALL):
            chunk = cells[first : first + CELLS_PER_CALL]
            texts = [captions(obj, style)[0] for obj, style in chunk]
            text = pipe.tokenizer.encode_batch(texts)
            generator = torch.Generator().manual_seed(first)
            with torch.no_grad():
                codes = sample_candidates(pipe.dalle, text, n, config, None, generator)
                rows = text.repeat_interleave(n, dim=0)
                given = log_likelihood(pipe, rows, codes)
                alone = log_likelihood(pipe, padding_text(pipe.dalle, len(rows), "cpu"), codes)
            images = pipe.decode(codes)
            for i, (cell, caption) in enumerate(zip(chunk, texts, strict=True)):
                part = slice(i * n, (i + 1) * n)
                judged = score_cells(judge, images[part], [cell] * n)["per_image"]
                pmi = given[part] - alone[part]
                scores = {"first draw": -torch.arange(n).float()}
                for name, (model, tokenizer) in clips.items():
                    scores[name] = clip_scores(model, tokenizer, images[part], caption)
                scores["likelihood"] = given[part]
                scores["pointwise mutual information (PMI)"] = pmi
                for w in args.weights:
                    scores[f"CLIP + {w:g} x PMI"] = standardised(
                        scores["CLIP (the run's)"]
                    ) + w * standardised(pmi)
                right_any.append({m: bool(v.any()) for m, v in judged.items()})
                for name, score in scores.items():
                    best = int(score.argmax())
                    picks.setdefault(name, []).append({m: bool(v[best]) for m, v in judged.items()})
                    if name == "first draw":  # an order, not a score
                        continue
                    wins, count = auc(score, judged["object"])
                    pairs.setdefault(name, [0.0, 0])
                    pairs[name][0] += wins
                    pairs[name][1] += count
        result = {}
        for name, chosen in {**picks, f"any of {n}": right_any}.items():
            result[name] = {m: sum(c[m] for c in chosen) / len(chosen) for m in MEASURES}
            if name in pairs and pairs[name][1]:
                result[name]["object_auc"] = pairs[name][0] / pairs[name][1]
        real = real_images(args.data, cells, pipe.image_tokenizer.image_size)
        rebuilt = reconstruct(pipe.image_tokenizer, real)
        objects = sorted({obj for obj, _ in all_cells})
        for name, (model, tokenizer) in clips.items():
            result[f"{name}, zero-shot"] = {
                "real": zero_shot(model, tokenizer, real, cells, objects),
                "reconstructed": zero_shot(model, tokenizer, rebuilt, cells, objects),
            }
        for folder in args.tokenizers:
            rebuilt = reconstruct(load_image_tokenizer(folder).eval(), real)
            scores = score_cells(judge, rebuilt, cells)
            result[f"tokenizer {folder}"] = {m: scores[m] for m in MEASURES}
        report[suite] = result
        print(f"\n{suite} ({len(cells)} cells, {n} candidates, guidance {args.guidance:g})")
        print("| ranking | object | style | both | object AUC |\n|---|---|---|---|---|")
        for name, values in result.items():
            if "real" in values:
                continue
            row = " | ".join(f"{values[m]:.1%}" for m in MEASURES)
            area = f"{values['object_auc']:.2f}" if "object_auc" in values else "-"
            print(f"| {name} | {row} | {area} |")
        print(f"zero-shot object top-1 among {len(objects)} objects, real / reconstructed:")
        for name, values in result.items():
            if "real" in values:
                print(f"  {name}: {values['real']:.1%} / {values['reconstructed']:.1%}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
