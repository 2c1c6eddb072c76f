"""How well the CLIP reranker reads a caption: text -> image top-1 accuracy on unseen shapes scenes.

Two tests, on scenes drawn with another seed than the training data:
- random: the true scene among 31 other random scenes of the same kind (32 in all);
- hard: the true scene among 7 that differ from it in exactly one attribute: colour, shape, size
  or position for one object; for pairs the relation reversed (the objects trade places), the
  colours or the shapes of the two objects swapped, or one object's colour or shape changed.
Accuracy per kind of change tells what the reranker cannot see. For pairs also the other
direction: how often the image scores its own caption above the caption with the colours swapped
or the relation word reversed, and the mean cosine similarity of the two caption embeddings.

    python bench/clip_accuracy.py --clip runs/demo/clip --n 200
"""

from __future__ import annotations

import argparse
import json
import platform
import random
from dataclasses import replace
from pathlib import Path

import torch

from dalle1.clip import CLIP
from dalle1.data.transforms import to_tensor
from dalle1.shapes.scenes import (
    CELL_CENTRES,
    COLUMNS,
    PALETTE,
    ROWS,
    SHAPES,
    SIZES,
    Scene,
    make_scene,
    parse_pairs,
    render,
)
from dalle1.tokenizer import TextTokenizer
from pretrained import resolve_model_folder
from pretrained.run import read_run_config


def moved(obj, rng: random.Random):
    """The object in another of the nine cells, same jitter."""
    r, c = ROWS.index(obj.row), COLUMNS.index(obj.column)
    cells = [(i, j) for i in range(3) for j in range(3) if (i, j) != (r, c)]
    i, j = rng.choice(cells)
    return replace(
        obj,
        row=ROWS[i],
        column=COLUMNS[j],
        cx=obj.cx - CELL_CENTRES[c] + CELL_CENTRES[j],
        cy=obj.cy - CELL_CENTRES[r] + CELL_CENTRES[i],
    )


def variants(scene: Scene, rng: random.Random, count: int = 7) -> list[tuple[str, Scene]]:
    """`count` scenes that each differ from `scene` in one attribute: (what changed, scene)."""
    out = []
    objects = scene.objects
    for k in range(count):
        if len(objects) == 1:
            (obj,) = objects
            change = ("colour", "shape", "size", "position")[k % 4]
            if change == "colour":
                new = replace(obj, colour=rng.choice([c for c in PALETTE if c != obj.colour]))
            elif change == "shape":
                new = replace(obj, shape=rng.choice([s for s in SHAPES if s != obj.shape]))
            elif change == "size":
                size = "large" if obj.size == "small" else "small"
                new = replace(obj, size=size, side=SIZES[size])
            else:
                new = moved(obj, rng)
            out.append((change, replace(scene, objects=[new])))
            continue
        a, b = objects
        change = ("reversed", "colours swapped", "shapes swapped", "colour", "shape")[k % 5]
        if change == "reversed":  # the objects trade places: the relation no longer holds
            pair = [replace(a, cx=b.cx, cy=b.cy), replace(b, cx=a.cx, cy=a.cy)]
        elif change == "colours swapped":
            pair = [replace(a, colour=b.colour), replace(b, colour=a.colour)]
        elif change == "shapes swapped" and a.shape != b.shape:
            pair = [replace(a, shape=b.shape), replace(b, shape=a.shape)]
        elif change == "colour":
            which = rng.randrange(2)
            used = {a.colour, b.colour}
            colour = rng.choice([c for c in PALETTE if c not in used])
            pair = [replace(o, colour=colour) if i == which else o for i, o in enumerate(objects)]
        else:
            change = "shape"
            which = rng.randrange(2)
            shape = rng.choice([s for s in SHAPES if s != objects[which].shape])
            pair = [replace(o, shape=shape) if i == which else o for i, o in enumerate(objects)]
        out.append((change, replace(scene, objects=pair)))
    return out


OPPOSITES = {"left": "right", "right": "left", "above": "below", "below": "above"}
OPPOSITES.update({"over": "under", "under": "over", "beneath": "above"})


