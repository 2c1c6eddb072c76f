"""The dVAE (vqvae/): shapes, input checks, losses, schedules, both quantizers, restarts,
save and load."""

import math
from pathlib import Path

import pytest
import torch
import yaml

from pretrained import load_pretrained
from vqvae import (
    DiscreteVAE,
    DVAEConfig,
    DVAELossConfig,
    GumbelQuantizer,
    ImageTokenizer,
    VectorQuantizer,
    dvae_loss,
    load_image_tokenizer,
)
from vqvae.losses import (
    codebook_usage,
    gradient_mse,
    logit_laplace_nll,
    map_pixels,
    psnr,
    ssim,
    unmap_pixels,
)
from vqvae.quantizer import gumbel_softmax, kl_to_uniform
from vqvae.schedules import cosine_ramp

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# vqvae/ stands alone (it never imports dalle1/), so its tests read the YAML model section.
TINY = DVAEConfig(**yaml.safe_load((CONFIGS / "vqvae_tiny.yaml").read_text())["model"])


@pytest.fixture
def model():
    torch.manual_seed(0)
    return DiscreteVAE(TINY).eval()


def test_encode_decode_shapes_and_dtypes(model):
    images = torch.rand(3, 3, 16, 16)
    codes = model.encode(images)
    assert codes.shape == (3, 4, 4) and codes.dtype == torch.int64
    assert 0 <= codes.min() and codes.max() < TINY.codebook_size
    decoded = model.decode(codes)
    assert decoded.shape == (3, 3, 16, 16) and decoded.dtype == torch.float32
    assert 0 <= decoded.min() and decoded.max() <= 1
    out = model(images, tau=1.0)
    assert out.scores.shape == (3, 32, 4, 4) and out.mu.shape == out.log_b.shape == (3, 3, 16, 16)
    assert isinstance(model, ImageTokenizer)
    assert (model.image_size, model.grid, model.codebook_size) == (16, 4, 32)


def test_decode_of_one_hot_equals_decoder_of_hard_codes(model):
    codes = torch.randint(0, 32, (2, 4, 4))
    one_hot = torch.nn.functional.one_hot(codes, 32).permute(0, 3, 1, 2).float()
    mu = model.decoder(model.quantizer.codebook(one_hot))[:, :3]
    torch.testing.assert_close(model.decode(codes), unmap_pixels(torch.sigmoid(mu)))


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.rand(3, 16, 16), r"\(B, 3, 16, 16\), got \(3, 16, 16\)"),
        (torch.rand(2, 1, 16, 16), r"got \(2, 1, 16, 16\)"),
        (torch.rand(2, 3, 32, 32), r"got \(2, 3, 32, 32\)"),
        (torch.zeros(2, 3, 16, 16, dtype=torch.uint8), "float images"),
    ],
)
def test_encode_names_the_bad_input(model, images, message):
    with pytest.raises(ValueError, match=message):
        model.encode(images)


@pytest.mark.parametrize(
    "codes, message",
    [
        (torch.zeros(2, 8, 8, dtype=torch.long), r"\(B, 4, 4\), got \(2, 8, 8\)"),
        (torch.zeros(2, 4, 4), "integer codes"),
        (torch.full((1, 4, 4), 32), r"\[0, 32\)"),
    ],
)
def test_decode_names_the_bad_input(model, codes, message):
    with pytest.raises(ValueError, match=message):
        model.decode(codes)


def test_pixel_map_round_trip():
    x = torch.rand(2, 3, 8, 8)
    mapped = map_pixels(x)
    assert mapped.min() >= 0.1 - 1e-6 and mapped.max() <= 0.9 + 1e-6
    torch.testing.assert_close(unmap_pixels(mapped), x)


