"""The icon grid: real colour drawings of the same objects in many styles (SPEC section 3).

Source: npm's `@iconify/json` (2.2.553, pinned), its 26 `withicons-*` sets: 1,000 named icons,
each drawn in every set's style (anime, clay, retro, ...), SVG, MIT licensed (each set's
`info.license`). `python train.py icons --out DIR --size 64` fetches the package with `npm pack`
(the tarball only: no node_modules), installs the rasteriser `resvg-py` when it is missing, and
renders every kept icon flattened on white:

    DIR/images/OBJECT_STYLE.png   the drawing, S x S, on white
    DIR/images/OBJECT_STYLE.txt   captions: "chef hat, clay style" and natural variants
    DIR/images/OBJECT_STYLE.json  {"object", "style", "set", "license", "author"}
    DIR/test_T/OBJECT_STYLE.png   the same drawing rendered at T pixels: what the judge's
                                  accuracy is measured on (it never trains on these)
    DIR/split_SEED/train/         links to the seen cells' files: what `train.py all` trains on
    DIR/split_SEED/heldout/       links to the held-out cells' files: kept aside for evaluation
    DIR/split_SEED/cells.json     the held-out cells and as many seen cells, for the benchmark
    DIR/icons.json                the objects, styles, package version and licences

Which names are objects (the rule of `object_names`): a name is an interface glyph and left out
when one of its dash-separated words is in GLYPH_WORDS (arrows, alignment, text formatting,
charts, signs, media controls, plain geometric marks); of the rest, a name that extends another
kept name (`bell-ring` of `bell`, `file-check` of `file`) or is another's plural (`files`) is a
variant drawn from it with a small badge, and left out too, so that every object looks unlike
every other. 458 objects remain of 1,000.

Held-out cells (`split_SEED`): every object loses exactly one of its styles, chosen by the seed
so that each style loses as many objects as any other (within one): 1/26 of the cells, and every
object and every style still appears in training. The seen cells asked for by the benchmark are
one per object too, in another style, also balanced over the styles.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tarfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

logger = logging.getLogger(__name__)

PACKAGE = "@iconify/json"
PACKAGE_VERSION = "2.2.553"
RASTERISER = "resvg-py==0.5.0"
SET_PREFIX = "withicons-"
GLYPH_WORDS = frozenset(
    # arrows, alignment and layout
    "arrow arrows align chevron chevrons corner indent columns rows grid layout panel sidebar "
    "maximize minimize more move drag grip split wrap sort swap shuffle replace route workflow "
    # text and formatting
    "a heading bold italic underline strikethrough subscript superscript text type pilcrow case "
    "formatting spell contents captions language quote regex variable braces parentheses hash at "
    "sigma binary code api command terminal cursor list table kanban "
    # actions, states and media controls
    "in out log logs undo redo repeat refresh rotate reply forward share external link unlink "
    "copy paste edit close check minus plus x zoom filter scan crop toggle sliders loader ban "
    "search help info alert history fast skip rewind play pause stop download upload save volume "
    # signs, currencies, charts and plain marks
    "percent dollar euro yen sterling rupee sign chart trending activity audio waveform lines "
    "signal wifi bluetooth usb ethernet rss cast airplay podcast voicemail network webhook "
    "component square circle triangle hexagon octagon contrast aperture crosshair locate "
    "navigation infinity badge shapes qr barcode fingerprint contactless accessibility id app "
    "window dashboard template menu presentation picture gallery ungroup".split()
)
CAPTION_TEMPLATES = (  # the first is the one the benchmark asks with
    "{object}, {style} style",
    "{a_object} in {style} style",
    "{a_style} style {object}",
    "{style} style drawing of {a_object}",
    "an icon of {a_object}, {style} style",
)


@dataclass
class IconsConfig:
    """What `python train.py icons` writes."""

    out: str = "data/icons"  # the folder (see the module docstring)
    size: int = 64  # side in pixels: 64 for the CPU presets, 256 for the paper's 32x32 codes
    test_size: int = 48  # side of the judge's test renderings (DIR/test_T); 0 = none
    split_seeds: tuple[int, ...] = (0, 1)  # one split_SEED folder per seed (held-out choices)
    sets: tuple[str, ...] = ()  # set names without the withicons- prefix; () = all 26
    objects: int = 0  # keep the first N objects (by name) only; 0 = all (tests use a few)
    workers: int = 2  # rendering processes
    cache: str = ""  # where the npm tarball is kept; "" = ~/.cache/dalle1

    def __post_init__(self) -> None:
        if not 16 <= self.size <= 1024 or self.test_size and not 16 <= self.test_size <= 1024:
            raise ValueError(f"size and test_size must lie in 16..1024 pixels, got {self.size}")
        if self.test_size == self.size:
            raise ValueError("test_size must differ from size: the judge is tested on new renders")
        if self.objects < 0 or self.workers < 1:
            raise ValueError("objects must be >= 0 and workers >= 1")
        self.split_seeds, self.sets = tuple(self.split_seeds), tuple(self.sets)


def is_glyph(name: str) -> bool:
    return any(word in GLYPH_WORDS for word in name.split("-"))


def object_names(names: list[str]) -> list[str]:
    """The icon names that are objects (see the module docstring), sorted."""
    kept = sorted(n for n in set(names) if not is_glyph(n))
    base = set(kept)

    def variant(name: str) -> bool:
        words = name.split("-")
        prefixes = ("-".join(words[:i]) for i in range(1, len(words)))
        return any(p in base for p in prefixes) or (name.endswith("s") and name[:-1] in base)

    return [n for n in kept if not variant(n)]


def style_name(prefix: str) -> str:
    """withicons-soft3d -> 'soft 3d'."""
    return prefix.removeprefix(SET_PREFIX).replace("3d", " 3d").strip()


def with_article(words: str) -> str:
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


def captions(obj: str, style: str) -> list[str]:
    """The captions of one cell, e.g. "chef hat, clay style", "a chef hat in clay style"."""
    words = obj.replace("-", " ")
    names = {"object": words, "style": style}
    names |= {"a_object": with_article(words), "a_style": with_article(style)}
    return [t.format(**names) for t in CAPTION_TEMPLATES]


def cache_folder(config: IconsConfig) -> Path:
    return Path(config.cache) if config.cache else Path.home() / ".cache" / "dalle1"


def fetch_package(config: IconsConfig) -> Path:
    """The pinned @iconify/json tarball (fetched once with `npm pack`)."""
    folder = cache_folder(config)
    tarball = folder / f"iconify-json-{PACKAGE_VERSION}.tgz"
    if tarball.is_file():
        return tarball
    if shutil.which("npm") is None:
        raise FileNotFoundError(
            f"npm is needed to fetch {PACKAGE}@{PACKAGE_VERSION} (Debian: apt-get install npm), "
            f"or put its tarball at {tarball}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    logger.info("fetching %s@%s with npm pack (about 140 MB)", PACKAGE, PACKAGE_VERSION)
    done = subprocess.run(
        ["npm", "pack", f"{PACKAGE}@{PACKAGE_VERSION}", "--pack-destination", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0 or not tarball.is_file():
        raise FileNotFoundError(
            f"npm could not fetch {PACKAGE}@{PACKAGE_VERSION}: {done.stderr.strip()[-500:]}"
        )
    return tarball


def read_sets(tarball: Path, wanted: tuple[str, ...] = ()) -> dict[str, dict]:
    """{prefix: the set's IconifyJSON} for the withicons-* sets in the tarball (all or `wanted`)."""
    sets = {}
    with tarfile.open(tarball) as archive:
        for member in archive:
            name = Path(member.name).name
            prefix = name.removesuffix(".json")
            if not (name.startswith(SET_PREFIX) and name.endswith(".json")):
                continue
            if wanted and prefix.removeprefix(SET_PREFIX) not in wanted:
                continue
            sets[prefix] = json.load(archive.extractfile(member))
    missing = set(wanted) - {p.removeprefix(SET_PREFIX) for p in sets}
    if missing or not sets:
        raise ValueError(f"{tarball} holds no withicons set named {sorted(missing) or wanted}")
    return sets


def ensure_rasteriser() -> None:
    try:
        import resvg_py  # noqa: F401
    except ImportError:
        logger.info("installing the SVG rasteriser %s", RASTERISER)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", RASTERISER], check=True)


def svg_document(icon: dict, width: int, height: int) -> str:
    """An IconifyJSON icon (its body and optional size) as an SVG document."""
    w, h = icon.get("width", width), icon.get("height", height)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        f'width="{w}" height="{h}" viewBox="{icon.get("left", 0)} {icon.get("top", 0)} {w} {h}">'
        f"{icon['body']}</svg>"
    )


