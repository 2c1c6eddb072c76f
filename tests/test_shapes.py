import json

import numpy as np
import pytest

import dalle1.shapes.scenes as scenes_module
from dalle1.shapes.scenes import (
    CELL_CENTRES,
    COLUMNS,
    PAIR_SIDE,
    PALETTE,
    PANEL_SIDE,
    ROWS,
    SIZES,
    TRANSFORMS,
    ShapesConfig,
    make_scene,
    parse_pairs,
    render,
    write_split,
)

HOLDOUT = {("red", "triangle"), ("blue", "circle")}


def scenes(split, n=600, seed=0):
    return [make_scene(split, i, seed, HOLDOUT) for i in range(n)]


def test_same_seed_same_files_and_other_seed_other_scenes(tmp_path, monkeypatch):
    monkeypatch.setattr(scenes_module, "SCENES_PER_TASK", 5)
    # b is written by two processes, 5 scenes a task: the same files as a, by one
    for name, seed, workers in [("a", 3, 1), ("b", 3, 2), ("c", 4, 1)]:
        config = ShapesConfig(out=str(tmp_path / name), n=12, seed=seed)
        write_split(config, progress=False, workers=workers)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert len(files) == 36
    for file in files:
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()
    captions_a = [(tmp_path / "a" / f).read_text() for f in files if f.endswith(".json")]
    captions_c = [(tmp_path / "c" / f).read_text() for f in files if f.endswith(".json")]
    assert sum(a != c for a, c in zip(captions_a, captions_c, strict=True)) >= 10


def test_single_object_geometry_follows_the_spec():
    for scene in scenes("single"):
        (obj,) = scene.objects
        assert obj.side == SIZES[obj.size]
        assert abs(obj.cx - CELL_CENTRES[COLUMNS.index(obj.column)]) <= 0.04 + 1e-9
        assert abs(obj.cy - CELL_CENTRES[ROWS.index(obj.row)]) <= 0.04 + 1e-9
        assert 0 <= obj.cx - obj.side / 2 and obj.cx + obj.side / 2 <= 1
        assert 0 <= obj.cy - obj.side / 2 and obj.cy + obj.side / 2 <= 1
        assert f"{obj.colour} {obj.shape}" in scene.caption and obj.size in scene.caption
        assert scene.caption == scene.caption.lower() and scene.relation is None


def test_two_object_geometry_follows_the_spec():
    relations = set()
    for scene in scenes("pair"):
        a, b = scene.objects
        relations.add(scene.relation)
        assert a.side == b.side == PAIR_SIDE and a.colour != b.colour
        for o in (a, b):
            assert PAIR_SIDE / 2 - 1e-9 <= min(o.cx, o.cy) and max(o.cx, o.cy) <= 1 - PAIR_SIDE / 2
        dx, dy = b.cx - a.cx, b.cy - a.cy
        along, across = {
            "left of": (dx, dy),
            "right of": (-dx, dy),
            "above": (dy, dx),
            "below": (-dy, dx),
        }[scene.relation]
        assert along >= 0.4 - 1e-9 and abs(across) <= 0.15 + 1e-9
        assert scene.caption.index(a.colour) < scene.caption.index(b.colour)
    assert relations == {"left of", "right of", "above", "below"}


def test_held_out_pairs_never_appear_in_seen_splits():
    for split in ("train", "single", "pair"):
        for scene in scenes(split):
            for obj in scene.objects:
                assert (obj.colour, obj.shape) not in HOLDOUT, (split, scene.caption)
    novel = scenes("novel", 200)
    assert {(s.objects[0].colour, s.objects[0].shape) for s in novel} == HOLDOUT
    assert all(len(s.objects) == 1 for s in novel)


def test_train_mixes_one_and_two_object_scenes():
    counts = [len(s.objects) for s in scenes("train", 400)]
    assert 0.4 < counts.count(2) / len(counts) < 0.6 and counts.count(1) + counts.count(2) == 400


