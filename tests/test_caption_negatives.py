"""Hard negative captions: one swap or one replacement, punctuation kept, never the caption;
mirrored captions and images."""

import random

import pytest
import torch

from dalle1.caption_negatives import CaptionNegatives, caption_words, mirror_caption
from dalle1.stages.clip import CLIPDataConfig, add_mirrored


def all_negatives(negatives: CaptionNegatives, caption: str, draws: int = 200) -> set:
    rng = random.Random(0)
    return {negatives.make(caption, rng) for _ in range(draws)}


def test_swaps_and_replacements_are_the_only_changes():
    negatives = CaptionNegatives([["red", "blue"], ["left", "right"]])
    assert all_negatives(negatives, "a red circle left of a blue square") == {
        "a blue circle left of a red square",  # colours swapped
        "a blue circle left of a blue square",  # one colour replaced
        "a red circle left of a red square",
        "a red circle right of a blue square",  # relation reversed
    }
    # Punctuation and case: the changed word keeps its comma; the rest is lower-cased.
    assert all_negatives(negatives, "A Red, small circle") == {"a blue, small circle"}


def test_a_replaced_word_can_become_any_word_of_its_groups_and_never_stays():
    negatives = CaptionNegatives([["above", "below"], ["above", "beneath"], ["over", "under"]])
    assert all_negatives(negatives, "a circle above a square") == {
        "a circle below a square",
        "a circle beneath a square",
    }
    assert all_negatives(negatives, "a circle beneath a square") == {"a circle above a square"}
    captions = ["a circle over a square", "an over over an under", "above above"]
    for caption in captions:
        assert caption not in all_negatives(negatives, caption)


def test_no_negative_without_a_group_word_and_groups_are_checked():
    negatives = CaptionNegatives([["red", "blue"]])
    assert negatives.make("a green circle", random.Random(0)) is None
    assert negatives.make("", random.Random(0)) is None
    with pytest.raises(ValueError, match="two different words"):
        CaptionNegatives([["red", "red"]])


def test_same_seed_same_negatives():
    negatives = CaptionNegatives([["red", "green", "blue"], ["circle", "square"]])
    caption = "a red circle above a green square"
    first = [negatives.make(caption, random.Random(7)) for _ in range(3)]
    assert len(set(first)) == 1


def test_mirrored_captions_swap_the_pair_words_and_the_batch_gets_flipped_images():
    pairs = [["left", "right"]]
    assert mirror_caption("A red circle left of a blue square", pairs) == (
        "a red circle right of a blue square"
    )
    assert mirror_caption("in the top right, a cat", pairs) == "in the top left, a cat"
    assert mirror_caption("a red circle above a blue square", pairs) is None
    images = torch.rand(3, 3, 4, 4)
    captions = ["a circle on the left", "a square in the middle", "on the right"]
    out, out_captions, mirrored = add_mirrored(images, captions, pairs)
    assert out_captions == [*captions, "a circle on the right", "on the left"]
    assert mirrored == [0, 2]
    torch.testing.assert_close(out[:3], images)
    torch.testing.assert_close(out[3], images[0].flip(-1))  # left-right: the last axis
    torch.testing.assert_close(out[4, :, :, 0], images[2, :, :, -1])


def test_top_to_bottom_flips_skip_the_captions_a_flip_makes_false():
    pairs = [["top", "bottom"], ["above", "below"]]
    images = torch.rand(2, 3, 4, 4)
    captions = ["a circle above a square", "a triangle above a square"]
    out, out_captions, flipped = add_mirrored(images, captions, pairs, dim=-2, unless=["triangle"])
    assert out_captions == [*captions, "a circle below a square"] and flipped == [0]
    torch.testing.assert_close(out[2, :, 0], images[0, :, -1])  # top row <- bottom row


def test_mirror_words_must_be_pairs():
    with pytest.raises(ValueError, match="pairs of two different words"):
        CLIPDataConfig(mirror_words=[["left", "right", "centre"]])


def test_word_swaps_make_a_negative_from_any_caption():
    negatives = CaptionNegatives([], swap_words=True)
    rng = random.Random(0)
    made = {negatives.make("A dog chasing a cat.", rng) for _ in range(50)}
    assert "a cat chasing a dog." in made and "a dog chasing a cat." not in made
    # the same words in another order; punctuation stays where it was
    assert all(
        sorted(caption_words(m)) == sorted(["a", "dog", "chasing", "a", "cat"]) for m in made
    )
    assert all(m.endswith(".") for m in made)
    assert negatives.make("cat cat", rng) is None  # no two different words
    assert CaptionNegatives([]).make("a dog chasing a cat", rng) is None  # off by default
    # A caption that a word group changes takes the group's change.
    grouped = CaptionNegatives([["red", "blue"]], swap_words=True)
    assert grouped.make("a red ball on grass", rng) == "a blue ball on grass"
