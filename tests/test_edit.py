"""Regenerating any region: fill() keeps what it must, the cache changes nothing, the kept
cells' likelihood is the model's, and bad regions are refused with a message."""

import pytest
import torch
from helpers import encode
from PIL import Image
from test_sampling import sharpened

from dalle1.__main__ import main as dalle1_main
from dalle1.pipeline import Pipeline, edit_scores
from dalle1.regions import box_mask, cell_region, parse_box, read_mask, to_model_size
from dalle1.sampling import SamplingConfig, fill, generate

# 4x4 grids of cells to keep (True) in raster order: a hole in the middle, scattered cells, the
# first cell sampled, the last rows sampled (completion).
KEPT = {
    "hole": [1, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 1, 1, 1],
    "scattered": [1, 0, 1, 1, 0, 1, 1, 0, 1, 1, 0, 1, 1, 1, 1, 0],
    "first cell": [0] + [1] * 15,
    "last rows": [1] * 8 + [0] * 8,
}


@pytest.mark.parametrize("attention", ["sparse", "causal"])
@pytest.mark.parametrize("kind", list(KEPT))
def test_kept_cells_stay_and_the_cache_changes_nothing(attention, kind, tiny_dalle, random_batch):
    model = sharpened(tiny_dalle(attention))
    text, given = random_batch(model, size=3)
    keep = torch.tensor(KEPT[kind], dtype=torch.bool)
    greedy = SamplingConfig(temperature=0)
    codes, loglik = fill(model, text, given, keep, greedy)
    assert torch.equal(codes[:, keep], given[:, keep])
    assert not torch.equal(codes[:, ~keep], given[:, ~keep])  # sampled, not copied
    slow_codes, slow_loglik = fill(model, text, given, keep, greedy, use_cache=False)
    assert torch.equal(codes, slow_codes)
    torch.testing.assert_close(loglik, slow_loglik, rtol=1e-5, atol=1e-5)
    # Sampled and guided too, with the same seed.
    guided = SamplingConfig(guidance_scale=2.0)
    runs = [
        fill(model, text, given, keep, guided, torch.Generator().manual_seed(3), use_cache=c)
        for c in (True, False)
    ]
    assert torch.equal(runs[0][0], runs[1][0])


def test_the_likelihood_is_the_models_own_for_the_kept_cells_after_the_region(
    tiny_dalle, random_batch
):
    model = sharpened(tiny_dalle())
    text, given = random_batch(model, size=2)
    keep = torch.tensor(KEPT["hole"], dtype=torch.bool)
    codes, loglik = fill(model, text, given, keep, SamplingConfig(temperature=0))
    with torch.no_grad():  # one teacher-forced pass over the finished codes
        logits = model.image_logits(text, codes).float()  # (B, cells, K)
    logp = logits.log_softmax(-1).gather(2, codes[..., None])[..., 0]
    after = keep & (torch.arange(16) > 5)  # kept cells after the first sampled one (cell 5)
    torch.testing.assert_close(loglik, logp[:, after].sum(1), rtol=1e-4, atol=1e-4)


def test_keeping_the_top_rows_is_completion(tiny_dalle, random_batch):
    model = sharpened(tiny_dalle())
    text, given = random_batch(model, size=2)
    keep = torch.tensor(KEPT["last rows"], dtype=torch.bool)
    seeded = lambda: torch.Generator().manual_seed(9)  # noqa: E731
    codes, loglik = fill(model, text, given, keep, SamplingConfig(), seeded())
    prefix = given[:, :8]
    assert torch.equal(codes, generate(model, text, SamplingConfig(), prefix, seeded()))
    assert torch.equal(loglik, torch.zeros(2))  # nothing kept after the region


def test_regions_become_cells_and_bad_ones_are_refused(tmp_path):
    mask = box_mask((17, 17, 23, 23), 64, 64)  # inside cell (2, 2) of an 8x8 grid of 8 px
    assert cell_region(mask, 8, dilate=False).nonzero().tolist() == [[2, 2]]
    assert cell_region(mask, 8).sum() == 9  # and its 8 neighbours
    assert parse_box("1,2,30,40") == (1, 2, 30, 40)
    for bad, message in [
        (lambda: box_mask((10, 10, 10, 20), 64, 64), "is empty"),
        (lambda: box_mask((70, 0, 90, 20), 64, 64), "outside the 64x64 image"),
        (lambda: parse_box("1,2,3"), "X0,Y0,X1,Y1"),
        (lambda: cell_region(torch.zeros(64, 64, dtype=torch.bool), 8), "region is empty"),
        (lambda: cell_region(torch.ones(60, 60, dtype=torch.bool), 8), "multiple of 8"),
    ]:
        with pytest.raises(ValueError, match=message):
            bad()
    path = tmp_path / "mask.png"
    Image.new("L", (40, 30)).save(path)
    with pytest.raises(ValueError, match="must have the image's size, 80x60"):
        read_mask(str(path), 60, 80)
    # A region of a 80x60 file follows the image through resizing and the centre crop.
    wide = box_mask((0, 0, 10, 60), 60, 80)  # the left 10 columns: cropped away at 32 px
    assert not to_model_size(wide, 32).any()


def test_the_likelihood_term_can_change_the_order():
    similarity = torch.tensor([0.30, 0.29, 0.10])
    loglik = torch.tensor([-50.0, -10.0, -12.0])
    assert edit_scores(similarity, loglik, 0.0).argmax() == 0  # CLIP alone
    assert edit_scores(similarity, loglik, 1.0).argmax() == 1
    assert edit_scores(None, loglik).argmax() == 1  # no CLIP: the likelihood alone
    assert torch.equal(edit_scores(None, torch.zeros(1)), torch.zeros(1))  # one candidate


def test_edit_on_a_run_keeps_the_rest_and_the_command_writes_a_grid(dalle_run, tmp_path, capsys):
    pipe = Pipeline.load(dalle_run)
    size = pipe.image_tokenizer.image_size  # 16 px as 4x4 codes of 4 px
    image = torch.rand(3, size, size)
    images, scores = pipe.edit(image, (0, 0, 4, 4), "a red circle", n=6, keep=3, dilate=False)
    assert images.shape == (3, 3, size, size) and scores.tolist() == sorted(scores.tolist())[::-1]
    # The bottom half as the region, not dilated: completion's candidates, in CLIP's order.
    bottom = (0, size // 2, size, size)
    edited, _ = pipe.edit(image, bottom, "a red circle", n=6, keep=6, seed=4, dilate=False)
    completed, _ = pipe.complete(image, 2, "a red circle", n=6, keep=6, seed=4)
    assert torch.equal(edited, completed)
    with pytest.raises(ValueError, match="region mask must be 16x16"):
        pipe.edit(image, torch.ones(8, 8, dtype=torch.bool), "a red circle", n=2)

    picture = tmp_path / "picture.png"
    picture.write_bytes(encode(Image.new("RGB", (32, 32), (0, 90, 200))))
    out = tmp_path / "edit.png"
    args = ["edit", "a red circle", "--image", str(picture), "--run", str(dalle_run)]
    assert (
        dalle1_main([*args, "--box", "8,8,24,24", "-n", "4", "--keep", "2", "--out", str(out)]) == 0
    )
    assert Image.open(out).size[0] > 2 * size  # the image, then the 2 kept
    assert dalle1_main([*args, "--box", "40,40,50,50"]) == 2
    assert "outside the 32x32 image" in capsys.readouterr().err
