"""The windowed decoding cache: each cell reads exactly the keys its mask allows, and sampling
with it gives the uncached path's codes for every mask, odd grids and kernels, prefixes,
guidance, shared text and the compiled step."""

import pytest
import torch

import dalle1.sampling
from dalle1.kv_cache import SlotPlan, row_bytes
from dalle1.masks import MASKS, StreamLayout, layer_masks
from dalle1.sampling import (
    SamplingConfig,
    generate,
    invert_cumulative,
    pick,
    prefill,
    sample_candidates,
)

LAYOUTS = [
    StreamLayout(2, 3, 3),
    StreamLayout(6, 4, 3),
    StreamLayout(3, 5, 5),
    StreamLayout(4, 5, 3),
    StreamLayout(1, 6, 11),  # a kernel wider than the grid
]


def keys_read(plan: SlotPlan, layout: StreamLayout) -> list[set[int]]:
    """Replay the writes cell by cell; the image positions each cell sees through the plan."""
    contents = [-1] * plan.size
    seen = []
    for cell in range(layout.image_length):
        contents[plan.write[cell]] = cell
        first = 0 if plan.first is None else int(plan.first[cell])
        slots = range(first, first + plan.reads)
        visible = [
            contents[s] for s, v in zip(slots, plan.visible[cell].tolist(), strict=True) if v
        ]
        assert -1 not in visible and len(set(visible)) == len(visible)
        seen.append(set(visible))
    return seen


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
@pytest.mark.parametrize("mask", MASKS)
def test_each_cell_reads_exactly_the_keys_its_mask_allows(layout, mask):
    plan = SlotPlan(layout, mask)
    allowed = layout.dense_mask(mask)[layout.text_length :, layout.text_length :]
    expected = [set(torch.nonzero(row).flatten().tolist()) for row in allowed]
    assert keys_read(plan, layout) == expected
    w = layout.grid
    if mask == "row":
        assert plan.size == w + 1
    if mask == "conv":
        reach = layout.conv_kernel // 2
        assert plan.size <= reach * w + reach + 1
    if mask == "column":
        assert plan.reads == w + 1  # the column above and the cell to the left


def test_the_replay_catches_a_plan_that_misses_a_key():
    layout = StreamLayout(3, 5, 5)
    plan = SlotPlan(layout, "conv")
    plan.visible = plan.visible.clone()
    plan.visible[7, plan.write[6]] = False  # cell 7 no longer sees cell 6
    allowed = layout.dense_mask("conv")[3:, 3:]
    expected = [set(torch.nonzero(row).flatten().tolist()) for row in allowed]
    assert keys_read(plan, layout) != expected


def test_the_paper_schedule_keeps_under_45_percent_of_a_full_cache():
    layout = StreamLayout(256, 32, 11)
    masks = layer_masks(64, "sparse")
    windowed = row_bytes(layout, masks, 3968, 2) + 2 * len(masks) * 256 * 3968 * 2  # + text
    full = 2 * len(masks) * layout.length * 3968 * 2
    assert windowed / full <= 0.45


