import dataclasses

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from dalle1.shapes.judge import connected_components, judge_edit, judge_image, summarize
from dalle1.shapes.scenes import (
    PALETTE,
    Scene,
    SceneObject,
    edit_request,
    make_scene,
    render,
)

S = 64
HOLDOUT = {("red", "triangle"), ("blue", "circle")}


def single(colour="red", shape="circle", size="small", row="top", column="left", cx=0.25, cy=0.25):
    side = {"small": 0.22, "large": 0.38}[size]
    obj = SceneObject(colour, shape, size, row, column, cx, cy, side)
    return Scene([obj], f"a {size} {colour} {shape}")


def pair(relation="left of", a=("red", "circle"), b=("green", "square")):
    centres = {"left of": ((0.25, 0.5), (0.75, 0.5)), "above": ((0.5, 0.25), (0.5, 0.75))}
    (ax, ay), (bx, by) = centres[relation]
    objs = [
        SceneObject(*a, None, None, None, ax, ay, 0.26),
        SceneObject(*b, None, None, None, bx, by, 0.26),
    ]
    return Scene(objs, "a pair", relation)


def judge(drawn: Scene, asked: Scene | None = None, size: int = S) -> dict:
    return judge_image(render(drawn, size), (asked or drawn).spec(size))


@pytest.mark.parametrize("split", ["train", "single", "pair", "novel"])
def test_every_clean_render_passes(split):
    for i in range(60):
        scene = make_scene(split, i, 7, HOLDOUT)
        result = judge(scene)
        assert result["pass"], (scene.caption, result["failures"])


@pytest.mark.parametrize("size", [32, 128, 256])
def test_clean_renders_pass_at_other_canvas_sizes(size):
    for split in ("single", "pair"):
        for i in range(8):
            scene = make_scene(split, i, 1, HOLDOUT)
            assert judge(scene, size=size)["pass"], (size, scene.caption)


@pytest.mark.parametrize("split", ["train", "single", "pair", "novel"])
def test_blurred_renders_pass(split):
    n, passed = 150, 0
    for i in range(n):
        scene = make_scene(split, i, 11, HOLDOUT)
        blurred = render(scene, S).filter(ImageFilter.GaussianBlur(1))
        passed += judge_image(blurred, scene.spec(S))["pass"]
    assert passed / n >= 0.99


def replace(scene: Scene, **changes) -> Scene:
    return Scene([dataclasses.replace(scene.objects[0], **changes)], scene.caption)


@pytest.mark.parametrize("wrong", ["green", "blue", "yellow", "purple", "cyan"])
def test_wrong_colour_fails(wrong):
    asked = single(colour="red")
    result = judge(replace(asked, colour=wrong), asked)
    assert not result["pass"] and set(result["failures"]) == {"colour"}


@pytest.mark.parametrize("asked_shape", ["circle", "square", "triangle"])
@pytest.mark.parametrize("drawn_shape", ["circle", "square", "triangle"])
@pytest.mark.parametrize("size", ["small", "large"])
def test_wrong_shape_fails(asked_shape, drawn_shape, size):
    asked = single(shape=asked_shape, size=size, cx=0.5, cy=0.5, row="middle", column="center")
    result = judge(replace(asked, shape=drawn_shape), asked)
    assert result["pass"] == (asked_shape == drawn_shape)
    if asked_shape != drawn_shape:
        assert "shape" in result["failures"]


def test_upside_down_triangle_is_no_triangle():
    image = Image.new("RGB", (S, S), "white")
    ImageDraw.Draw(image).polygon([(20, 20), (44, 20), (32, 44)], fill=PALETTE["red"])
    spec = single(shape="triangle", size="large", cx=0.5, cy=0.5, row="middle", column="center")
    assert "shape" in judge_image(image, spec.spec(S))["failures"]


@pytest.mark.parametrize("asked, drawn_side", [("small", 0.38), ("large", 0.22), ("small", 0.30)])
def test_wrong_size_fails(asked, drawn_side):
    spec = single(size=asked, cx=0.5, cy=0.5, row="middle", column="center")
    result = judge(replace(spec, side=drawn_side), spec)
    assert set(result["failures"]) == {"size"}


@pytest.mark.parametrize("cx, cy", [(0.5, 0.25), (0.25, 0.5), (0.75, 0.75), (0.375, 0.25)])
def test_wrong_or_ambiguous_cell_fails(cx, cy):
    asked = single(row="top", column="left", cx=0.25, cy=0.25)
    result = judge(replace(asked, cx=cx, cy=cy), asked)
    assert set(result["failures"]) == {"position"}


@pytest.mark.parametrize("relation", ["left of", "above"])
def test_broken_relation_fails(relation):
    asked = pair(relation)
    a, b = asked.objects
    swapped = Scene(
        [dataclasses.replace(a, cx=b.cx, cy=b.cy), dataclasses.replace(b, cx=a.cx, cy=a.cy)],
        "x",
        relation,
    )
    assert judge(asked)["pass"]
    assert set(judge(swapped, asked)["failures"]) == {"relation"}


def test_objects_too_close_for_the_relation_fail():
    asked = pair("left of")
    a, b = asked.objects
    close = Scene([a, dataclasses.replace(b, cx=a.cx + 0.08, cy=a.cy + 0.3)], "x", "left of")
    assert "relation" in judge(close, asked)["failures"]