def render(svg: str, size: int) -> Image.Image:
    """The drawing at size x size, flattened on white, RGB."""
    import resvg_py

    png = resvg_py.svg_to_bytes(svg_string=svg, width=size, height=size, background="#ffffff")
    return Image.open(io.BytesIO(png)).convert("RGB")


def _render_job(job: tuple[str, int, Path]) -> str:
    svg, size, path = job
    render(svg, size).save(path)
    return path.name


def cell_name(obj: str, style: str) -> str:
    return f"{obj}_{style.replace(' ', '')}"


def choose_cells(objects: list[str], styles: list[str], seed: int) -> dict[str, list]:
    """{"heldout": [[object, style], ...], "seen": [...]}: one held-out and one seen benchmark
    cell per object, each list spread evenly over the styles (see the module docstring)."""
    rng = random.Random(seed)
    order = objects[:]
    rng.shuffle(order)
    shift = rng.randrange(len(styles))
    held, seen = [], []
    for i, obj in enumerate(order):
        held.append([obj, styles[(i + shift) % len(styles)]])
        if len(styles) > 1:  # a seen cell needs a second style
            seen.append([obj, styles[(i + shift + 1 + i // len(styles)) % len(styles)]])
    seen = [cell for cell in seen if cell not in held]
    return {"heldout": sorted(held), "seen": sorted(seen)}


def link_split(images: Path, folder: Path, cells: list[list[str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for obj, style in cells:
        for suffix in (".png", ".txt", ".json"):
            link = folder / f"{cell_name(obj, style)}{suffix}"
            link.unlink(missing_ok=True)
            link.symlink_to(os.path.relpath(images / link.name, folder))


def write_icons(config: IconsConfig, progress: bool = True) -> dict:
    """Render the chosen sets and write the splits (module docstring). Returns icons.json."""
    out = Path(config.out)
    sets = read_sets(fetch_package(config), config.sets)
    ensure_rasteriser()
    names = set.intersection(*(set(s["icons"]) for s in sets.values()))
    objects = object_names(sorted(names))
    if config.objects:
        objects = objects[: config.objects]
    styles = sorted(style_name(p) for p in sets)
    images, tests = out / "images", out / f"test_{config.test_size}"
    images.mkdir(parents=True, exist_ok=True)
    if config.test_size:
        tests.mkdir(exist_ok=True)
    jobs = []
    for prefix, icon_set in sorted(sets.items()):
        style, info = style_name(prefix), icon_set["info"]
        record = {"set": prefix, "license": info["license"]["spdx"]}
        record["author"] = info["author"]["name"]
        width, height = icon_set.get("width", 16), icon_set.get("height", 16)
        for obj in objects:
            stem = images / cell_name(obj, style)
            (stem.with_suffix(".txt")).write_text("\n".join(captions(obj, style)) + "\n")
            meta = {"object": obj, "style": style, **record}
            (stem.with_suffix(".json")).write_text(json.dumps(meta))
            svg = svg_document(icon_set["icons"][obj], width, height)
            jobs.append((svg, config.size, stem.with_suffix(".png")))
            if config.test_size:
                jobs.append((svg, config.test_size, tests / f"{stem.name}.png"))
    with ProcessPoolExecutor(config.workers) as pool:
        done = pool.map(_render_job, jobs, chunksize=64)
        for _ in tqdm(done, total=len(jobs), desc="rendering", disable=not progress):
            pass
    summary = {"package": f"{PACKAGE}@{PACKAGE_VERSION}", "size": config.size}
    summary |= {"objects": objects, "styles": styles, "images": len(objects) * len(styles)}
    summary["licenses"] = {p: s["info"]["license"]["spdx"] for p, s in sorted(sets.items())}
    for seed in config.split_seeds:
        cells = choose_cells(objects, styles, seed)
        split = out / f"split_{seed}"
        held = {tuple(c) for c in cells["heldout"]}
        train = [[o, s] for s in styles for o in objects if (o, s) not in held]
        link_split(images, split / "train", train)
        link_split(images, split / "heldout", cells["heldout"])
        (split / "cells.json").write_text(json.dumps({"seed": seed, **cells}, indent=0))
    (out / "icons.json").write_text(json.dumps(summary, indent=1))
    return summary


def read_cells(split: str | Path) -> dict[str, list[list[str]]]:
    """A split folder's cells.json: {"heldout": [[object, style], ...], "seen": [...]}."""
    path = Path(split) / "cells.json"
    if not path.is_file():
        raise FileNotFoundError(f"{str(split)!r} is not an icons split (no cells.json)")
    return json.loads(path.read_text())


def load_images(folder: str | Path, cells: list[list[str]], size: int) -> np.ndarray:
    """The cells' drawings from an images folder, (N, S, S, 3) uint8, resized to size."""
    arrays = []
    for obj, style in cells:
        with Image.open(Path(folder) / f"{cell_name(obj, style)}.png") as image:
            image = image.convert("RGB")
            if image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.LANCZOS)
            arrays.append(np.asarray(image))
    return np.stack(arrays)
