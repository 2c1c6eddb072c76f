"""The shapes judge: does a picture show what its spec asks for? (SPEC section 2)

It reads pixels only. Each pixel is explained as a palette colour blended with the white background,
`p = alpha * colour + (1 - alpha) * white`: anti-aliased and blurred edges are such blends, so the
blend model labels them with the right colour instead of a neighbouring one. Pixels with
alpha >= 0.5 are foreground; their 8-connected components are the objects. For each object:

- colour: the majority label, which must cover at least 80% of its pixels;
- shape: from the fill of its bounding box (square ~1, circle ~pi/4, triangle ~1/2) and, for the
  triangle, 3/4 of the mass in the lower half (apex up);
- size: the bounding-box side, small = 0.22 S and large = 0.38 S within a tolerance;
- cell: the bounding-box centre, within 0.1 S of a row and a column centre (0.25, 0.5, 0.75 S);
- relation: A's centre more than 0.1 S left of / right of / above / below B's.

A picture passes only if every attribute its spec names holds and there is no extra object. The
judge is the benchmark, so every tolerance is tight: an object between two cells or between two
sizes fails. An edit (judge_edit) also passes only if the object outside its region stayed. A
two-panel in-context picture (judge_incontext) passes when its bottom object is its top object,
as read from the pixels, transformed as the caption asks.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dalle1.shapes.scenes import BACKGROUND, CELL_CENTRES, COLUMNS, PALETTE, ROWS, SIZES

COLOUR_NAMES = list(PALETTE)
FOREGROUND_ALPHA = 0.5  # share of palette colour (vs white) that makes a pixel foreground
UNEXPLAINED_RESIDUAL = 45.0  # RGB distance beyond which no palette blend explains a pixel
UNEXPLAINED_DARKNESS = 100.0  # RGB distance from white that makes such a pixel foreground
MIN_OBJECT_AREA = 0.006  # units of S^2; a quarter of the smallest object (a small triangle)
MAX_STRAY_AREA = 0.01  # units of S^2; more foreground than this outside objects is clutter
MIN_COLOUR_PURITY = 0.8  # share of an object's pixels that carry its colour
SIZE_TOLERANCE = {"small": 0.05, "large": 0.06}  # units of S, around SIZES
CELL_TOLERANCE = 0.1  # units of S, around a row / column centre
RELATION_MARGIN = 0.1  # units of S
KEPT_TOLERANCE = 0.05  # units of S: how far an object outside an edit's region may move
PANEL_TOLERANCE = 0.1  # units of S: how far an in-context bottom object may sit from its place
ATTRIBUTES = ("count", "colour", "shape", "size", "position", "relation", "kept")


@dataclass
class DetectedObject:
    """One foreground component, measured. Coordinates in units of the canvas side S."""

    colour: str | None  # None: no colour covers MIN_COLOUR_PURITY of it
    shape: str | None  # None: not a circle, square or apex-up triangle
    size: str | None  # None: neither small nor large
    row: str | None  # None: between rows
    column: str | None
    cx: float
    cy: float
    side: float
    area: float  # units of S^2
    purity: float  # share of its pixels that carry its colour
    fill: float  # coverage / bounding box: square 1, circle pi/4, triangle 1/2
    lower_share: float  # share of coverage below the centre: 3/4 for an apex-up triangle


def pixel_labels(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Explain pixels as palette colours blended with white.

    rgb: (H, W, 3) float in [0, 255] -> labels (H, W) int (index into COLOUR_NAMES, -1 when
    no blend explains the pixel), alpha (H, W) float coverage in [0, 1], foreground (H, W) bool.
    """
    white = np.asarray(BACKGROUND, dtype=np.float64)
    palette = np.asarray([PALETTE[c] for c in COLOUR_NAMES], dtype=np.float64)  # (C, 3)
    towards = white - palette  # (C, 3): direction from white to each colour
    q = white - rgb  # (H, W, 3)
    darkness = np.linalg.norm(q, axis=-1)  # (H, W)
    labels = np.zeros(darkness.shape, dtype=np.int64)
    alpha = np.zeros(darkness.shape)
    foreground = np.zeros(darkness.shape, dtype=bool)
    inked = darkness > 2.0  # the rest is background; skip it for speed
    q = q[inked]  # (N, 3)
    blend = (q @ towards.T / (towards**2).sum(1)).clip(0.0, 1.0)  # (N, C)
    residual = np.linalg.norm(q[:, None, :] - blend[..., None] * towards, axis=-1)  # (N, C)
    best = residual.argmin(-1)
    best_alpha = np.take_along_axis(blend, best[:, None], -1)[:, 0]
    unexplained = np.take_along_axis(residual, best[:, None], -1)[:, 0] > UNEXPLAINED_RESIDUAL
    fg = np.where(
        unexplained, darkness[inked] > UNEXPLAINED_DARKNESS, best_alpha >= FOREGROUND_ALPHA
    )
    labels[inked] = np.where(unexplained, -1, best)
    alpha[inked] = np.where(unexplained, fg.astype(np.float64), best_alpha)
    foreground[inked] = fg
    return labels, alpha, foreground


