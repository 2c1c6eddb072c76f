"""Converted tokenizers give their reference implementation's codes and images.

The references come from the package index, for the tests only (`DALL-E`,
`taming-transformers-rom1504`); LlamaGen's VQ is rebuilt from taming's pieces with its own
parameter names. Each is made at random, with noise on every bias so that no zero bias hides a
wrong mapping, saved as its users have it on disk, converted and compared.
"""

import json
import math

import dall_e  # the references: `make test` installs them (see the Makefile)
import pytest
import taming.modules.diffusionmodules.model as taming_model
import taming.modules.vqvae.quantize as taming_quantize
import torch
import yaml
from torch import nn

import train
from dalle1.__main__ import main as dalle1_main
from vqvae import load_image_tokenizer
from vqvae.convert import convert_llamagen, convert_openai_dvae, convert_taming, read_checkpoint


def noisy_biases(module: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("b") or name.endswith("bias"):
                p.add_(torch.randn(p.shape, generator=generator) * 0.1)
    return module.eval()


def images(size: int, n: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def same_codes_and_images(model, reference) -> None:
    """The converted model encodes 32 px images as the reference does (reference.codes) and
    draws codes as it does (reference.draw), within 1e-5."""
    x = images(32)
    with torch.no_grad():
        want = reference.codes(x)
        drawn = reference.draw(want)
    codes = model.encode(x)
    assert codes.shape == (3, 8, 8) and torch.equal(codes, want)
    assert len(codes.unique()) > 1  # the comparison is not between constant grids
    assert torch.allclose(model.decode(codes), drawn, atol=1e-5)


def save_openai_dvae(folder) -> tuple[nn.Module, nn.Module]:
    """A small random dVAE from the DALL-E package, pickled whole as the release is."""
    torch.manual_seed(0)
    encoder = noisy_biases(dall_e.Encoder(n_hid=64, n_blk_per_group=1, vocab_size=512))
    decoder = noisy_biases(dall_e.Decoder(n_init=32, n_hid=64, n_blk_per_group=1, vocab_size=512))
    torch.save(encoder, folder / "encoder.pkl")
    torch.save(decoder, folder / "decoder.pkl")
    return encoder, decoder


def test_openai_dvae_gives_the_reference_codes_and_images(tmp_path):
    encoder, decoder = save_openai_dvae(tmp_path)
    model = convert_openai_dvae(tmp_path / "encoder.pkl", tmp_path / "decoder.pkl", 32)
    x = images(32)
    with torch.no_grad():
        want = encoder(dall_e.map_pixels(x)).argmax(1)
        one_hot = nn.functional.one_hot(want, 512).permute(0, 3, 1, 2).float()
        drawn = dall_e.unmap_pixels(torch.sigmoid(decoder(one_hot)[:, :3]))
    codes = model.encode(x)
    assert codes.shape == (3, 4, 4) and torch.equal(codes, want)
    assert len(codes.unique()) > 1  # the comparison is not between constant grids
    assert torch.allclose(model.decode(codes), drawn, atol=1e-5)


TAMING_DD = {
    "double_z": False,
    "z_channels": 64,
    "resolution": 32,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 32,
    "ch_mult": [1, 2, 2],
    "num_res_blocks": 1,
    "attn_resolutions": [8],
    "dropout": 0.0,
}


class TamingVQ(nn.Module):
    """taming's VQModel and GumbelVQ without Lightning: the same parts under the same names."""

    def __init__(self, gumbel: bool, n_embed: int = 128, embed_dim: int = 16) -> None:
        super().__init__()
        self.encoder = taming_model.Encoder(**TAMING_DD)
        self.decoder = taming_model.Decoder(**TAMING_DD)
        z = TAMING_DD["z_channels"]
        if gumbel:
            self.quantize = taming_quantize.GumbelQuantize(embed_dim, embed_dim, n_embed)
        else:
            self.quantize = taming_quantize.VectorQuantizer2(n_embed, embed_dim, beta=0.25)
        self.quant_conv = nn.Conv2d(z, embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z, 1)
        self.loss = nn.Linear(2, 2)  # the checkpoint's loss.* weights, which conversion drops

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        h = self.quant_conv(self.encoder(x * 2 - 1))
        if isinstance(self.quantize, taming_quantize.GumbelQuantize):
            return self.quantize.proj(h).argmax(1)  # the noise-free choice
        _, _, (_, _, indices) = self.quantize(h)
        return indices.reshape(h.shape[0], h.shape[2], h.shape[3])

    def draw(self, codes: torch.Tensor) -> torch.Tensor:
        b, h, w = codes.shape
        shape = (b, h, w, self.quant_conv.out_channels)
        quant = self.quantize.get_codebook_entry(codes.flatten(), shape)
        return ((self.decoder(self.post_quant_conv(quant)) + 1) / 2).clamp(0, 1)


@pytest.mark.parametrize("gumbel", [False, True], ids=["vq", "gumbel"])
def test_taming_vqgan_gives_the_reference_codes_and_images(tmp_path, gumbel):
    torch.manual_seed(0)
    reference = noisy_biases(TamingVQ(gumbel))
    with torch.no_grad():  # codebook vectors as far apart as trained ones
        weight = reference.quantize.embed.weight if gumbel else reference.quantize.embedding.weight
        weight.normal_()
    target = "taming.models.vqgan." + ("GumbelVQ" if gumbel else "VQModel")
    config = {"model": {"target": target, "params": {"n_embed": 128, "embed_dim": 16}}}
    config["model"]["params"]["ddconfig"] = TAMING_DD
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(config))
    torch.save({"state_dict": reference.state_dict(), "global_step": 7}, tmp_path / "model.ckpt")
    model = convert_taming(tmp_path / "model.ckpt", tmp_path / "model.yaml")
    same_codes_and_images(model, reference)


class LlamaGenVQ(nn.Module):
    """LlamaGen's VQModel (tokenizer/tokenizer_image/vq_model.py) from taming's blocks: its
    parameter names, attention at the lowest resolution only, an l2-normalised codebook."""

    def __init__(self, ch: int = 32, mult=(1, 1, 2), z: int = 64, n_e: int = 256, e_dim: int = 8):
        super().__init__()
        block = taming_model.ResnetBlock
        levels = len(mult)

        def res(n_in, n_out):
            return block(in_channels=n_in, out_channels=n_out, dropout=0.0, temb_channels=0)

        self.encoder, self.decoder = nn.Module(), nn.Module()
        self.encoder.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        self.encoder.conv_blocks, previous = nn.ModuleList(), ch
        for i, m in enumerate(mult):
            level = nn.Module()
            level.res = nn.ModuleList(
                [res(previous if j == 0 else ch * m, ch * m) for j in range(2)]
            )
            last = i == levels - 1
            level.attn = nn.ModuleList(
                [taming_model.AttnBlock(ch * m) for _ in range(2)] if last else []
            )
            if not last:
                level.downsample = taming_model.Downsample(ch * m, True)
            self.encoder.conv_blocks.append(level)
            previous = ch * m
        self.encoder.mid = nn.ModuleList(
            [res(previous, previous), taming_model.AttnBlock(previous), res(previous, previous)]
        )
        self.encoder.norm_out = taming_model.Normalize(previous)
        self.encoder.conv_out = nn.Conv2d(previous, z, 3, padding=1)
        self.decoder.conv_in = nn.Conv2d(z, previous, 3, padding=1)
        self.decoder.mid = nn.ModuleList(
            [res(previous, previous), taming_model.AttnBlock(previous), res(previous, previous)]
        )
        self.decoder.conv_blocks = nn.ModuleList()
        for i in reversed(range(levels)):
            level, width = nn.Module(), ch * mult[i]
            level.res = nn.ModuleList([res(previous if j == 0 else width, width) for j in range(3)])
            level.attn = nn.ModuleList(
                [taming_model.AttnBlock(width) for _ in range(3)] if i == levels - 1 else []
            )
            if i != 0:
                level.upsample = taming_model.Upsample(width, True)
            self.decoder.conv_blocks.append(level)
            previous = width
        self.decoder.norm_out = taming_model.Normalize(previous)
        self.decoder.conv_out = nn.Conv2d(previous, 3, 3, padding=1)
        self.quantize = nn.Module()
        self.quantize.embedding = nn.Embedding(n_e, e_dim)
        self.quantize.register_buffer("codebook_used", torch.zeros(65536))
        self.quant_conv, self.post_quant_conv = nn.Conv2d(z, e_dim, 1), nn.Conv2d(e_dim, z, 1)

    @staticmethod
    def run(part: nn.Module, h: torch.Tensor, up: bool) -> torch.Tensor:
        def middle(h):
            h = part.mid[0](h, None)
            return part.mid[2](part.mid[1](h), None)

        h = part.conv_in(h)
        if up:
            h = middle(h)
        for level in part.conv_blocks:
            for j, block in enumerate(level.res):
                h = block(h, None)
                if len(level.attn):
                    h = level.attn[j](h)
            for name in ("downsample", "upsample"):
                if hasattr(level, name):
                    h = getattr(level, name)(h)
        if not up:
            h = middle(h)
        h = part.norm_out(h)
        return part.conv_out(h * torch.sigmoid(h))

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        z = self.quant_conv(self.run(self.encoder, x * 2 - 1, up=False))
        flat = nn.functional.normalize(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]), dim=-1)
        book = nn.functional.normalize(self.quantize.embedding.weight, dim=-1)
        d = (
            flat.pow(2).sum(1, keepdim=True)
            + book.pow(2).sum(1)
            - 2 * torch.einsum("bd,dn->bn", flat, book.T)
        )
        return d.argmin(1).reshape(z.shape[0], z.shape[2], z.shape[3])

    def draw(self, codes: torch.Tensor) -> torch.Tensor:
        book = nn.functional.normalize(self.quantize.embedding.weight, dim=-1)
        quant = book[codes].permute(0, 3, 1, 2)
        return ((self.run(self.decoder, self.post_quant_conv(quant), up=True) + 1) / 2).clamp(0, 1)