def altered_captions(scene: Scene) -> dict[str, str]:
    """The pair scene's caption with the colours swapped, and with the relation reversed."""
    a, b = scene.objects
    words = scene.caption.split(" ")
    swap = {a.colour: b.colour, b.colour: a.colour}
    reversed_words = list(words)
    i = next(i for i, w in enumerate(words) if w in OPPOSITES)
    reversed_words[i] = OPPOSITES[words[i]]
    return {
        "colours swapped": " ".join(swap.get(w, w) for w in words),
        "relation reversed": " ".join(reversed_words),
    }


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip", required=True, help="CLIP run or checkpoint folder")
    parser.add_argument("--n", type=int, default=200, help="scenes per kind (default 200)")
    parser.add_argument("--seed", type=int, default=7, help="scene seed; the data used 0")
    parser.add_argument("--holdout", default="red:triangle,blue:circle")
    parser.add_argument("--json", default="runs/bench/clip_accuracy.json")
    args = parser.parse_args()

    checkpoint = resolve_model_folder(args.clip)
    model = CLIP.from_pretrained(checkpoint).eval()
    run_config = read_run_config(checkpoint)
    tokenizer = TextTokenizer(run_config["data"]["text_tokenizer"], model.config.text_length)
    size = model.config.image_size
    holdout = parse_pairs(args.holdout)
    rng = random.Random(args.seed)

    def embed(scenes: list[Scene]) -> torch.Tensor:
        images = torch.stack([to_tensor(render(s, size)) for s in scenes])
        return model.encode_images(images)

    results = {}
    for kind in ("single", "pair"):
        scenes = [make_scene(kind, i, args.seed, holdout) for i in range(args.n)]
        image_emb = embed(scenes)
        text_emb = model.encode_text(tokenizer.encode_batch([s.caption for s in scenes]))
        random_hits, hard_hits, per_change = 0, 0, {}
        for i, scene in enumerate(scenes):
            others = rng.sample([j for j in range(args.n) if j != i], 31)
            scores = text_emb[i] @ image_emb[[i, *others]].t()
            random_hits += int(scores.argmax() == 0)
            changed = variants(scene, rng)
            scores = (
                text_emb[i] @ torch.cat([image_emb[i : i + 1], embed([s for _, s in changed])]).t()
            )
            hard_hits += int(scores.argmax() == 0)
            for k, (change, _) in enumerate(changed):  # true beats this one variant?
                won = bool(scores[0] > scores[k + 1])
                kinds = [change]
                if change == "reversed":  # also apart by axis
                    axis = "left/right" if scene.relation in ("left of", "right of") else "up/down"
                    kinds.append(f"reversed {axis}")
                for kind_of_change in kinds:
                    hits, total = per_change.get(kind_of_change, (0, 0))
                    per_change[kind_of_change] = (hits + won, total + 1)
        results[kind] = {
            "random_32_top1": random_hits / args.n,
            "hard_8_top1": hard_hits / args.n,
            "beats_one_variant": {k: h / t for k, (h, t) in sorted(per_change.items())},
        }
        print(
            f"{kind:>6}: random 32 top-1 {random_hits / args.n:.1%}, hard 8 top-1 "
            f"{hard_hits / args.n:.1%}"
        )
        for change, (h, t) in sorted(per_change.items()):
            print(f"        true scene scores above a '{change}' variant: {h / t:.1%} of {t}")
        if kind == "pair":
            results[kind]["image_to_text"] = {}
            altered = [altered_captions(s) for s in scenes]
            own = (image_emb * text_emb).sum(1)
            for change in altered[0]:
                other = model.encode_text(tokenizer.encode_batch([a[change] for a in altered]))
                wins = (own > (image_emb * other).sum(1)).float().mean().item()
                cosine = (text_emb * other).sum(1).mean().item()
                results[kind]["image_to_text"][change] = {"wins": wins, "cosine": cosine}
                print(
                    f"        image scores its caption above the '{change}' one: {wins:.1%} "
                    f"(caption cosine {cosine:.3f})"
                )
    report = {
        "clip": str(checkpoint),
        "n": args.n,
        "machine": platform.machine(),
        "results": results,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