def test_logit_laplace_nll_by_hand():
    x, mu, log_b = 0.3, 0.2, 0.1
    logit = math.log(x / (1 - x))
    expected = (
        math.log(2) + log_b + math.log(x) + math.log(1 - x) + abs(logit - mu) / math.exp(log_b)
    )
    value = logit_laplace_nll(
        torch.full((1, 3, 2, 2), x), torch.full((1, 3, 2, 2), mu), torch.full((1, 3, 2, 2), log_b)
    )
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_gradient_mse_by_hand():
    images = torch.rand(2, 3, 5, 5)
    assert gradient_mse(images + 0.3, images).item() == pytest.approx(0.0, abs=1e-6)
    # A vertical edge one pixel wide: the only difference is at the edge, 1 of 4 column steps.
    edge = torch.zeros(1, 1, 2, 5)
    edge[..., 2:] = 1.0
    assert gradient_mse(edge, torch.zeros_like(edge)).item() == pytest.approx(0.25)
    # Blurring the edge over two steps halves each step: (0.5^2 + 0.5^2) / 4 vs 1 / 4.
    blurred = torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]).expand(1, 1, 2, 5)
    assert gradient_mse(blurred, edge).item() == pytest.approx((0.25 + 0.25) / 4)


def test_edge_term_joins_the_loss_and_is_logged():
    torch.manual_seed(0)
    model = DiscreteVAE(TINY)
    images = torch.rand(2, 3, 16, 16)
    plain, metrics, _ = dvae_loss(model, images, 10, DVAELossConfig(reconstruction="mse"), [1, 2])
    with_edges, edge_metrics, _ = dvae_loss(  # the same Gumbel noise: the same seeds
        model, images, 10, DVAELossConfig(reconstruction="mse", edge_weight=2.0), [1, 2]
    )
    assert "edge" not in metrics
    assert with_edges.item() == pytest.approx(plain.item() + 2.0 * edge_metrics["edge"], rel=1e-5)


def test_kl_to_uniform_by_hand():
    assert kl_to_uniform(torch.zeros(2, 8, 3, 3)).item() == pytest.approx(0.0, abs=1e-6)
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1)  # q = (1/4, 3/4)
    expected = 0.25 * math.log(0.25) + 0.75 * math.log(0.75) + math.log(2)
    assert kl_to_uniform(logits).item() == pytest.approx(expected, rel=1e-5)
    peaked = torch.zeros(1, 16, 1, 1)
    peaked[0, 3] = 100.0
    assert kl_to_uniform(peaked).item() == pytest.approx(math.log(16), rel=1e-4)


def test_schedules_at_their_end_points():
    assert cosine_ramp(0, 100, 0.0, 6.6) == 0.0
    assert cosine_ramp(50, 100, 0.0, 6.6) == pytest.approx(3.3)
    assert cosine_ramp(100, 100, 0.0, 6.6) == 6.6 and cosine_ramp(10**6, 100, 0.0, 6.6) == 6.6
    assert cosine_ramp(0, 150, 1.0, 1 / 16) == 1.0 and cosine_ramp(150, 150, 1.0, 1 / 16) == 1 / 16
    assert cosine_ramp(75, 150, 1.0, 1 / 16) < 1.0


def test_gumbel_softmax_relaxes_and_hardens():
    logits = torch.randn(4, 10, 3, 3)
    soft = gumbel_softmax(logits, tau=1.0, seeds=[0, 1, 2, 3])
    torch.testing.assert_close(soft.sum(1), torch.ones(4, 3, 3))
    assert soft.min() >= 0
    cold = gumbel_softmax(logits * 1000, tau=1 / 16, seeds=[0, 1, 2, 3])
    assert torch.equal(cold.argmax(1), logits.argmax(1)) and cold.max(1).values.min() > 0.99
    assert torch.equal(soft, gumbel_softmax(logits, tau=1.0, seeds=[0, 1, 2, 3]))
    # A sample's noise follows its seed, not its place in the batch (so any split of a batch
    # over processes draws the same noise).
    torch.testing.assert_close(gumbel_softmax(logits[2:], 1.0, seeds=[2, 3]), soft[2:])
    assert not torch.equal(gumbel_softmax(logits, 1.0, seeds=[9, 1, 2, 3])[0], soft[0])