@pytest.mark.parametrize("size", [32, 64, 256])
def test_render_uses_the_exact_palette_on_white(size):
    scene = make_scene("single", 5, 0, HOLDOUT)
    (obj,) = scene.objects
    pixels = np.asarray(render(scene, size))
    assert pixels.shape == (size, size, 3)
    assert tuple(pixels[int(obj.cy * size), int(obj.cx * size)]) == PALETTE[obj.colour]
    far_x = 0 if obj.cx > 0.5 else size - 1
    assert tuple(pixels[0 if obj.cy > 0.5 else size - 1, far_x]) == (255, 255, 255)
    # Anti-aliased: some edge pixels are blends, neither background nor the palette colour.
    blends = ~np.all(pixels == 255, -1) & ~np.all(pixels == PALETTE[obj.colour], -1)
    assert blends.sum() > 0


def test_spec_file_records_what_the_caption_says(tmp_path):
    write_split(ShapesConfig(out=str(tmp_path), n=4, split="pair"), progress=False)
    spec = json.loads((tmp_path / "pair_000000.json").read_text())
    caption = (tmp_path / "pair_000000.txt").read_text().strip()
    assert spec["caption"] == caption and spec["canvas"] == 64
    assert spec["relation"] in {"left of", "right of", "above", "below"}
    assert [o["size"] for o in spec["objects"]] == [None, None]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"size": 30}, "multiple of 8"),
        ({"size": 264}, "multiple of 8"),
        ({"split": "test"}, "split must be one of"),
        ({"split": "novel", "holdout": []}, "needs at least one held-out pair"),
        ({"holdout": ["red:hexagon"]}, "COLOUR:SHAPE"),
        ({"n": 0}, "at least 1"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ShapesConfig(**kwargs)


def test_parse_pairs_accepts_text_and_lists():
    assert parse_pairs("red:triangle, blue:circle") == HOLDOUT
    assert parse_pairs(["red:triangle"]) == {("red", "triangle")}


COMBINATIONS = {("recolour", "triangle"), ("reshape", "square"), ("mirror", "circle")}


def incontext(split, n=300, fraction=0.0):
    return [make_scene(split, i, 0, HOLDOUT, 0.5, fraction, COMBINATIONS) for i in range(n)]


def test_incontext_scenes_transform_the_top_object_below_and_hold_out_combinations():
    kinds = {"seen": set(), "novel": set()}
    for group, split in (("seen", "incontext"), ("novel", "incontext_novel")):
        for scene in incontext(split):
            top, bottom = scene.objects
            kind = scene.transform["kind"]
            kinds[group].add((kind, top.shape))
            # The caption names the top's shape, never its colour: that is read from the panel.
            assert f"the same {top.shape} below" in scene.caption
            assert top.colour not in scene.caption.replace(",", "").split()
            assert top.cy < 0.5 - PANEL_SIDE / 2 and abs(bottom.cy - top.cy - 0.5) < 1e-9
            for obj in (top, bottom):  # every object a seen (colour, shape)
                assert (obj.colour, obj.shape) not in HOLDOUT
            if kind == "recolour":
                assert bottom.colour != top.colour and bottom.shape == top.shape
                assert bottom.colour in scene.caption and bottom.cx == top.cx
            elif kind == "reshape":
                assert bottom.shape != top.shape and bottom.colour == top.colour
                assert bottom.shape in scene.caption
            else:
                assert abs(bottom.cx - (1 - top.cx)) < 1e-9 and abs(top.cx - 0.5) > 0.2
    assert kinds["novel"] == COMBINATIONS
    assert kinds["seen"] and not kinds["seen"] & COMBINATIONS
    assert {k for k, _ in kinds["seen"]} == set(TRANSFORMS)


def test_train_takes_its_share_of_incontext_scenes_and_none_held_out():
    mixed = incontext("train", 400, fraction=0.25)
    panels = [s for s in mixed if s.transform]
    assert 0.15 < len(panels) / len(mixed) < 0.35
    assert not {(s.transform["kind"], s.objects[0].shape) for s in panels} & COMBINATIONS
    # With no share the training scenes are those drawn before in-context scenes existed.
    plain = incontext("train", 50)
    assert [s.caption for s in plain] == [s.caption for s in scenes("train", 50)]
    assert not any(s.transform for s in plain)
    with pytest.raises(ValueError, match="TRANSFORM:SHAPE"):
        ShapesConfig(incontext_holdout=["rotate:circle"])
