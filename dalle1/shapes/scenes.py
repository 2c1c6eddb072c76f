"""The shapes data: procedurally generated captioned scenes (SPEC section 2).

A scene has one object (a colour, a shape, a size and a cell of a 3x3 grid) or two objects in a
relation ("a red circle to the left of a blue square"). Each scene is drawn from its own RNG seeded
by (seed, split, index), so any scene can be made alone and the same seed always gives the same
files. Geometry is kept in fractions of the canvas side S; pixels appear only when rendering.

Held-out (colour, shape) pairs never appear in the `train`, `single` or `pair` splits, in any role;
the `novel` split asks for exactly those, like the paper's avocado armchair.
"""

from __future__ import annotations

import json
import os
import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "cyan": (40, 190, 200),
}
BACKGROUND = (255, 255, 255)
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.22, "large": 0.38}  # side of the bounding box, in units of S
PAIR_SIDE = 0.26
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "center", "right")
CELL_CENTRES = (0.25, 0.5, 0.75)  # centre of each row / column, in units of S
JITTER = 0.04  # each centre coordinate moves uniformly by up to this, in units of S
RELATIONS = ("left of", "right of", "above", "below")
# In-context scenes (two panels): the top half holds one object, the bottom half the same object
# transformed as the caption says. A (transform, shape of the top object) combination can be
# held out of training and asked for in the `incontext_novel` split. The caption names the top's
# shape, as the blog's prompt names its cat ("the exact same cat on the top as a sketch on the
# bottom"); what it leaves out (the colour, the place) must be read from the top panel.
TRANSFORMS = ("recolour", "reshape", "mirror")
TRANSFORM_TEMPLATES = {
    "recolour": "the same {top} below, in {colour}",
    "reshape": "the same {top} below, as a {shape}",
    "mirror": "the same {top} below, mirrored",
}
PANEL_SIDE = 0.26  # units of S: one object in a panel of S x S/2
PAIR_MIN_APART = 0.4  # along the relation's axis, centres at least this far apart
PAIR_MAX_OFFSET = 0.15  # on the other axis, centres at most this far apart
SPLITS = ("train", "single", "pair", "novel", "incontext", "incontext_novel")
SUPERSAMPLE = 4  # render at 4x, then Lanczos down: anti-aliased edges

# Caption paraphrases. {where} is a position phrase, {rel} a relation phrase.
SINGLE_TEMPLATES = (
    "a {size} {colour} {shape} {where}",
    "there is a {size} {colour} {shape} {where}",
    "{where} there is a {size} {colour} {shape}",
    "a {colour} {shape}, {size}, {where}",
)
PAIR_TEMPLATES = (
    "a {a} {rel} a {b}",
    "there is a {a} {rel} a {b}",
    "a {a} is {rel} a {b}",
)
RELATION_PHRASES = {
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}


def position_phrases(row: str, column: str) -> tuple[str, ...]:
    """Ways to say a 3x3 cell: 'in the top left', 'on the right', 'in the center'."""
    if row == "middle" and column == "center":
        return ("in the center", "in the middle")
    if row == "middle":
        return (f"on the {column}", f"in the middle {column}")
    if column == "center":
        return (f"at the {row}", f"in the {row} center")
    return (f"in the {row} {column}", f"in the {row} {column} corner")


@dataclass
class SceneObject:
    """One shape. size/row/column are None in two-object scenes, whose captions do not name them."""

    colour: str
    shape: str
    size: str | None
    row: str | None
    column: str | None
    cx: float  # bounding-box centre, units of S
    cy: float
    side: float  # bounding-box side, units of S

    def spec(self, canvas: int) -> dict:
        return {
            "colour": self.colour,
            "shape": self.shape,
            "size": self.size,
            "row": self.row,
            "column": self.column,
            "center_px": [round(self.cx * canvas, 2), round(self.cy * canvas, 2)],
            "side_px": round(self.side * canvas, 2),
        }


@dataclass
class Scene:
    """A caption and what it asks for; `relation` goes from objects[0] (A) to objects[1] (B).
    In-context scenes: `transform` ({"kind": ..., and its colour or shape}) turns the top
    panel's object (objects[0]) into the bottom panel's (objects[1])."""

    objects: list[SceneObject]
    caption: str
    relation: str | None = None
    transform: dict | None = None

    def spec(self, canvas: int) -> dict:
        """The structured spec saved as NAME.json beside the image; the judge reads it."""
        spec = {
            "canvas": canvas,
            "caption": self.caption,
            "objects": [o.spec(canvas) for o in self.objects],
            "relation": self.relation,
        }
        if self.transform:
            spec["transform"] = self.transform
        return spec