def test_llamagen_vq_gives_the_reference_codes_and_images(tmp_path):
    torch.manual_seed(0)
    reference = noisy_biases(LlamaGenVQ())
    with torch.no_grad():
        reference.quantize.embedding.weight.normal_()
    checkpoint = {"model": reference.state_dict(), "steps": 5, "args": argparse_like()}
    torch.save(checkpoint, tmp_path / "vq.pt")
    model = convert_llamagen(tmp_path / "vq.pt", image_size=32)
    assert model.config.channel_mult == [1, 1, 2] and model.config.attention_sides == [8]
    same_codes_and_images(model, reference)


def argparse_like():
    """An object of a class the reader must not import (LlamaGen saves its argparse args)."""
    import argparse

    return argparse.Namespace(vq_model="VQ-16", image_size=256)


class Exploding:
    """A class whose unpickling would run code."""

    def __reduce__(self):
        return (math.factorial, (5,))


def test_the_reader_runs_no_code_from_the_file(tmp_path):
    torch.save({"weights": torch.ones(2), "trap": Exploding()}, tmp_path / "trap.pt")
    record = read_checkpoint(tmp_path / "trap.pt")
    assert torch.equal(record["weights"], torch.ones(2))
    assert not isinstance(record["trap"], int)  # math.factorial was never called