def sharpened(model):
    """Random weights scaled up, so that greedy decoding does not repeat one code."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


SHAPES = [  # odd and even grids, kernels narrower and wider than the grid
    dict(text_length=2, grid=3, conv_kernel=3),
    dict(text_length=3, grid=5, conv_kernel=5),
    dict(text_length=6, grid=4, conv_kernel=3),
    dict(text_length=4, grid=5, conv_kernel=11),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "-".join(map(str, s.values())))
@pytest.mark.parametrize("attention", ["sparse", "causal"])
def test_greedy_codes_equal_the_uncached_path(shape, attention, tiny_dalle, random_batch):
    model = sharpened(tiny_dalle(attention, **shape))
    text, codes = random_batch(model, size=3)
    cells = model.config.grid**2
    greedy = SamplingConfig(temperature=0)
    guided = SamplingConfig(temperature=0, guidance_scale=2.5)
    cases = [
        (greedy, None),
        (greedy, codes[:, : cells // 2 + 1]),  # completion of an odd number of cells
        (guided, None),
        (guided, codes[:, :2]),
    ]
    for config, prefix in cases:
        cached = generate(model, text, config, prefix)
        assert torch.equal(cached, generate(model, text, config, prefix, use_cache=False))
    assert len(set(cached.flatten().tolist())) > 2  # not one repeated code


def test_rows_that_share_a_caption_share_its_prefill_and_match_the_uncached_path(
    tiny_dalle, random_batch
):
    model = sharpened(tiny_dalle(grid=5, conv_kernel=5))
    text, codes = random_batch(model, size=2)
    rows = text.repeat_interleave(4, dim=0)  # 2 captions x 4 candidates: two groups
    prefix = codes[:1, :7].expand(8, -1)
    for config in (SamplingConfig(), SamplingConfig(guidance_scale=2.0, top_k=4)):
        drawn, uncached = (
            generate(model, rows, config, prefix, torch.Generator().manual_seed(3), use_cache=c)
            for c in (True, False)
        )
        assert torch.equal(drawn, uncached)
        assert not torch.equal(drawn[0], drawn[1])  # each candidate draws its own codes


def test_the_compiled_step_gives_the_eager_codes(tiny_dalle, random_batch):
    model = sharpened(tiny_dalle(grid=3, conv_kernel=3, text_length=2))
    text, codes = random_batch(model, size=2)
    for prefix in (None, codes[:, :4]):
        eager = generate(model, text, SamplingConfig(temperature=0, compile="no"), prefix)
        compiled = generate(model, text, SamplingConfig(temperature=0, compile="yes"), prefix)
        assert torch.equal(eager, compiled)


def test_the_batches_follow_the_free_memory(tiny_dalle, random_batch, monkeypatch):
    model = sharpened(tiny_dalle())
    text, _ = random_batch(model, size=1)
    row = dalle1.sampling.bytes_per_row(model, SamplingConfig(), torch.device("cpu"))
    seen = []

    def draw(free: int, config: SamplingConfig | None = None):
        monkeypatch.setattr(dalle1.sampling, "free_memory", lambda device: free)
        seen.clear()
        generator = torch.Generator().manual_seed(0)
        return sample_candidates(
            model, text[0], 10, config, generator=generator, progress=seen.append
        )

    draw(1 << 40)
    assert seen == [10]  # everything at once
    assert draw(2 * 4 * row).shape == (10, 16) and seen == [4, 3, 3]  # 4 fit: 3 equal batches
    draw(1)
    assert seen == [1] * 10  # never less than one row
    draw(1, SamplingConfig(batch_size=6))
    assert seen == [6, 4]  # a batch size given wins


def test_pick_draws_each_code_with_its_probability_and_never_a_filtered_one():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    logits = probs.log().expand(40000, -1)
    drawn = pick(logits, SamplingConfig(), torch.Generator().manual_seed(0))
    frequency = torch.bincount(drawn, minlength=5) / len(drawn)
    assert torch.allclose(frequency, probs, atol=0.01)
    top2 = pick(logits, SamplingConfig(top_k=2), torch.Generator().manual_seed(0))
    assert set(top2.tolist()) == {0, 1}


def test_the_cache_holds_the_bytes_the_batch_size_is_planned_with(tiny_dalle, random_batch):
    model = tiny_dalle(grid=5, conv_kernel=5)
    c = model.config
    text, _ = random_batch(model, size=1)
    cache = model.new_cache(rows=4, groups=1, device=torch.device("cpu"))
    prefill(model, text, model.image_inputs(text[:, :0]), cache)
    masks = layer_masks(c.depth, c.attention)
    text_bytes = 2 * c.depth * c.text_length * c.width * 4 / 4  # once for the 4 rows
    assert cache.bytes_per_row() == row_bytes(c.layout, masks, c.width, 4) + text_bytes


def test_the_two_level_inversion_finds_the_first_code_reaching_the_draw():
    generator = torch.Generator().manual_seed(0)
    weights = torch.rand(500, 1000, generator=generator)
    weights[weights < 0.6] = 0  # many codes of probability 0, whole blocks of them too
    weights[:, 128:384] = 0
    fraction = 1 - torch.rand(500, 1, generator=generator)
    drawn = invert_cumulative(weights, fraction, block=128)
    cumulative = weights.double().cumsum(-1)
    target = fraction.double() * cumulative[:, -1:]
    want = torch.searchsorted(cumulative, target).squeeze(1)
    assert (weights.gather(1, drawn[:, None]) > 0).all()  # never a code of weight 0
    wrong = drawn != want  # float rounding may move a draw that lies on a boundary
    assert wrong.float().mean() < 0.01
    reached = cumulative.gather(1, drawn[:, None])
    assert ((reached - target).abs()[wrong] <= 1e-5 * cumulative[:, -1:][wrong]).all()
    edge = invert_cumulative(torch.tensor([[0.0, 2.0, 0.0]]), torch.ones(1, 1), block=2)
    assert edge.tolist() == [1]  # the whole mass: the last code of positive weight