def connected_components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a (H, W) bool mask, each as an (N, 2) int array of (y, x).

    Works on horizontal runs of pixels: runs in neighbouring rows that touch (diagonals included)
    are joined with union-find, which is far faster in Python than visiting every pixel.
    """
    edges = np.diff(np.pad(mask.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    run_rows, run_starts = np.nonzero(edges == 1)
    _, run_ends = np.nonzero(edges == -1)  # exclusive; same row-major order as the starts
    parent = list(range(len(run_rows)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    previous: list[int] = []  # runs of the row above
    current: list[int] = []
    row = -1
    for i, y in enumerate(run_rows):
        if y != row:
            previous, current = (current if y == row + 1 else []), []
            row = y
        for j in previous:  # touching, diagonals included
            if run_starts[j] <= run_ends[i] and run_starts[i] <= run_ends[j]:
                parent[root(i)] = root(j)
        current.append(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(run_rows)):
        groups.setdefault(root(i), []).append(i)
    components = []
    for runs in groups.values():
        ys = np.concatenate([np.full(run_ends[i] - run_starts[i], run_rows[i]) for i in runs])
        xs = np.concatenate([np.arange(run_starts[i], run_ends[i]) for i in runs])
        components.append(np.stack([ys, xs], axis=1))
    return components


def nearest_cell(coordinate: float, names: tuple[str, ...]) -> str | None:
    distances = [abs(coordinate - c) for c in CELL_CENTRES]
    best = int(np.argmin(distances))
    return names[best] if distances[best] <= CELL_TOLERANCE else None


def classify_shape(fill: float, aspect: float, lower_share: float) -> str | None:
    """Circle, square, apex-up triangle, or None, from scale-free measurements of a component."""
    if not 0.8 <= aspect <= 1.25:
        return None
    if fill >= 0.9:
        return "square"
    if 0.7 <= fill < 0.88 and 0.4 <= lower_share <= 0.6:
        return "circle"
    if 0.42 <= fill <= 0.7 and lower_share >= 0.6:
        return "triangle"
    return None


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grow a (H, W) bool mask by `radius` pixels (square neighbourhood)."""
    height, width = mask.shape
    padded = np.pad(mask, radius)
    grown = np.zeros_like(mask)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            grown |= padded[dy : dy + height, dx : dx + width]
    return grown


