"""Hard negative captions for CLIP: the true caption with exactly one thing changed.

A contrastive batch of random captions rarely holds two that differ only in which colour belongs
to which shape, or in left vs right, so a CLIP trained on it never has to read word order.
Beside each image's caption the CLIP stage adds one altered copy as an extra wrong answer
(as in NegCLIP, Yuksekgonul et al. 2023), made from groups of interchangeable words:

- swap: two different words of one group trade places
  ("a red circle left of a blue square" -> "a blue circle left of a red square");
- replace: one word becomes another of its groups ("left of" -> "right of", "red" -> "green").

Words of one group must differ in meaning: a group holding synonyms ("over", "above") would make
negatives that are true. For captions of any data set, where no word list fits, `swap_words`
makes the negative from the caption itself: two of its different words trade places ("a dog
chasing a cat" -> "a cat chasing a dog"), which only a CLIP that reads word order can tell apart.

mirror_caption() gives the caption of the image flipped left to right ("left" <-> "right"): the
mirrored scene joins the batch as one more (image, caption) pair, so each of the two is the
other's hardest negative in both directions.
"""

from __future__ import annotations

import random


class CaptionNegatives:
    def __init__(self, groups: list[list[str]], swap_words: bool = False) -> None:
        self.swap_words = swap_words
        self.alternatives: dict[str, set[str]] = {}  # word -> the words it can become
        self.group_of: dict[str, int] = {}  # word -> its first group, for swaps
        for index, group in enumerate(groups):
            words = [w.lower() for w in group]
            if len(set(words)) < 2:
                raise ValueError(f"a word group needs two different words, got {group}")
            for word in words:
                self.alternatives.setdefault(word, set()).update(w for w in words if w != word)
                self.group_of.setdefault(word, index)

    def make(self, caption: str, rng: random.Random) -> str | None:
        """One altered copy of the lower-cased caption, or None when no word of it is in a
        group. Each possible swap and each word that can be replaced is equally likely to be
        the change; a replaced word becomes any other word of its groups."""
        bare = caption_words(caption)
        places = [i for i, w in enumerate(bare) if w in self.alternatives]
        changes = [
            ("swap", i, j)
            for a, i in enumerate(places)
            for j in places[a + 1 :]
            if bare[i] != bare[j] and self.group_of[bare[i]] == self.group_of[bare[j]]
        ]
        changes += [("replace", i, None) for i in places]
        if not changes and self.swap_words:
            changes = [
                ("swap", i, j)
                for i in range(len(bare))
                for j in range(i + 1, len(bare))
                if bare[i] and bare[j] and bare[i] != bare[j]
            ]
        if not changes:
            return None
        kind, i, j = rng.choice(changes)
        new = list(bare)
        if kind == "swap":
            new[i], new[j] = bare[j], bare[i]
        else:
            new[i] = rng.choice(sorted(self.alternatives[bare[i]]))
        return with_words(caption, new)


def caption_words(caption: str) -> list[str]:
    """The lower-cased words of a caption, punctuation stripped."""
    return [w.strip(",.;:!?") for w in caption.lower().split(" ")]


def with_words(caption: str, new: list[str]) -> str:
    """The lower-cased caption with its caption_words() replaced by `new`, punctuation kept."""
    words = caption.lower().split(" ")
    bare = caption_words(caption)
    return " ".join(w.replace(b, n, 1) for w, b, n in zip(words, bare, new, strict=True))


def mirror_caption(caption: str, pairs: list[list[str]]) -> str | None:
    """The lower-cased caption with the words of each pair swapped, e.g. [["left", "right"]];
    None when it holds none of them (its mirrored image would fit it too)."""
    swap = {}
    for a, b in pairs:
        swap[a.lower()], swap[b.lower()] = b.lower(), a.lower()
    bare = caption_words(caption)
    if not any(w in swap for w in bare):
        return None
    return with_words(caption, [swap.get(w, w) for w in bare])