def test_convert_cli_and_train_all_on_a_converted_tokenizer(tmp_path, shapes_data, capsys):
    save_openai_dvae(tmp_path)
    out = tmp_path / "dvae"
    argv = ["convert-tokenizer", "--from", "openai-dvae", str(tmp_path / "encoder.pkl")]
    argv += [str(tmp_path / "decoder.pkl"), "--out", str(out), "--image-size", "32"]
    assert dalle1_main(argv) == 0, capsys.readouterr().err
    tokenizer = load_image_tokenizer(out)
    assert (tokenizer.grid, tokenizer.codebook_size) == (4, 512)
    assert dalle1_main(["convert-tokenizer", "--from", "taming", str(out), "--out", "x"]) == 2
    assert "reads MODEL.ckpt MODEL.yaml" in capsys.readouterr().err
    run = tmp_path / "all"
    steps = ["clip.train.max_steps=2", "dalle.train.max_steps=2", "clip.model.image_size=32"]
    argv = ["all", "--data", str(shapes_data), "--out", str(run), "--preset", "tiny"]
    argv += ["--text-vocab", "300", "--image-tokenizer", str(out), *steps]
    assert train.main(argv) == 0
    report = json.loads((run / "report.json").read_text())
    assert "vqvae" not in report["seconds"] and not (run / "vqvae").exists()
    assert (run / "completion.png").is_file()
    meta = json.loads((run / "cache" / "train" / "meta.json").read_text())
    assert meta["grid"] == 4 and meta["codebook_size"] == 512