def measure(pixels: np.ndarray, labels: np.ndarray, alpha: np.ndarray) -> DetectedObject:
    """Measure one component.

    pixels: (N, 2) int (y, x) of the component; labels, alpha: (H, W) from pixel_labels.
    Extents come from coverage profiles, so they are sub-pixel and survive blur: the sum over x of
    the largest coverage in each column is the width of the shape, blurred or not.
    """
    canvas = labels.shape[1]
    ys, xs = pixels[:, 0], pixels[:, 1]
    mask = np.zeros(labels.shape, dtype=bool)
    mask[ys, xs] = True
    # The anti-aliased rim (coverage < 0.5) lies just outside the foreground mask.
    coverage = np.where(dilate(mask, 2), alpha, 0.0)  # (H, W)
    column_profile, row_profile = coverage.max(0), coverage.max(1)  # (W,), (H,)
    width, height = column_profile.sum(), row_profile.sum()
    centres = np.arange(canvas) + 0.5
    profile_cy = (centres * row_profile).sum() / height
    mass = coverage.sum()
    lower_share = float(coverage[centres > profile_cy].sum() / mass)
    fill = float(mass / (width * height))
    shape = classify_shape(fill, width / height, lower_share)
    # Mass and centroid do not change under blur; the side and the bounding-box centre follow
    # from them once the shape is known (a triangle's centroid lies a/6 below its box centre).
    cx = (coverage.sum(0) * centres).sum() / mass
    cy = (coverage.sum(1) * centres).sum() / mass
    if shape == "square":
        side = np.sqrt(mass)
    elif shape == "circle":
        side = np.sqrt(4 * mass / np.pi)
    elif shape == "triangle":
        side = np.sqrt(2 * mass)
        cy -= side / 6
    else:
        side = max(width, height)
        cx, cy = (centres * column_profile).sum() / width, profile_cy
    counts = np.bincount(labels[ys, xs] + 1, minlength=len(COLOUR_NAMES) + 1)[1:]
    purity = float(counts.max() / len(pixels))
    colour = COLOUR_NAMES[int(counts.argmax())] if purity >= MIN_COLOUR_PURITY else None
    side, cx, cy = float(side / canvas), float(cx / canvas), float(cy / canvas)
    size = next((n for n, s in SIZES.items() if abs(side - s) <= SIZE_TOLERANCE[n]), None)
    return DetectedObject(
        colour=colour,
        shape=shape,
        size=size,
        row=nearest_cell(cy, ROWS),
        column=nearest_cell(cx, COLUMNS),
        cx=cx,
        cy=cy,
        side=side,
        area=float(mass / canvas**2),
        purity=purity,
        fill=fill,
        lower_share=lower_share,
    )


def detect_objects(image: Image.Image) -> tuple[list[DetectedObject], float]:
    """Objects in a square RGB image, largest first, and the stray foreground area (units S^2)."""
    if image.width != image.height:
        raise ValueError(f"the judge needs a square image, got {image.width}x{image.height}")
    canvas = image.width
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    labels, alpha, foreground = pixel_labels(rgb)
    objects, stray = [], 0
    for pixels in connected_components(foreground):
        if len(pixels) >= MIN_OBJECT_AREA * canvas**2:
            objects.append(measure(pixels, labels, alpha))
        else:
            stray += len(pixels)
    objects.sort(key=lambda o: -o.area)
    return objects, stray / canvas**2


def _object_failures(want: dict, got: DetectedObject | None, tag: str) -> dict[str, str]:
    """Failed attributes of one asked-for object against its matched detection."""
    if got is None:
        asked = ["colour", "shape"] + ["size"] * bool(want.get("size"))
        asked += ["position"] * bool(want.get("row"))
        return {a: f"{tag} ({want['colour']} {want['shape']}) is missing" for a in asked}
    failures = {}
    if got.colour != want["colour"]:
        failures["colour"] = f"{tag}: expected {want['colour']}, found {got.colour or 'mixed'}"
    if got.shape != want["shape"]:
        failures["shape"] = f"{tag}: expected {want['shape']}, found {got.shape or 'no shape'}"
    if want.get("size") and got.size != want["size"]:
        found = got.size or f"side {got.side:.2f} S"
        failures["size"] = f"{tag}: expected {want['size']}, found {found}"
    if want.get("row") and (got.row, got.column) != (want["row"], want["column"]):
        failures["position"] = (
            f"{tag}: expected {want['row']} {want['column']}, found centre at "
            f"({got.cx:.2f}, {got.cy:.2f}) S ({got.row or 'between rows'}, "
            f"{got.column or 'between columns'})"
        )
    return failures