def parse_named_pairs(items: list[str] | str, form: str, firsts, seconds) -> set[tuple[str, str]]:
    """['A:B', ...] or 'A:B,...' -> {(A, B), ...}, each A one of `firsts` and B of `seconds`;
    form names them for the error, e.g. 'COLOUR:SHAPE'."""
    if isinstance(items, str):
        items = [s for s in items.split(",") if s.strip()]
    pairs = set()
    for item in items:
        first, sep, second = item.strip().partition(":")
        if not sep or first not in firsts or second not in seconds:
            raise ValueError(
                f"held-out {item!r} must be {form} with {form.split(':')[0].lower()} in "
                f"{sorted(firsts)} and {form.split(':')[1].lower()} in {list(seconds)}"
            )
        pairs.add((first, second))
    return pairs


def parse_pairs(items: list[str] | str) -> set[tuple[str, str]]:
    """['red:triangle', 'blue:circle'] or 'red:triangle,blue:circle' -> {(colour, shape), ...}."""
    return parse_named_pairs(items, "COLOUR:SHAPE", PALETTE, SHAPES)


def parse_combinations(items: list[str] | str) -> set[tuple[str, str]]:
    """['mirror:triangle', ...] or 'mirror:triangle,...' -> {(transform, shape of the top)}."""
    return parse_named_pairs(items, "TRANSFORM:SHAPE", TRANSFORMS, SHAPES)


def all_pairs() -> list[tuple[str, str]]:
    return [(c, s) for c in PALETTE for s in SHAPES]


def sample_single(
    rng: random.Random, pairs: list[tuple[str, str]], sizes: tuple[str, ...] = tuple(SIZES)
) -> Scene:
    """One object of a (colour, shape) drawn from `pairs`, in one of the nine cells."""
    colour, shape = rng.choice(pairs)
    size = rng.choice(sizes)
    r, c = rng.randrange(3), rng.randrange(3)
    cx = CELL_CENTRES[c] + rng.uniform(-JITTER, JITTER)
    cy = CELL_CENTRES[r] + rng.uniform(-JITTER, JITTER)
    obj = SceneObject(colour, shape, size, ROWS[r], COLUMNS[c], cx, cy, SIZES[size])
    template = rng.choice(SINGLE_TEMPLATES)
    where = rng.choice(position_phrases(ROWS[r], COLUMNS[c]))
    caption = template.format(size=size, colour=colour, shape=shape, where=where)
    return Scene([obj], caption)


def sample_pair(rng: random.Random, pairs: list[tuple[str, str]]) -> Scene:
    """Two objects of different colours, A in `relation` to B, both fully inside the canvas."""
    (colour_a, shape_a), (colour_b, shape_b) = rng.choice(pairs), rng.choice(pairs)
    while colour_b == colour_a:
        colour_b, shape_b = rng.choice(pairs)
    relation = rng.choice(RELATIONS)
    lo, hi = PAIR_SIDE / 2, 1 - PAIR_SIDE / 2  # centre range that keeps a shape inside
    # Along the axis: A's coordinate, then B's at least PAIR_MIN_APART further on.
    along_a = rng.uniform(lo, hi - PAIR_MIN_APART)
    along_b = rng.uniform(along_a + PAIR_MIN_APART, hi)
    across_a = rng.uniform(lo, hi)
    across_b = rng.uniform(max(lo, across_a - PAIR_MAX_OFFSET), min(hi, across_a + PAIR_MAX_OFFSET))
    if relation in ("right of", "below"):  # A comes after B along the axis
        along_a, along_b = along_b, along_a
    if relation in ("left of", "right of"):
        (ax, bx), (ay, by) = (along_a, along_b), (across_a, across_b)
    else:
        (ay, by), (ax, bx) = (along_a, along_b), (across_a, across_b)
    a = SceneObject(colour_a, shape_a, None, None, None, ax, ay, PAIR_SIDE)
    b = SceneObject(colour_b, shape_b, None, None, None, bx, by, PAIR_SIDE)
    template = rng.choice(PAIR_TEMPLATES)
    rel = rng.choice(RELATION_PHRASES[relation])
    caption = template.format(a=f"{colour_a} {shape_a}", b=f"{colour_b} {shape_b}", rel=rel)
    return Scene([a, b], caption, relation)


def incontext_colours(kind: str, shape: str, pairs: list[tuple[str, str]]) -> list[str]:
    """Colours a top object of `shape` can take for `kind`, its result staying in `pairs`."""
    colours = [c for c, s in pairs if s == shape]
    if kind == "recolour":
        return colours if len(colours) > 1 else []
    if kind == "reshape":
        return [c for c in colours if any(c == c2 and s != shape for c2, s in pairs)]
    return colours


