"""The BPE text tokenizer: round trip, per-position padding, truncation, odd input, bad files."""

import random

import pytest
import torch

from dalle1.tokenizer import TextTokenizer, train_tokenizer

CAPTIONS = [
    "a small red circle in the top left",
    "a large blue square on the right",
    "a red circle to the left of a blue square",
    "a green triangle above a yellow circle",
    "there is a purple square in the bottom right corner",
] * 20


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    return train_tokenizer(CAPTIONS, 300, tmp_path_factory.mktemp("tok") / "tok.model")


def test_round_trip_gives_the_lower_cased_caption(tokenizer_file):
    tokenizer = TextTokenizer(tokenizer_file, 32)
    for caption in ["A Red Circle   to the LEFT of a blue square", "a green triangle"]:
        ids = tokenizer.encode(caption)
        assert ids.shape == (32,) and ids.dtype == torch.int64
        assert tokenizer.decode(ids) == " ".join(caption.lower().split())


def test_padding_ids_are_distinct_per_position(tokenizer_file):
    tokenizer = TextTokenizer(tokenizer_file, 32)
    ids = tokenizer.encode("a red circle")
    used = int((ids < tokenizer.vocab_size).sum())
    assert 0 < used < 32
    pads = ids[used:]
    assert pads.tolist() == list(range(tokenizer.vocab_size + used, tokenizer.vocab_size + 32))
    assert tokenizer.total_vocab_size == tokenizer.vocab_size + 32
    # The same caption at another length keeps its tokens and pads the rest by position.
    assert (
        TextTokenizer(tokenizer_file, 40).encode("a red circle")[:used].tolist()
        == ids[:used].tolist()
    )


def test_long_captions_are_truncated(tokenizer_file):
    tokenizer = TextTokenizer(tokenizer_file, 8)
    ids = tokenizer.encode(" ".join(CAPTIONS[:5]))
    assert ids.shape == (8,) and bool((ids < tokenizer.vocab_size).all())


def test_empty_and_non_ascii_captions_do_not_crash(tokenizer_file):
    tokenizer = TextTokenizer(tokenizer_file, 16)
    empty = tokenizer.encode("")
    assert empty.tolist() == list(range(tokenizer.vocab_size, tokenizer.vocab_size + 16))
    assert tokenizer.decode(empty) == ""
    odd = "ein rotes Quadrat, größer 猫 🙂"
    ids = tokenizer.encode(odd)
    assert ids.shape == (16,) and bool((ids >= 0).all())
    assert tokenizer.decode(TextTokenizer(tokenizer_file, 64).encode(odd)) == odd.lower()


def test_bpe_dropout_is_off_by_default_and_seeded_when_on(tokenizer_file):
    tokenizer = TextTokenizer(tokenizer_file, 64)  # room for every character
    caption = "a red circle to the left of a blue square"
    plain = tokenizer.encode(caption)
    assert torch.equal(plain, tokenizer.encode(caption))
    dropped = [tokenizer.encode(caption, dropout=0.5, seed=s) for s in range(5)]
    assert any(not torch.equal(d, plain) for d in dropped)
    assert torch.equal(tokenizer.encode(caption, 0.5, seed=3), dropped[3])  # whatever came before
    assert all(tokenizer.decode(d) == caption for d in dropped)  # same text, other pieces


def test_bpe_with_zero_dropout_is_sentencepieces_bpe(tokenizer_file):
    tokenizer = TextTokenizer(tokenizer_file, 64)
    for caption in [*set(CAPTIONS), "an unseen word: xylophone! 猫", "", "a"]:
        text = " ".join(caption.lower().split())
        ours = tokenizer._encode_with_dropout(text, 0.0, random.Random(0))
        assert ours == tokenizer.processor.encode(text), caption


def test_missing_or_corrupt_tokenizer_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        TextTokenizer(tmp_path / "none.model", 8)
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a sentencepiece model")
    with pytest.raises(ValueError, match="not a sentencepiece model"):
        TextTokenizer(bad, 8)
    with pytest.raises(ValueError, match="no non-empty captions"):
        train_tokenizer(["", "  "], 100, tmp_path / "t.model")


def test_too_small_a_vocabulary_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="vocab_size 100 is too small"):
        train_tokenizer(CAPTIONS, 100, tmp_path / "t.model")
