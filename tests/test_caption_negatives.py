"""Hard negative captions: one swap or one replacement, punctuation kept, never the caption."""

import random

import pytest

from dalle1.caption_negatives import CaptionNegatives


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
