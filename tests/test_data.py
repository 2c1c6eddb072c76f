import io
import random
import tarfile

import numpy as np
import pytest
import torch
from helpers import bomb_png, encode
from PIL import Image

from dalle1.data import ImageFolderDataset, TarShardDataset, open_source
from dalle1.data.shards import expand_shards
from dalle1.data.transforms import BadSample, decode_caption, decode_image, resize_and_crop

S = 16
RED, BLUE = (220, 40, 40), (40, 80, 220)


def halves(width=40, height=20, left=RED, right=BLUE) -> Image.Image:
    image = Image.new("RGB", (width, height), left)
    image.paste(right, (width // 2, 0, width, height))
    return image


# --- decoding -------------------------------------------------------------------------------


def test_exif_orientation_is_applied():
    image = halves()  # stored 40 x 20: red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    decoded = decode_image(encode(image, "JPEG", exif=exif, quality=95))
    assert decoded.size == (20, 40)
    top, bottom = np.asarray(decoded)[2, 10], np.asarray(decoded)[-3, 10]
    assert abs(int(top[0]) - RED[0]) < 20 and abs(int(bottom[2]) - BLUE[2]) < 20


@pytest.mark.parametrize(
    "image, fmt, expected",
    [
        (Image.new("L", (8, 8), 128), "PNG", (128, 128, 128)),
        (Image.new("RGBA", (8, 8), (0, 0, 0, 0)), "PNG", (255, 255, 255)),  # transparent: white
        (Image.new("RGBA", (8, 8), (*RED, 255)), "PNG", RED),
        (Image.new("LA", (8, 8), (0, 255)), "PNG", (0, 0, 0)),
        (Image.new("RGB", (8, 8), RED).convert("P", palette=Image.Palette.ADAPTIVE), "PNG", RED),
        (Image.new("CMYK", (8, 8), (0, 0, 0, 0)), "JPEG", (255, 255, 255)),
        (Image.new("I;16", (8, 8), 65535), "PNG", (255, 255, 255)),
        (Image.new("I;16", (8, 8), 32768), "PNG", (128, 128, 128)),
        (Image.new("RGB", (8, 8), BLUE), "WEBP", BLUE),
    ],
)
def test_every_mode_becomes_rgb(image, fmt, expected):
    kwargs = {"lossless": True} if fmt == "WEBP" else {}
    decoded = decode_image(encode(image, fmt, **kwargs))
    assert decoded.mode == "RGB"
    np.testing.assert_allclose(np.asarray(decoded)[4, 4], expected, atol=3)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file"),
        (b"this is not an image at all", "cannot decode"),
        (encode(Image.new("RGB", (64, 64), RED))[:60], "cannot decode"),  # truncated
        (bomb_png(), "bomb"),
    ],
)
def test_bad_images_raise_bad_sample(data, reason):
    with pytest.raises(BadSample, match=reason):
        decode_image(data)


def test_the_decoded_size_is_bounded_by_bytes_as_well_as_pixels():
    grey16 = Image.fromarray(np.full((600, 600), 40000, dtype=np.uint16))  # 2 bytes a pixel
    grey8 = Image.new("L", (600, 600), 156)  # 1 byte a pixel
    limit = 600 * 600 * 3 // 2
    assert np.asarray(decode_image(encode(grey8), max_bytes=limit))[0, 0, 0] == 156
    assert np.asarray(decode_image(encode(grey16)))[0, 0, 0] == 156  # 40000 / 65535 of 255
    with pytest.raises(BadSample, match="600x600 I;16 pixels take 1 MiB decoded, over"):
        decode_image(encode(grey16), max_bytes=limit)


def test_captions_are_lines_and_bad_ones_raise():
    assert decode_caption(b"a red circle\n\n a blue square \n") == [
        "a red circle",
        "a blue square",
    ]
    with pytest.raises(BadSample, match="empty caption"):
        decode_caption(b" \n\n")
    with pytest.raises(BadSample, match="not UTF-8"):
        decode_caption(b"\xff\xfe\xfa caption")


def test_crop_is_centred_in_eval_and_random_in_training():
    image = Image.new("RGB", (30, 10), RED)
    image.paste(BLUE, (10, 0, 20, 10))  # the middle third is blue
    centre = np.asarray(resize_and_crop(image, 10, None))
    assert centre.shape == (10, 10, 3) and (centre[..., 2] > 200).all()
    lefts = {
        tuple(np.asarray(resize_and_crop(image, 10, random.Random(s)))[0, 0]) for s in range(20)
    }
    assert len(lefts) > 1


# --- image folders --------------------------------------------------------------------------


def write_pair(folder, name, image_bytes, caption: bytes | None):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes)
    if caption is not None:
        path.with_suffix(".txt").write_bytes(caption)


@pytest.fixture
def messy_folder(tmp_path):
    png = encode(halves())
    write_pair(tmp_path, "good.png", png, b"a red and blue picture\nanother caption\n")
    write_pair(tmp_path, "nested/deeper/good.jpg", encode(halves(), "JPEG"), b"a nested one\n")
    write_pair(
        tmp_path, "other.webp", encode(halves(), "WEBP"), "caf\u00e9 na\u00efve \u2603".encode()
    )
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    write_pair(tmp_path, "truncated.png", encode(noise)[:2000], b"cut short\n")
    write_pair(tmp_path, "garbage.png", b"not an image", b"garbage\n")
    write_pair(tmp_path, "zero.jpg", b"", b"zero bytes\n")
    write_pair(tmp_path, "bomb.png", bomb_png(), b"bomb\n")
    write_pair(tmp_path, "uncaptioned.png", png, None)
    write_pair(tmp_path, "empty_caption.png", png, b"\n  \n")
    write_pair(tmp_path, "latin1.png", png, "na\xefve".encode("latin-1"))
    (tmp_path / "notes.md").write_text("not a sample")
    return tmp_path