def sample_incontext(
    rng: random.Random, pairs: list[tuple[str, str]], combinations: list[tuple[str, str]]
) -> Scene:
    """Two panels: one object in the top half, the same object transformed below, for a
    (transform, top shape) of `combinations`; both objects' (colour, shape) in `pairs`."""
    kind, shape = rng.choice(combinations)
    colour = rng.choice(incontext_colours(kind, shape, pairs))
    column = rng.choice((0, 2) if kind == "mirror" else (0, 1, 2))  # a mirrored centre: no change
    cx = CELL_CENTRES[column] + rng.uniform(-JITTER, JITTER)
    cy = 0.25 + rng.uniform(-JITTER, JITTER) / 2
    new_colour, new_shape, new_cx = colour, shape, cx
    if kind == "recolour":
        new_colour = rng.choice([c for c, s in pairs if s == shape and c != colour])
        transform = {"kind": kind, "colour": new_colour}
    elif kind == "reshape":
        new_shape = rng.choice([s for c, s in pairs if c == colour and s != shape])
        transform = {"kind": kind, "shape": new_shape}
    else:
        new_cx, transform = 1 - cx, {"kind": kind}
    top = SceneObject(colour, shape, None, None, None, cx, cy, PANEL_SIDE)
    bottom = SceneObject(new_colour, new_shape, None, None, None, new_cx, cy + 0.5, PANEL_SIDE)
    caption = TRANSFORM_TEMPLATES[kind].format(top=shape, colour=new_colour, shape=new_shape)
    return Scene([top, bottom], caption, transform=transform)


def incontext_combinations(
    pairs: list[tuple[str, str]], held: set[tuple[str, str]], novel: bool
) -> list[tuple[str, str]]:
    """The (transform, top shape) combinations `pairs` can draw, held out (novel) or seen."""
    drawable = [(k, s) for k in TRANSFORMS for s in SHAPES if incontext_colours(k, s, pairs)]
    return [c for c in drawable if (c in held) == novel]


