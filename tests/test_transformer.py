"""The DALL-E transformer: masks, causality, both attention paths, loss, sizes, overfitting."""

import pytest
import torch
import torch.nn.functional as F

from dalle1.attention import banded_attention, make_band
from dalle1.masks import StreamLayout, layer_masks
from dalle1.transformer import DALLE, DALLEConfig

# Image part of the masks of a 4x4 image (rows: query image position, columns: key image
# position), drawn by hand from the definitions in dalle1/masks.py.
ROW_4x4 = """
1...............
11..............
111.............
1111............
11111...........
.11111..........
..11111.........
...11111........
....11111.......
.....11111......
......11111.....
.......11111....
........11111...
.........11111..
..........11111.
...........11111
"""
COLUMN_4x4 = """
1...............
11..............
.11.............
..11............
1...1...........
.1..11..........
..1..11.........
...1..11........
1...1...1.......
.1...1..11......
..1...1..11.....
...1...1..11....
1...1...1...1...
.1...1...1..11..
..1...1...1..11.
...1...1...1..11
"""
CONV3_4x4 = """
1...............
11..............
.11.............
..11............
11..1...........
111.11..........
.111.11.........
..11..11........
....11..1.......
....111.11......
.....111.11.....
......11..11....
........11..1...
........111.11..
.........111.11.
..........11..11
"""


def drawn(text: str) -> torch.Tensor:
    return torch.tensor([[c == "1" for c in line] for line in text.split()])


@pytest.mark.parametrize(
    "name,picture", [("row", ROW_4x4), ("column", COLUMN_4x4), ("conv", CONV3_4x4)]
)
def test_masks_equal_hand_drawn_cases(name, picture):
    layout = StreamLayout(text_length=3, grid=4, conv_kernel=3)
    mask = layout.dense_mask(name)
    assert torch.equal(mask[3:, 3:], drawn(picture))
    assert bool(mask[3:, :3].all())  # every image position sees all text
    assert torch.equal(mask[:3, :3], torch.ones(3, 3, dtype=torch.bool).tril())  # causal text
    assert not bool(mask[:3, 3:].any())  # text never sees the image
    causal = layout.dense_mask("causal")
    assert torch.equal(causal, torch.ones(19, 19, dtype=torch.bool).tril())


def test_layer_schedule_follows_the_paper():
    masks = layer_masks(64, "sparse")
    assert masks[:4] == ["row", "column", "row", "row"]
    assert masks[5] == "column" and masks[-1] == "conv"
    assert masks.count("column") == 16 and masks.count("conv") == 1
    assert layer_masks(3, "causal") == ["causal"] * 3


def reference_features(model: DALLE, text, codes) -> torch.Tensor:
    """The same network, with attention written out as masked softmax(q k^T / sqrt(d)) v."""
    x = model.embed(text, model.image_inputs(codes[:, :-1]))
    layout = model.config.layout
    for block in model.blocks:
        h = block.norm1(x)
        b, n, d = h.shape
        qkv = block.attn.qkv(h).view(b, n, 3, block.attn.heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (3, B, H, L, d) written out without einops
        scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
        scores = scores.masked_fill(~layout.dense_mask(block.attn.mask), float("-inf"))
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
        x = x + block.attn.proj(out)
        x = x + block.mlp(block.norm2(x))
    return model.norm(x)


@pytest.mark.parametrize("attention", ["sparse", "causal"])
def test_dense_path_equals_a_plain_reference(attention, tiny_dalle, random_batch):
    model = tiny_dalle(attention)
    text, codes = random_batch(model)
    with torch.no_grad():
        expected = reference_features(model, text, codes)
        got = model.run_blocks(model.embed(text, model.image_inputs(codes[:, :-1])))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mask", ["row", "column", "conv"])
@pytest.mark.parametrize("text, grid, kernel", [(6, 4, 3), (3, 5, 3), (4, 7, 5), (5, 6, 11)])
@pytest.mark.parametrize("rows", [1, 0])  # blocks of one grid row; of the default size
def test_the_banded_path_equals_the_dense_one_with_gradients(mask, text, grid, kernel, rows):
    layout = StreamLayout(text, grid, kernel)
    band = make_band(layout, mask, torch.device("cpu"), rows)
    g = torch.Generator().manual_seed(grid)
    q, k, v = (torch.randn(2, 3, layout.length, 8, generator=g, requires_grad=True) for _ in "qkv")
    banded = banded_attention(q, k, v, band, text)
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=layout.dense_mask(mask))
    torch.testing.assert_close(banded, dense, rtol=1e-5, atol=1e-5)
    weights = torch.randn(dense.shape, generator=g)
    got = torch.autograd.grad((banded * weights).sum(), (q, k, v))
    want = torch.autograd.grad((dense * weights).sum(), (q, k, v))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    if mask != "conv" and rows == 1:  # one grid row sees the text, itself and the row before
        assert band.allowed.shape[-1] == text + 2 * grid