def test_ssim_is_one_for_equal_images_and_falls_with_structure_lost():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 24, 24)
    assert ssim(images, images) == pytest.approx(1.0, abs=1e-5)
    # A brightness shift keeps the structure; noise and a flat grey lose it.
    shifted = ssim((images * 0.8 + 0.1), images)
    noisy = ssim((images + 0.3 * torch.randn_like(images)).clamp(0, 1), images)
    flat = ssim(torch.full_like(images, images.mean()), images)
    assert 1.0 > shifted > noisy > flat and flat < 0.05
    # By hand for a constant pair (no variance): the luminance term alone.
    a, b = torch.full((1, 1, 11, 11), 0.2), torch.full((1, 1, 11, 11), 0.6)
    expected = (2 * 0.2 * 0.6 + 1e-4) / (0.2**2 + 0.6**2 + 1e-4)
    assert ssim(a, b) == pytest.approx(expected, rel=1e-4)


def test_codebook_usage_and_psnr():
    perplexity, used = codebook_usage(torch.arange(8).view(2, 2, 2), 16)
    assert perplexity == pytest.approx(8.0) and used == 0.5
    perplexity, used = codebook_usage(torch.zeros(2, 2, 2, dtype=torch.long), 16)
    assert perplexity == pytest.approx(1.0) and used == 1 / 16
    images = torch.full((1, 3, 4, 4), 0.5)
    assert psnr(images + 0.1, images) == pytest.approx(20.0, rel=1e-4)


@pytest.mark.parametrize("reconstruction", ["logit_laplace", "mse"])
def test_loss_falls_when_overfitting_one_batch(reconstruction):
    torch.manual_seed(0)
    model = DiscreteVAE(TINY)
    # One flat colour per code cell: what a 4x4 grid of codes can describe exactly.
    images = torch.rand(4, 3, 4, 4).round().repeat_interleave(4, 2).repeat_interleave(4, 3)
    model.init_output_bias(images)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    config = DVAELossConfig(
        reconstruction=reconstruction, kl_weight=1.0, kl_warmup_steps=0, tau_start=0.1, tau_end=0.1
    )
    losses = []
    for _ in range(100):
        loss, _, _ = dvae_loss(model, images, 100, config)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    if reconstruction == "mse":
        assert losses[-1] < losses[0] * 0.85
    else:
        assert losses[-1] < losses[0] - 0.3  # nats per sub-pixel


def test_save_and_load_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = DiscreteVAE.from_pretrained(tmp_path).eval()
    assert loaded.config == model.config
    images = torch.rand(2, 3, 16, 16)
    assert torch.equal(loaded.encode(images), model.encode(images))


def test_bad_checkpoints_give_clear_errors(model, tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a model folder"):
        DiscreteVAE.from_pretrained(tmp_path)
    model.save_pretrained(tmp_path / "corrupt")
    weights = tmp_path / "corrupt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt"):
        DiscreteVAE.from_pretrained(tmp_path / "corrupt")
    model.save_pretrained(tmp_path / "other")
    other = DiscreteVAE(
        DVAEConfig(
            image_size=16,
            width=8,
            num_groups=3,
            blocks_per_group=1,
            codebook_size=64,
            code_width=16,
        )
    )
    other.save_pretrained(tmp_path / "other_weights")
    (tmp_path / "other" / "model.safetensors").write_bytes(
        (tmp_path / "other_weights" / "model.safetensors").read_bytes()
    )
    with pytest.raises(ValueError, match="do not fit this model's config"):
        DiscreteVAE.from_pretrained(tmp_path / "other")


def test_the_loader_builds_the_class_a_folder_records(model, tmp_path):
    model.save_pretrained(tmp_path / "dvae")
    record = yaml.safe_load((tmp_path / "dvae" / "model_config.json").read_text())
    assert record["class"] == "DiscreteVAE" and record["config"]["codebook_size"] == 32
    loaded = load_image_tokenizer(tmp_path / "dvae")
    assert type(loaded) is DiscreteVAE and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    with pytest.raises(ValueError, match="holds a DiscreteVAE, not a CLIP"):

        class CLIP:  # another class the folder does not record
            label = "CLIP"

        load_pretrained(tmp_path / "dvae", [CLIP])