def test_folder_skips_and_counts_every_bad_input(messy_folder, caplog):
    dataset = ImageFolderDataset(messy_folder, S, train=False)
    names = sorted(str(path.relative_to(messy_folder)) for path, _ in dataset.items)
    assert names == ["good.png", "nested/deeper/good.jpg", "other.webp", "truncated.png"]
    assert dataset.skips.count == 6
    assert "skipped 6 sample(s)" in caplog.text and "uncaptioned.png" in caplog.text
    items = [dataset[i] for i in range(len(dataset))]  # truncated.png fails only when decoded
    assert dataset.skips.count == 7 and "truncated.png" in caplog.text
    for image, caption in items:
        assert image.shape == (3, S, S) and image.dtype == torch.float32
        assert 0.0 <= image.min() and image.max() <= 1.0 and isinstance(caption, str)
    assert "caf\u00e9 na\u00efve \u2603" in {c for _, c in items}


def test_folder_draws_one_caption_per_epoch_reproducibly(messy_folder):
    dataset = ImageFolderDataset(messy_folder, S, train=True, seed=1)
    index = next(i for i, (p, _) in enumerate(dataset.items) if p.name == "good.png")
    seen = set()
    for epoch in range(12):
        dataset.set_epoch(epoch)
        image, caption = dataset[index]
        again_image, again_caption = dataset[index]
        assert caption == again_caption and torch.equal(image, again_image)
        seen.add(caption)
    assert seen == {"a red and blue picture", "another caption"}


def test_folder_without_usable_pairs_stops_at_once(tmp_path):
    write_pair(tmp_path, "a.png", b"", b"caption\n")
    write_pair(tmp_path, "b.png", encode(halves()), None)
    with pytest.raises(ValueError, match="no usable image-caption pair"):
        ImageFolderDataset(tmp_path, S)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataset(tmp_path / "absent", S)


# --- tar shards -----------------------------------------------------------------------------


def write_shard(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def shards(tmp_path):
    png, jpg = encode(halves()), encode(halves(), "JPEG")
    write_shard(
        tmp_path / "shard-0.tar",
        {
            "s00.png": png,
            "s00.txt": b"first\n",
            "s01.jpg": jpg,
            "s01.txt": b"second\nsecond again\n",
            "s02.jpg": b"corrupt",
            "s02.txt": b"broken image\n",
            "s03.png": png,  # no caption
        },
    )
    write_shard(
        tmp_path / "shard-1.tar",
        {
            "s10.webp": encode(halves(), "WEBP"),
            "s10.txt": b"third\n",
            "s11.png": png,
            "s11.txt": b"\xff\xfe bad",
            "s12.txt": b"caption without image\n",
        },
    )
    return tmp_path


def test_shards_yield_good_samples_and_skip_bad_ones(shards, caplog):
    dataset = TarShardDataset(str(shards / "shard-{0..1}.tar"), S, train=False)
    samples = list(dataset)
    assert sorted(c for _, c in samples) == ["first", "second", "third"]
    assert all(image.shape == (3, S, S) for image, _ in samples)
    assert dataset.skips.count == 4
    for name in ("s02", "s03", "s11", "s12"):
        assert name in caplog.text


def test_shards_split_between_ranks_and_workers(shards, monkeypatch):
    pattern = str(shards / "shard-{0..1}.tar")
    loader = torch.utils.data.DataLoader(
        TarShardDataset(pattern, S, train=True), batch_size=None, num_workers=2
    )
    captions = sorted(c for _, c in loader)  # each sample once, from whichever worker
    assert len(captions) == 3 and captions[0] == "first" and captions[2] == "third"
    assert captions[1] in ("second", "second again")
    monkeypatch.setattr("dalle1.data.shards.rank_and_world", lambda: (1, 2))
    rank1 = list(TarShardDataset(pattern, S, train=False))
    assert [c for _, c in rank1] == ["third"]


def test_truncated_shard_keeps_what_it_can(shards):
    whole = (shards / "shard-0.tar").read_bytes()
    (shards / "cut.tar").write_bytes(whole[: len(whole) // 2])
    dataset = TarShardDataset(str(shards / "cut.tar"), S, train=False)
    captions = [c for _, c in dataset]
    assert captions[:1] == ["first"] and dataset.skips.count >= 1


def test_shard_errors_are_clear(shards):
    with pytest.raises(FileNotFoundError, match="shard-2.tar"):
        TarShardDataset(str(shards / "shard-{0..2}.tar"), S)
    write_shard(shards / "bad.tar", {"x.png": b"corrupt", "x.txt": b"caption\n"})
    with pytest.raises(ValueError, match="no usable image-caption pair"):
        TarShardDataset(str(shards / "bad.tar"), S)
    assert expand_shards(str(shards / "shard-{0..1}.tar")) == [
        str(shards / "shard-0.tar"),
        str(shards / "shard-1.tar"),
    ]


def test_open_source_picks_the_format(shards, messy_folder):
    assert isinstance(open_source(str(messy_folder), S), ImageFolderDataset)
    assert isinstance(open_source(str(shards / "shard-0.tar"), S), TarShardDataset)
    with pytest.raises(FileNotFoundError, match="neither a folder nor tar shards"):
        open_source(str(shards / "missing"), S)