def test_a_banded_model_trains_like_a_dense_one(tiny_dalle, random_batch):
    dense = tiny_dalle("sparse", "dense", grid=6, conv_kernel=5)
    banded = tiny_dalle("sparse", "banded", grid=6, conv_kernel=5)
    banded.load_state_dict(dense.state_dict())
    text, codes = random_batch(dense)
    losses = [model(text, codes).loss for model in (dense, banded)]
    torch.testing.assert_close(losses[1], losses[0])
    for loss in losses:
        loss.backward()
    for (name, a), b in zip(dense.named_parameters(), banded.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert banded.masks(torch.device("cpu")).path == "banded"


@pytest.mark.slow
def test_flex_path_equals_the_dense_path(tiny_dalle, random_batch):
    """FlexAttention (compiled on the first call: about a minute on 2 CPU cores)."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    dense = tiny_dalle("sparse", "dense", depth=2, grid=8, conv_kernel=5)
    flex = tiny_dalle("sparse", "flex", depth=2, grid=8, conv_kernel=5)
    flex.load_state_dict(dense.state_dict())
    text, codes = random_batch(dense)
    with torch.no_grad():
        torch.testing.assert_close(flex(text, codes).loss, dense(text, codes).loss)
        torch.testing.assert_close(
            flex.image_logits(text, codes), dense.image_logits(text, codes), rtol=1e-4, atol=1e-4
        )


@pytest.mark.parametrize("attention", ["sparse", "causal"])
def test_changing_a_later_token_never_changes_an_earlier_logit(attention, tiny_dalle, random_batch):
    model = tiny_dalle(attention).eval()
    text, codes = random_batch(model, size=1)
    c = model.config
    with torch.no_grad():
        base = model.run_blocks(model.embed(text, model.image_inputs(codes[:, :-1])))
        for position in (2, c.text_length + 5):  # a text position, an image position
            inputs = torch.cat([text, codes[:, :-1]], 1).clone()
            inputs[0, position] = (inputs[0, position] + 1) % c.codebook_size
            changed_text, changed_codes = inputs[:, : c.text_length], inputs[:, c.text_length :]
            # image position p + 1 holds code p: the change is at stream position `position` + 1
            out = model.run_blocks(model.embed(changed_text, model.image_inputs(changed_codes)))
            first_changed = position if position < c.text_length else position + 1
            torch.testing.assert_close(out[:, :first_changed], base[:, :first_changed])
            assert not torch.allclose(out[:, first_changed], base[:, first_changed])


def test_loss_is_the_weighted_mean_of_text_and_image_cross_entropy(tiny_dalle, random_batch):
    model = tiny_dalle(text_loss_weight=0.125)
    text, codes = random_batch(model)
    out = model(text, codes)
    with torch.no_grad():
        h = model.run_blocks(model.embed(text, model.image_inputs(codes[:, :-1])))
        t = model.config.text_length
        text_ce = F.cross_entropy(model.text_head(h[:, : t - 1]).transpose(1, 2), text[:, 1:])
        image_ce = F.cross_entropy(model.image_head(h[:, t:]).transpose(1, 2), codes)
    torch.testing.assert_close(out.text_loss, text_ce)
    torch.testing.assert_close(out.image_loss, image_ce)
    torch.testing.assert_close(out.loss, 0.125 * text_ce + 0.875 * image_ce)
    # Weight 0: the text head gets no gradient at all.
    model = tiny_dalle(text_loss_weight=0.0)
    model(text, codes).loss.backward()
    assert float(model.text_head.weight.grad.abs().sum()) == 0.0


def test_the_paper_config_has_about_12_billion_parameters():
    with torch.device("meta"):
        model = DALLE(DALLEConfig())
    count = sum(p.numel() for p in model.parameters())
    assert 11.5e9 < count < 12.5e9, count
    assert model.config.layout.length == 1280


def test_forward_and_backward_at_the_papers_sequence_length(tiny_dalle, random_batch):
    model = tiny_dalle(
        text_length=256,
        grid=32,
        codebook_size=64,
        depth=4,
        width=16,
        heads=2,
        conv_kernel=11,
    )
    text, codes = random_batch(model, size=1)
    out = model(text, codes)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert model.row_embedding.grad.shape == (32, 16)
    assert all(p.grad is not None for p in model.parameters())


def test_one_batch_overfits(tiny_dalle, random_batch):
    model = tiny_dalle()
    text, codes = random_batch(model, size=4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        out = model(text, codes)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        first = first if first is not None else out.loss.item()
    assert out.image_loss.item() < 0.1 * first


def test_bad_shapes_and_names_are_clear_errors(tiny_dalle, random_batch):
    model = tiny_dalle()
    text, codes = random_batch(model)
    with pytest.raises(ValueError, match=r"expected codes of shape \(3, 16\)"):
        model(text, codes[:, :10])
    with pytest.raises(ValueError, match=r"expected text of shape \(B, 6\)"):
        model(text[:, :4], codes)
    with pytest.raises(ValueError, match="attention must be sparse or causal"):
        DALLEConfig(attention="axial")