def _relation_holds(relation: str, a: DetectedObject, b: DetectedObject) -> bool:
    dx, dy = b.cx - a.cx, b.cy - a.cy
    return {
        "left of": dx > RELATION_MARGIN,
        "right of": -dx > RELATION_MARGIN,
        "above": dy > RELATION_MARGIN,
        "below": -dy > RELATION_MARGIN,
    }[relation]


def judge_image(image: Image.Image, spec: dict) -> dict:
    """Judge one picture against its spec (an in-context spec: judge_incontext).

    Returns {"pass": bool, "failures": {attribute: reason}, "checked": [attributes],
    "found": [detected objects]}.
    """
    if spec.get("transform"):
        return judge_incontext(image, spec)
    detected, stray = detect_objects(image)
    wanted = spec["objects"]
    # Match asked-for objects to detections: the assignment with the fewest failures.
    candidates = detected[:12] + [None] * len(wanted)
    tags = [f"object {chr(65 + i)}" for i in range(len(wanted))] if len(wanted) > 1 else ["object"]
    best: tuple[int, dict, tuple] | None = None
    for assignment in itertools.permutations(candidates, len(wanted)):
        failures: dict[str, str] = {}
        for tag, want, got in zip(tags, wanted, assignment, strict=True):
            for attribute, reason in _object_failures(want, got, tag).items():
                failures.setdefault(attribute, reason)
        if best is None or len(failures) < len(best[1]):
            best = (len(failures), failures, assignment)
    assert best is not None
    _, failures, assignment = best
    if len(detected) != len(wanted):
        failures["count"] = f"expected {len(wanted)} object(s), found {len(detected)}"
    elif stray > MAX_STRAY_AREA:
        failures["count"] = f"stray marks cover {stray:.3f} S^2 outside the objects"
    checked = ["count", "colour", "shape"]
    if any(w.get("size") for w in wanted):
        checked.append("size")
    if any(w.get("row") for w in wanted):
        checked.append("position")
    if spec.get("relation"):
        checked.append("relation")
        a, b = assignment[0], assignment[1]
        if a is None or b is None:
            failures["relation"] = "cannot check the relation: an object is missing"
        elif not _relation_holds(spec["relation"], a, b):
            failures["relation"] = (
                f"expected A {spec['relation']} B, found A at ({a.cx:.2f}, {a.cy:.2f}) S and "
                f"B at ({b.cx:.2f}, {b.cy:.2f}) S"
            )
    return {
        "pass": not failures,
        "failures": failures,
        "checked": checked,
        "found": [asdict(o) for o in detected],
    }