def test_paper_config_is_the_released_shape():
    config = DVAEConfig(**yaml.safe_load((CONFIGS / "vqvae_paper.yaml").read_text())["model"])
    assert (config.grid, config.codebook_size, config.widths) == (
        32,
        8192,
        [256, 512, 1024, 2048],
    )
    with torch.device("meta"):
        model = DiscreteVAE(config)
    count = sum(p.numel() for p in model.parameters())
    assert 95e6 < count < 100e6  # the released encoder + decoder hold about 98M parameters


def test_config_refuses_a_grid_that_does_not_divide():
    with pytest.raises(ValueError, match="not divisible by the downsampling factor 8"):
        DVAEConfig(image_size=60, num_groups=4)


def test_restart_gives_dead_codes_a_used_codes_weights():
    torch.manual_seed(0)
    quantizer = GumbelQuantizer(in_width=4, codebook_size=6, code_width=3)
    logits, codebook = quantizer.to_logits, quantizer.codebook
    usage = torch.tensor([5.0, 0.0, 0.0, 3.0, 0.0, 1.0])
    before = logits.weight.clone()
    quantizer.restart_noise = 0.0
    assert quantizer.restart_dead_codes(usage, torch.zeros(1, 4, 2, 2)) == 3
    for dead in (1, 2, 4):
        donor = next(d for d in (0, 3, 5) if torch.equal(logits.weight[dead], before[d]))
        assert torch.equal(codebook.weight[:, dead], codebook.weight[:, donor])
        assert logits.bias[dead] == logits.bias[donor]
    assert quantizer.restart_dead_codes(torch.ones(6), torch.zeros(1, 4, 2, 2)) == 0


def test_output_bias_starts_at_the_mean_colour(model):
    images = torch.ones(2, 3, 16, 16) * torch.tensor([0.9, 0.5, 0.1]).view(1, 3, 1, 1)
    model.init_output_bias(images)
    torch.nn.init.zeros_(model.decoder.layers[-1].weight)
    decoded = model.decode(torch.zeros(1, 4, 4, dtype=torch.long))
    torch.testing.assert_close(decoded[0, :, 0, 0], torch.tensor([0.9, 0.5, 0.1]))


def test_vq_quantizer_takes_the_nearest_unit_codebook_vector():
    torch.manual_seed(0)
    model = DiscreteVAE(DVAEConfig(**{**TINY.__dict__, "quantizer": "vq"})).eval()
    assert isinstance(model.quantizer, VectorQuantizer)
    images = torch.rand(2, 3, 16, 16)
    out = model(images, tau=1.0)
    features = model.encoder(map_pixels(images))
    vectors = torch.nn.functional.normalize(model.quantizer.to_vector(features), dim=1)
    table = model.quantizer.unit_codebook()  # (K, E), unit rows
    torch.testing.assert_close(table.norm(dim=1), torch.ones(TINY.codebook_size))
    nearest = torch.cdist(vectors.permute(0, 2, 3, 1).reshape(-1, TINY.code_width), table)
    assert torch.equal(out.codes.flatten(), nearest.argmin(1))
    assert torch.equal(model.encode(images), out.codes)
    # Training decodes the straight-through vectors: the same pictures as decode(codes).
    torch.testing.assert_close(
        model.decode(out.codes), unmap_pixels(torch.sigmoid(out.mu)), rtol=1e-4, atol=1e-5
    )
    assert out.quantizer_loss > 0
    out.quantizer_loss.backward()
    assert model.quantizer.codebook.grad is not None


def test_dead_vq_codes_move_onto_encoder_vectors():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(in_width=4, codebook_size=5, code_width=3)
    torch.nn.init.normal_(quantizer.codebook)  # as DiscreteVAE does: torch.empty may hold NaN
    features = torch.randn(2, 4, 2, 2)
    usage = torch.tensor([4.0, 0.0, 1.0, 0.0, 2.0])
    live = quantizer.codebook[[0, 2, 4]].clone()
    assert quantizer.restart_dead_codes(usage, features) == 2
    with torch.no_grad():
        vectors = torch.nn.functional.normalize(quantizer.to_vector(features), dim=1)
    pool = vectors.permute(0, 2, 3, 1).reshape(-1, 3)
    for dead in (1, 3):
        assert any(torch.allclose(quantizer.codebook[dead], row) for row in pool)
    assert torch.equal(quantizer.codebook[[0, 2, 4]], live)