def test_missing_object_fails():
    asked = pair("left of")
    result = judge(Scene(asked.objects[:1], "x", "left of"), asked)
    assert {"count", "relation"} <= set(result["failures"]) and not result["pass"]


def test_extra_object_fails():
    asked = single()
    extra = SceneObject("green", "square", "small", "bottom", "right", 0.75, 0.75, 0.22)
    result = judge(Scene(asked.objects + [extra], "x"), asked)
    assert set(result["failures"]) == {"count"}


def test_empty_image_fails():
    result = judge_image(Image.new("RGB", (S, S), "white"), single().spec(S))
    assert not result["pass"] and {"count", "colour", "shape"} <= set(result["failures"])


def test_two_coloured_object_fails_colour():
    image = Image.new("RGB", (S, S), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([8, 8, 15, 21], fill=PALETTE["red"])
    draw.rectangle([16, 8, 21, 21], fill=PALETTE["green"])
    spec = single(shape="square", cx=0.23, cy=0.23)
    assert "colour" in judge_image(image, spec.spec(S))["failures"]


def test_summary_counts_each_attribute_where_it_applies():
    ok = single()
    results = {
        "good": judge(ok),
        "bad_colour": judge(replace(ok, colour="green"), ok),
        "pair": judge(pair()),
    }
    report = summarize(results)
    assert report["n"] == 3 and report["accuracy"] == pytest.approx(2 / 3)
    assert report["per_attribute"]["colour"] == {"accuracy": pytest.approx(2 / 3), "n": 3}
    assert report["per_attribute"]["relation"]["n"] == 1
    assert report["per_attribute"]["size"]["n"] == 2
    assert list(report["failures"]) == ["bad_colour"]
    assert "expected red, found green" in report["failures"]["bad_colour"]["colour"]


def test_connected_components_join_diagonals_only_where_they_touch():
    mask = np.zeros((6, 8), dtype=bool)
    mask[0, 0] = mask[1, 1] = mask[2, 2] = True  # a diagonal line: one component
    mask[0, 4:6] = True
    mask[2, 6] = True  # alone: two rows below the run above
    mask[4, :] = True
    mask[5, 7] = True  # touches row 4
    sizes = sorted(len(c) for c in connected_components(mask))
    assert sizes == [1, 2, 3, 9]


@pytest.mark.parametrize("index", range(6))
def test_an_edit_passes_only_with_the_new_object_in_the_box_and_the_other_kept(index):
    scene = make_scene("pair", index, 0, HOLDOUT)
    spec = scene.spec(S)
    box, caption, edited = edit_request(spec, f"pair_{index}", ["red:triangle", "blue:circle"])
    a, b = scene.objects
    new = edited["objects"][1]
    assert (new["colour"], new["shape"]) not in HOLDOUT | {(a.colour, a.shape)}
    assert new["colour"] != a.colour and new["shape"] != b.shape
    assert f"{new['colour']} {new['shape']}" in caption and f"{a.colour} {a.shape}" in caption
    x0, y0, x1, y1 = box  # around B, away from A's centre
    assert x0 < b.cx - b.side / 2 and b.cx + b.side / 2 < x1 and y0 < b.cy - b.side / 2
    assert not (x0 <= a.cx <= x1 and y0 <= a.cy <= y1)

    replaced = dataclasses.replace(b, colour=new["colour"], shape=new["shape"])
    assert judge_edit(render(Scene([a, replaced], caption, scene.relation), S), edited)["pass"]
    unedited = judge_edit(render(scene, S), edited)
    assert not unedited["pass"] and "kept" not in unedited["failures"]
    # The new object drawn, but the kept one moved or gone: the edit fails on `kept`.
    moved = dataclasses.replace(a, cx=a.cx + 0.08 * (1 if a.cx < 0.5 else -1))
    drifted = judge_edit(render(Scene([moved, replaced], caption, scene.relation), S), edited)
    assert "kept" in drifted["failures"]
    gone = judge_edit(render(Scene([replaced], caption), S), edited)
    assert "kept" in gone["failures"] and "count" in gone["failures"]


INCONTEXT_HELD = {("recolour", "triangle"), ("reshape", "square"), ("mirror", "circle")}


@pytest.mark.parametrize("split", ["incontext", "incontext_novel"])
def test_clean_incontext_renders_pass_and_wrong_bottoms_fail(split):
    for index in range(12):
        scene = make_scene(split, index, 0, HOLDOUT, 0.5, 0.0, INCONTEXT_HELD)
        assert judge(scene)["pass"], (scene.caption, judge(scene)["failures"])
        top, bottom = scene.objects
        copied = dataclasses.replace(top, cy=bottom.cy)  # the top, untransformed, below
        assert not judge(Scene([top, copied], scene.caption), scene)["pass"]
        other = next(c for c in PALETTE if c not in (top.colour, bottom.colour))
        wrong = dataclasses.replace(bottom, colour=other)
        assert "colour" in judge(Scene([top, wrong], scene.caption), scene)["failures"]
        shifted = dataclasses.replace(bottom, cx=bottom.cx + 0.15 * (1 if bottom.cx < 0.5 else -1))
        assert "position" in judge(Scene([top, shifted], scene.caption), scene)["failures"]
        assert "count" in judge(Scene([top], scene.caption), scene)["failures"]
        extra = dataclasses.replace(top, cx=1 - top.cx, colour=other)
        if abs(top.cx - 0.5) > 0.2:  # room for a second object in the top panel
            assert "count" in judge(Scene([top, extra, bottom], scene.caption), scene)["failures"]
