"""The icon grid: the data command on a few icons, the held-out cells, the judge, the benchmark.

The tests build a small @iconify/json tarball of their own (three withicons-* sets of simple
coloured drawings, glyphs and variants among them) so that they need no network; the real package
goes through the same code (`python train.py icons`).
"""

import io
import json
import os
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

import train
from dalle1.icons.data import (
    PACKAGE_VERSION,
    IconsConfig,
    captions,
    choose_cells,
    load_images,
    object_names,
    read_cells,
    write_icons,
)
from dalle1.icons.judge import (
    IconJudge,
    frechet_distance,
    judge_accuracy,
    score_cells,
    to_tensor,
    train_judge,
    zoom,
)

# Each object a different drawing; each style a different palette (fill, outline).
DRAWINGS = {
    "apple": '<circle cx="12" cy="13" r="8" fill="{fill}" stroke="{line}" stroke-width="1.5"/>',
    "tent": '<path d="M12 3 L21 20 L3 20 Z" fill="{fill}" stroke="{line}" stroke-width="1.5"/>',
    "book": '<rect x="5" y="3" width="14" height="18" fill="{fill}" stroke="{line}"/>',
    "key": '<rect x="2" y="10" width="20" height="4" fill="{fill}" stroke="{line}"/>',
    "bell": '<path d="M4 18 Q12 0 20 18 Z" fill="{fill}" stroke="{line}" stroke-width="1.5"/>',
    "bell-ring": '<path d="M4 18 Q12 0 20 18 Z" fill="{fill}"/><circle cx="20" cy="4" r="2"/>',
    "books": '<rect x="3" y="3" width="8" height="18" fill="{fill}"/>',
    "arrow-left": '<path d="M20 12 H4 M4 12 L10 6" stroke="{line}" stroke-width="2"/>',
}
STYLES = {
    "clay": ("#e07040", "#402010"),
    "glass": ("#60a0f0", "#103060"),
    "retro": ("#f0d020", "#000000"),
}
OBJECTS = ["apple", "bell", "book", "key", "tent"]  # what the rule keeps of DRAWINGS
ROOT = Path(__file__).resolve().parents[1]


def write_tarball(folder: Path) -> Path:
    """An @iconify/json tarball with three withicons sets of DRAWINGS, in npm pack's layout."""
    tarball = folder / f"iconify-json-{PACKAGE_VERSION}.tgz"
    with tarfile.open(tarball, "w:gz") as archive:
        for style, (fill, line) in STYLES.items():
            icons = {n: {"body": d.format(fill=fill, line=line)} for n, d in DRAWINGS.items()}
            info = {"name": f"with icons {style}", "license": {"spdx": "MIT"}}
            info["author"] = {"name": "test"}
            record = {"prefix": f"withicons-{style}", "info": info, "icons": icons}
            record |= {"width": 24, "height": 24}
            data = json.dumps(record).encode()
            member = tarfile.TarInfo(f"package/json/withicons-{style}.json")
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return tarball


@pytest.fixture(scope="module")
def icons(tmp_path_factory) -> Path:
    """The data command run on the test tarball: 5 objects x 3 styles at 32 px."""
    root = tmp_path_factory.mktemp("icons")
    write_tarball(root)
    out = root / "icons"
    argv = ["icons", "--out", str(out), "--size", "32", f"cache={root}", "test_size=24"]
    assert train.main(argv) == 0
    return out


def test_object_rule_drops_glyphs_variants_and_plurals():
    names = ["bell", "bell-ring", "arrow-left", "align-top", "file", "files", "chef-hat"]
    assert object_names(names) == ["bell", "chef-hat", "file"]


def test_data_command_writes_captioned_folders_and_held_out_cells(icons):
    summary = json.loads((icons / "icons.json").read_text())
    assert summary["objects"] == OBJECTS and summary["styles"] == sorted(STYLES)
    assert summary["licenses"] == {f"withicons-{s}": "MIT" for s in sorted(STYLES)}
    pngs = sorted((icons / "images").glob("*.png"))
    assert len(pngs) == len(OBJECTS) * len(STYLES)
    assert len(list((icons / "test_24").glob("*.png"))) == len(pngs)
    meta = json.loads((icons / "images" / "tent_clay.json").read_text())
    assert meta == {
        "object": "tent",
        "style": "clay",
        "set": "withicons-clay",
        "license": "MIT",
        "author": "test",
    }
    lines = (icons / "images" / "chef-hat_clay.txt", icons / "images" / "tent_clay.txt")
    assert not lines[0].exists()
    assert lines[1].read_text().splitlines() == captions("tent", "clay")
    assert captions("chef-hat", "soft 3d")[0] == "chef hat, soft 3d style"
    assert captions("anchor", "anime")[1:3] == ["an anchor in anime style", "an anime style anchor"]
    with Image.open(pngs[0]) as image:  # flattened on white, at the asked size
        assert image.mode == "RGB" and image.size == (32, 32)
        assert image.getpixel((0, 0)) == (255, 255, 255)
    for seed in (0, 1):
        split = icons / f"split_{seed}"
        cells = read_cells(split)
        held = {tuple(c) for c in cells["heldout"]}
        train_names = {p.stem for p in (split / "train").glob("*.png")}
        held_names = {p.stem for p in (split / "heldout").glob("*.png")}
        assert held_names == {f"{o}_{s}" for o, s in held}
        assert not train_names & held_names
        assert len(train_names) + len(held_names) == len(pngs)
        # every object and every style still appears in training
        assert {n.split("_")[0] for n in train_names} == set(OBJECTS)
        assert {n.split("_")[1] for n in train_names} == set(STYLES)
        assert all((split / "train" / f"{n}.txt").read_text() for n in sorted(train_names)[:3])
    assert read_cells(icons / "split_0") != read_cells(icons / "split_1")