def judge_incontext(image: Image.Image, spec: dict) -> dict:
    """Judge a two-panel picture: one object in each half, and the bottom one the top one as
    read from the pixels, transformed by spec["transform"] (recolour: its colour; reshape: its
    shape; mirror: x -> 1 - x), half a canvas lower, within PANEL_TOLERANCE. The top must differ
    from what the transform asks (another colour or shape; mirrored: off the centre line), so
    that a copy of it never passes."""
    detected, stray = detect_objects(image)
    top = [o for o in detected if o.cy < 0.5]
    bottom = [o for o in detected if o.cy >= 0.5]
    failures = {}
    if len(top) != 1 or len(bottom) != 1:
        failures["count"] = (
            f"expected one object in each panel, found {len(top)} above, {len(bottom)} below"
        )
    elif stray > MAX_STRAY_AREA:
        failures["count"] = f"stray marks cover {stray:.3f} S^2 outside the objects"
    checked = ["count", "colour", "shape", "position"]
    if not (top and bottom):
        missing = "no object above" if not top else "no object below"
        failures |= {attribute: missing for attribute in checked[1:]}
        return {"pass": False, "failures": failures, "checked": checked, "found": []}
    a, b, transform = top[0], bottom[0], spec["transform"]
    colour, shape = transform.get("colour", a.colour), transform.get("shape", a.shape)
    mirrored = transform["kind"] == "mirror"
    x = 1 - a.cx if mirrored else a.cx
    if b.colour is None or b.colour != colour or (a.colour == colour) == ("colour" in transform):
        failures["colour"] = f"the top is {a.colour}, below is {b.colour}; wanted {colour} below"
    if b.shape is None or b.shape != shape or (a.shape == shape) == ("shape" in transform):
        failures["shape"] = f"the top is a {a.shape}, below a {b.shape}; wanted a {shape} below"
    placed = abs(b.cx - x) <= PANEL_TOLERANCE and abs(b.cy - a.cy - 0.5) <= PANEL_TOLERANCE
    if not placed or (mirrored and abs(a.cx - 0.5) <= PANEL_TOLERANCE):
        failures["position"] = (
            f"the top at ({a.cx:.2f}, {a.cy:.2f}) S, below at ({b.cx:.2f}, {b.cy:.2f}) S; "
            f"wanted below at ({x:.2f}, {a.cy + 0.5:.2f}) S"
        )
    found = [asdict(o) for o in detected]
    return {"pass": not failures, "failures": failures, "checked": checked, "found": found}


def judge_edit(image: Image.Image, spec: dict) -> dict:
    """Judge an edited picture: the edited scene's spec as judge_image does, and the object
    spec["kept"] (outside the region) still there: its colour and shape within KEPT_TOLERANCE
    of where it was (attribute `kept`)."""
    result = judge_image(image, spec)
    want, canvas = spec["objects"][spec["kept"]], spec["canvas"]
    cx, cy = (c / canvas for c in want["center_px"])
    stayed = any(
        o["colour"] == want["colour"]
        and o["shape"] == want["shape"]
        and abs(o["cx"] - cx) <= KEPT_TOLERANCE
        and abs(o["cy"] - cy) <= KEPT_TOLERANCE
        for o in result["found"]
    )
    result["checked"].append("kept")
    if not stayed:
        result["failures"]["kept"] = (
            f"the {want['colour']} {want['shape']} outside the region is no longer at "
            f"({cx:.2f}, {cy:.2f}) S"
        )
        result["pass"] = False
    return result


def summarize(results: dict[str, dict]) -> dict:
    """Accuracy overall and per attribute over {name: judge_image result}."""
    per_attribute = {}
    for attribute in ATTRIBUTES:
        judged = [r for r in results.values() if attribute in r["checked"]]
        if judged:
            ok = sum(attribute not in r["failures"] for r in judged)
            per_attribute[attribute] = {"accuracy": ok / len(judged), "n": len(judged)}
    n = len(results)
    return {
        "n": n,
        "accuracy": sum(r["pass"] for r in results.values()) / n if n else 0.0,
        "per_attribute": per_attribute,
        "failures": {name: r["failures"] for name, r in sorted(results.items()) if not r["pass"]},
    }


def judge_folder(folder: str | Path, progress: bool = True) -> dict:
    """Judge every NAME.png in `folder` against its NAME.json; return the summary report."""
    from tqdm import tqdm

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder {str(folder)!r} to judge")
    specs = sorted(folder.glob("*.json"))
    specs = [s for s in specs if s.with_suffix(".png").exists()]
    if not specs:
        raise FileNotFoundError(f"{str(folder)!r} holds no NAME.png with a NAME.json beside it")
    results = {}
    for spec_path in tqdm(specs, desc="judging", disable=not progress):
        spec = json.loads(spec_path.read_text())
        with Image.open(spec_path.with_suffix(".png")) as image:
            results[spec_path.stem] = judge_image(image, spec)
    return summarize(results)
