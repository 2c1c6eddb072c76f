"""The CLIP reranker: the loss falls on a toy set, rerank picks the match, weights round-trip."""

import pytest
import torch
import torch.nn.functional as F

from dalle1.clip import CLIP, CLIPConfig, contrastive_loss, rerank
from dalle1.tokenizer import TextTokenizer, train_tokenizer

COLOURS = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.7, 0.2),
    "blue": (0.1, 0.3, 0.9),
    "yellow": (0.9, 0.8, 0.1),
}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    captions = [f"a {c} square" for c in COLOURS] * 10
    path = train_tokenizer(captions, 300, tmp_path_factory.mktemp("tok") / "tok.model")
    return TextTokenizer(path, 8)


def toy_set(tokenizer):
    """One 16 px image per colour: a coloured square on white; captions name the colour."""
    images = torch.ones(len(COLOURS), 3, 16, 16)
    for i, rgb in enumerate(COLOURS.values()):
        images[i, :, 4:12, 4:12] = torch.tensor(rgb)[:, None, None]
    captions = [f"a {c} square" for c in COLOURS]
    return images, captions, tokenizer.encode_batch(captions)


def tiny_clip(tokenizer, image_encoder: str = "patches") -> CLIP:
    torch.manual_seed(0)
    config = CLIPConfig(
        image_encoder=image_encoder,
        conv_width=8,
        image_size=16,
        patch_size=8,
        text_length=8,
        text_vocab_size=tokenizer.vocab_size,
        width=32,
        depth=1,
        heads=2,
        embed_width=16,
    )
    return CLIP(config)


def train(model, images, text, steps=60):
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        loss, _ = contrastive_loss(*model(images, text))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("image_encoder", ["patches", "conv"])
def test_loss_falls_and_rerank_picks_the_matching_image(tokenizer, image_encoder):
    images, captions, text = toy_set(tokenizer)
    model = tiny_clip(tokenizer, image_encoder)
    losses = train(model, images, text)
    assert losses[-1] < 0.2 * losses[0]
    for i, caption in enumerate(captions):
        order, scores = rerank(model, tokenizer, images, caption, keep=2, batch_size=3)
        assert order[0] == i
        assert len(order) == 2 and scores[0] >= scores[1]
    # Deterministic, and keep=None gives every image, best first.
    again, _ = rerank(model, tokenizer, images, captions[1])
    assert again[0] == 1 and sorted(again.tolist()) == [0, 1, 2, 3]


@pytest.mark.parametrize("image_encoder", ["patches", "conv"])
def test_checkpoint_round_trip_and_clear_errors(tmp_path, tokenizer, image_encoder):
    images, _, text = toy_set(tokenizer)
    model = tiny_clip(tokenizer, image_encoder)
    train(model, images, text, steps=3)  # the conv encoder's norm statistics move from their start
    model.eval()
    model.save_pretrained(tmp_path / "clip")
    loaded = CLIP.from_pretrained(tmp_path / "clip").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_images(images), model.encode_images(images))
        torch.testing.assert_close(loaded.encode_text(text), model.encode_text(text))
    (tmp_path / "clip" / "model.safetensors").write_bytes(b"broken")
    with pytest.raises(ValueError, match="cannot read the CLIP"):
        CLIP.from_pretrained(tmp_path / "clip")
    with pytest.raises(FileNotFoundError, match="neither a model folder"):
        CLIP.from_pretrained(tmp_path / "nothing")
    with pytest.raises(ValueError, match=r"expected images \(B, 3, 16, 16\)"):
        model.encode_images(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="image_encoder must be patches or conv"):
        CLIPConfig(image_encoder="resnet")


def test_hard_negatives_join_the_image_to_text_half_of_the_loss(tokenizer):
    images, captions, text = toy_set(tokenizer)
    model = tiny_clip(tokenizer).eval()
    altered = tokenizer.encode_batch([c.replace("square", "circle") for c in captions])
    none = torch.zeros(len(text), dtype=torch.bool)
    with torch.no_grad():
        image_emb, text_emb, scale = model(images, text)
        altered_emb = model.encode_text(altered)
        plain, _ = contrastive_loss(image_emb, text_emb, scale)
        # no row has a negative: the same loss
        masked, _ = contrastive_loss(image_emb, text_emb, scale, altered_emb, none)
        loss, metrics = contrastive_loss(image_emb, text_emb, scale, altered_emb, ~none)
        # By hand: each image picks its caption among the 4 captions and the 4 altered ones.
        logits = scale * text_emb @ image_emb.t()
        image_to_text = torch.cat([logits.t(), scale * image_emb @ altered_emb.t()], 1)
        labels = torch.arange(len(text))
        expected = (F.cross_entropy(logits, labels) + F.cross_entropy(image_to_text, labels)) / 2
        wins = (logits.diagonal() > (scale * image_emb @ altered_emb.t()).diagonal()).float()
    torch.testing.assert_close(masked, plain)
    torch.testing.assert_close(loss, expected)
    assert loss > plain and metrics["negative_accuracy"] == pytest.approx(wins.mean().item())


def test_the_losses_of_parts_of_a_batch_add_up_to_the_whole(tokenizer):
    """What lets N processes train on one global batch: each scores its own rows against all."""
    images, captions, text = toy_set(tokenizer)
    model = tiny_clip(tokenizer).eval()
    altered = tokenizer.encode_batch([c.replace("square", "circle") for c in captions])
    has_negative = torch.tensor([True, False, True, True])
    with torch.no_grad():
        image_emb, text_emb, scale = model(images, text)
        parts = (image_emb, text_emb, scale, model.encode_text(altered), has_negative)
        whole, _ = contrastive_loss(*parts)
        first, _ = contrastive_loss(*parts, rows=slice(0, 1))
        rest, _ = contrastive_loss(*parts, rows=slice(1, 4))
    torch.testing.assert_close(first + rest, whole)
    assert not torch.allclose(first, whole)


def test_text_encoder_is_causal_and_read_at_its_last_token(tokenizer):
    model = tiny_clip(tokenizer).eval()
    encoder = model.text_encoder
    assert encoder.causal
    tokens = torch.randn(2, model.config.text_length, model.config.width)
    changed = tokens.clone()
    changed[:, 5:] = torch.randn_like(changed[:, 5:])
    with torch.no_grad():
        x, y = tokens + encoder.positions[:-1], changed + encoder.positions[:-1]
        for block in encoder.blocks:
            x, y = block(x), block(y)
        # Positions before the change see nothing of it; the class token (last) sees all.
        torch.testing.assert_close(x[:, :5], y[:, :5])
        assert not torch.allclose(encoder(tokens), encoder(changed))