def test_held_out_cells_at_the_grid_size_are_balanced():
    objects = [f"object{i}" for i in range(458)]
    styles = [f"style{i}" for i in range(26)]
    for seed in (0, 1):
        cells = choose_cells(objects, styles, seed)
        held, seen = cells["heldout"], cells["seen"]
        assert sorted(o for o, _ in held) == sorted(objects)  # one per object
        counts = Counter(s for _, s in held)
        assert set(counts) == set(styles) and max(counts.values()) - min(counts.values()) <= 1
        assert not {tuple(c) for c in held} & {tuple(c) for c in seen}
        assert len(seen) == len(objects)
        seen_counts = Counter(s for _, s in seen).values()
        assert max(seen_counts) - min(seen_counts) <= 1
    assert choose_cells(objects, styles, 0) != choose_cells(objects, styles, 1)


def test_data_command_errors_name_the_problem(tmp_path, monkeypatch, capsys):
    assert train.main(["icons", "--out", str(tmp_path), "--size", "8"]) == 2
    monkeypatch.setattr("shutil.which", lambda name: None)  # no npm, no tarball in the cache
    argv = ["icons", "--out", str(tmp_path / "y"), f"cache={tmp_path / 'empty'}"]
    assert train.main(argv) == 2
    assert "npm is needed" in capsys.readouterr().err
    monkeypatch.undo()
    config = IconsConfig(out=str(tmp_path / "x"), cache=str(tmp_path), sets=("nosuch",))
    write_tarball(tmp_path)
    with pytest.raises(ValueError, match="nosuch"):
        write_icons(config, progress=False)


@pytest.fixture(scope="module")
def judge_dir(icons, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("judge")
    train_judge(icons, out, steps=150, batch_size=32, width=8, progress=False)
    return out


@pytest.fixture(scope="module")
def judge(judge_dir) -> IconJudge:
    return IconJudge.from_pretrained(judge_dir).eval()


def test_judge_reads_unseen_renderings_and_fails_wrong_labels(icons, judge):
    accuracy = judge_accuracy(judge, icons)
    assert set(accuracy) == {"test_24", "test_24_zoom1.15"}
    assert accuracy["test_24"]["object"] >= 0.9 and accuracy["test_24"]["style"] >= 0.9
    cells = [[o, s] for o in OBJECTS for s in sorted(STYLES)]
    images = to_tensor(load_images(icons / "images", cells, 32))
    right = score_cells(judge, images, cells)
    assert right["both"] >= 0.9
    wrong = [[OBJECTS[(OBJECTS.index(o) + 1) % len(OBJECTS)], s] for o, s in cells]
    assert score_cells(judge, images, wrong)["object"] <= 0.2  # the judge is not lenient
    blank = torch.ones(4, 3, 32, 32)
    assert zoom(blank, 1.15).shape == blank.shape
    assert judge.config.objects == OBJECTS and judge.config.styles == sorted(STYLES)


def test_judge_accuracy_is_saved_with_it(judge_dir):
    saved = json.loads((judge_dir / "accuracy.json").read_text())
    assert 0 <= saved["test_24"]["object"] <= 1


def test_frechet_distance_is_zero_for_the_same_set_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 8, generator=g)
    b = torch.randn(400, 8, generator=g)
    assert abs(frechet_distance(a, a)) < 1e-6
    near, far = frechet_distance(a, b), frechet_distance(a, b + 2)
    assert 0 <= near < 0.5 and far == pytest.approx(near + 4 * 8, rel=0.05)
    assert frechet_distance(b, a) == pytest.approx(near, abs=1e-6)


@pytest.mark.slow
def test_gpu_icons_script_at_tiny_sizes(tmp_path):
    """bench/gpu_icons.sh with TINY=1 on the CPU: data, judge, train.py all on the icons split,
    the benchmark, the table. Every figure lies in [0, 1] and the grids are written."""
    write_tarball(tmp_path)
    env = os.environ | {"TINY": "1", "ICONS_CACHE": str(tmp_path), "PYTHON": sys.executable}
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_icons.sh"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "| dalle |" in done.stdout and "| heldout (5) | first |" in done.stdout
    report = json.loads((out / "eval.json").read_text())
    for suite in ("heldout", "seen"):
        assert report[suite]["n"] == len(OBJECTS)
        for pick in ("first", "clip_top1_of_16", "tokenizer_ceiling"):
            values = report[suite][pick]
            assert all(0 <= values[m] <= 1 for m in ("object", "object_top5", "style", "both"))
        assert report[suite]["first"]["frechet"] >= 0
        ceiling = report[suite]["any_of_16"]  # no pick of the 16 can beat "any of them"
        for m in ("object", "object_top5", "style", "both"):
            picks = [report[suite][p][m] for p in ("first", "clip_top1_of_16")]
            assert ceiling[m] >= max(picks) - 1e-6  # the picks' means are float32
    assert (out / "grids" / "heldout.png").is_file()
    assert (out / "run" / "dalle" / "best" / "model.safetensors").is_file()