def make_scene(
    split: str,
    index: int,
    seed: int,
    holdout: set[tuple[str, str]],
    pair_fraction: float = 0.5,
    incontext_fraction: float = 0.0,
    incontext_holdout: set[tuple[str, str]] = frozenset(),
) -> Scene:
    """Scene `index` of `split`; the same arguments always give the same scene."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = random.Random(f"shapes/{seed}/{split}/{index}")
    seen = [p for p in all_pairs() if p not in holdout]
    if split.startswith("incontext") or (incontext_fraction and rng.random() < incontext_fraction):
        novel = split == "incontext_novel"
        combinations = incontext_combinations(seen, incontext_holdout, novel)
        if not combinations:
            raise ValueError(f"no in-context combination left for the {split} split")
        return sample_incontext(rng, seen, combinations)
    if split == "novel":
        if not holdout:
            raise ValueError("the novel split needs at least one held-out pair")
        return sample_single(rng, sorted(holdout))
    if split == "single":
        return sample_single(rng, seen)
    if split == "pair":
        return sample_pair(rng, seen)
    return sample_pair(rng, seen) if rng.random() < pair_fraction else sample_single(rng, seen)


EDIT_MARGIN = 0.03  # units of S around the replaced object's box


def edit_request(spec: dict, name: str, holdout: list[str]) -> tuple[tuple, str, dict]:
    """The `edit` suite's task for a two-object scene: replace object B by another (colour,
    shape) that is not held out, of a colour A does not have, keeping A and the relation.

    Returns (the box around B in units of S: (x0, y0, x1, y1), the caption of the edited
    scene, its spec with "kept": 0, the index of the object outside the box).
    """
    if len(spec["objects"]) != 2 or not spec.get("relation"):
        raise ValueError(f"{name}: the edit suite needs two-object scenes (the pair split)")
    a, b = spec["objects"]
    held = parse_pairs(holdout)
    choices = [
        (colour, shape)
        for colour, shape in all_pairs()
        if (colour, shape) not in held
        and colour not in (a["colour"], b["colour"])
        and shape != b["shape"]
    ]
    colour, shape = random.Random(f"edit/{name}").choice(choices)
    canvas = spec["canvas"]
    (cx, cy), half = (c / canvas for c in b["center_px"]), b["side_px"] / canvas / 2 + EDIT_MARGIN
    box = (cx - half, cy - half, cx + half, cy + half)
    phrase = RELATION_PHRASES[spec["relation"]][0]
    caption = PAIR_TEMPLATES[0].format(
        a=f"{a['colour']} {a['shape']}", b=f"{colour} {shape}", rel=phrase
    )
    edited = {**spec, "caption": caption, "kept": 0}
    edited["objects"] = [a, {**b, "colour": colour, "shape": shape}]
    return box, caption, edited


def render(scene: Scene, size: int) -> Image.Image:
    """Draw `scene` on a white S x S RGB canvas (rendered at 4x, Lanczos-downsampled)."""
    big = size * SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        half = obj.side * big / 2
        cx, cy = obj.cx * big, obj.cy * big
        x0, y0, x1, y1 = cx - half, cy - half, cx + half, cy + half
        colour = PALETTE[obj.colour]
        if obj.shape == "circle":
            draw.ellipse([x0, y0, x1, y1], fill=colour)
        elif obj.shape == "square":
            draw.rectangle([x0, y0, x1, y1], fill=colour)
        elif obj.shape == "triangle":  # apex up, flat base at the bottom, width = height
            draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=colour)
        else:
            raise ValueError(f"unknown shape {obj.shape!r}")
    return image.resize((size, size), Image.Resampling.LANCZOS)


@dataclass
class ShapesConfig:
    """Settings of `python train.py shapes`: which split to write, how many scenes, where."""

    out: str = "data/shapes/train"  # folder that receives NAME.png, NAME.txt, NAME.json
    n: int = 10000  # number of scenes to write
    size: int = 64  # canvas side S in pixels: a multiple of 8 from 32 to 256
    seed: int = 0  # the same seed gives the same files
    # train (one and two objects), single, pair (seen pairs), novel (held-out pairs), incontext
    # (two panels, seen combinations), incontext_novel (held-out combinations)
    split: str = "train"
    # COLOUR:SHAPE pairs never drawn together in train (the novel split asks for them)
    holdout: list[str] = field(default_factory=lambda: ["red:triangle", "blue:circle"])
    pair_fraction: float = 0.5  # share of two-object scenes in the train split
    # Share of in-context scenes (two panels: an object, then the same transformed as the
    # caption says) in the train split; the incontext splits hold only those.
    incontext_fraction: float = 0.0
    # (transform, shape of the top object) combinations kept out of train and incontext.
    incontext_holdout: list[str] = field(
        default_factory=lambda: ["recolour:triangle", "reshape:square", "mirror:circle"]
    )

    def __post_init__(self) -> None:
        if self.size % 8 or not 32 <= self.size <= 256:
            raise ValueError(f"size must be a multiple of 8 from 32 to 256, got {self.size}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")
        if not 0.0 <= self.pair_fraction <= 1.0:
            raise ValueError(f"pair_fraction must lie in [0, 1], got {self.pair_fraction}")
        if not 0.0 <= self.incontext_fraction < 1.0:
            raise ValueError(
                f"incontext_fraction must lie in [0, 1), got {self.incontext_fraction}"
            )
        parse_combinations(self.incontext_holdout)
        held = parse_pairs(self.holdout)
        if self.split == "novel" and not held:
            raise ValueError("split 'novel' needs at least one held-out pair (holdout=...)")
        seen_colours = {c for c, s in all_pairs() if (c, s) not in held}
        if len(seen_colours) < 2:
            raise ValueError("holdout leaves fewer than two colours for two-object scenes")

    @property
    def holdout_pairs(self) -> set[tuple[str, str]]:
        return parse_pairs(self.holdout)


SCENES_PER_TASK = 500  # scenes a worker process writes per task


def write_split(config: ShapesConfig, progress: bool = True, workers: int = 0) -> Path:
    """Render `config.n` scenes of `config.split` into `config.out`; return the folder.
    workers: processes rendering at once (0: one per CPU core); each scene depends only on its
    index and the seed, so the files are the same for any number."""
    from tqdm import tqdm

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    step = SCENES_PER_TASK
    chunks = [range(i, min(i + step, config.n)) for i in range(0, config.n, step)]
    workers = min(workers or os.cpu_count() or 1, len(chunks))
    with tqdm(total=config.n, desc=f"shapes {config.split}", disable=not progress) as bar:
        if workers == 1:
            for chunk in chunks:
                bar.update(write_scenes(config, chunk))
        else:
            with ProcessPoolExecutor(workers) as pool:
                for count in pool.map(write_scenes, [config] * len(chunks), chunks):
                    bar.update(count)
    return out


def write_scenes(config: ShapesConfig, indices: range) -> int:
    """Write the scenes of `indices` (NAME.png, NAME.txt, NAME.json); returns how many."""
    out, holdout = Path(config.out), config.holdout_pairs
    combinations = parse_combinations(config.incontext_holdout)
    for index in indices:
        scene = make_scene(
            config.split,
            index,
            config.seed,
            holdout,
            config.pair_fraction,
            config.incontext_fraction,
            combinations,
        )
        name = f"{config.split}_{index:06d}"
        render(scene, config.size).save(out / f"{name}.png")
        (out / f"{name}.txt").write_text(scene.caption + "\n")
        (out / f"{name}.json").write_text(json.dumps(scene.spec(config.size), indent=1))
    return len(indices)
