"""The text tokenizer: sentencepiece BPE over lower-cased captions, padded per position.

Every caption becomes exactly `text_length` ids: its BPE tokens (truncated when too long), then
for each unused position p the padding id `vocab_size + p`. Each position has its own learned
padding token (Ramesh et al. 2021, appendix B.2) instead of an attention mask, so the id space
of a model is vocab_size + text_length.

BPE dropout (the paper uses 10% in training) is a per-call argument: on while training the
transformer, off when sampling. It is applied here rather than by sentencepiece's sampler, whose
result for a given seed depends on earlier calls in the process: a resumed or multi-process run
must draw the same pieces.
"""

from __future__ import annotations

import io
import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm
import torch

logger = logging.getLogger(__name__)


def normalize_caption(caption: str) -> str:
    """Lower-cased, with runs of whitespace turned into one space."""
    return " ".join(caption.lower().split())


@dataclass
class TokenizerTrainingConfig:
    """What `python train.py tokenizer` trains."""

    data: str = ""  # captioned images: a folder, tar shards or a token cache
    vocab: int = 16384  # BPE ids (the paper: 16384; fewer when the captions are few)
    out: str = ""  # the .model file to write

    def __post_init__(self) -> None:
        if not self.data or not self.out:
            raise ValueError("give the captions' source (--data) and the file to write (--out)")


def train_tokenizer(captions: Iterable[str], vocab_size: int, out: str | Path) -> Path:
    """Train a BPE model on `captions` and write it to `out` (a sentencepiece .model file).

    When the captions cannot fill `vocab_size` pieces (a small data set), the vocabulary is
    smaller; `TextTokenizer.vocab_size` tells the real size.
    """
    texts = [text for text in (normalize_caption(c) for c in captions) if text]
    if not texts:
        raise ValueError("no non-empty captions to train the tokenizer on")
    smallest = 256 + 1 + len(set("".join(texts)))  # byte pieces, unknown, every character
    if vocab_size < smallest:
        raise ValueError(
            f"vocab_size {vocab_size} is too small for these captions: at least {smallest} "
            "(256 byte-fallback ids, the unknown id and one per distinct character)"
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # a small caption set may not fill the vocabulary
        character_coverage=1.0,
        byte_fallback=True,  # unseen characters become bytes, never an unknown id
        unk_id=0,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        normalization_rule_name="identity",  # captions are normalized by normalize_caption
        num_threads=1,
        minloglevel=2,
    )
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(model.getvalue())
    tmp.replace(out)
    return out


class TextTokenizer:
    """Captions <-> (text_length,) int64 ids; ids >= vocab_size are per-position padding."""

    def __init__(self, path: str | Path, text_length: int) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"tokenizer file {str(path)!r} not found (train one with `train.py tokenizer`)"
            )
        self.processor = spm.SentencePieceProcessor()
        try:
            self.processor.load(str(path))
        except Exception as err:  # sentencepiece raises OSError or RuntimeError
            raise ValueError(f"{str(path)!r} is not a sentencepiece model: {err}") from err
        if text_length < 1:
            raise ValueError(f"text_length must be positive, got {text_length}")
        self.path, self.text_length = path, text_length
        self.vocab_size = self.processor.get_piece_size()
        sp = self.processor
        special = [
            sp.is_byte(i) or sp.is_unknown(i) or sp.is_control(i) for i in range(self.vocab_size)
        ]
        normal = [i for i in range(self.vocab_size) if not special[i]]
        self._piece_ids = {sp.id_to_piece(i): i for i in normal}
        self._merge_scores = {sp.id_to_piece(i): sp.get_score(i) for i in normal}
        self._byte_ids = [sp.piece_to_id(f"<0x{b:02X}>") for b in range(256)]

    @classmethod
    def load(cls, path: str | Path, text_length: int, expected_vocab: int = 0) -> TextTokenizer:
        """The tokenizer a model was (or will be) trained with; when expected_vocab is not 0,
        its vocabulary must have that many BPE ids."""
        tokenizer = cls(path, text_length)
        if expected_vocab and expected_vocab != tokenizer.vocab_size:
            raise ValueError(
                f"the tokenizer {str(path)!r} has {tokenizer.vocab_size} ids but the model "
                f"expects text_vocab_size {expected_vocab}"
            )
        return tokenizer

    @property
    def total_vocab_size(self) -> int:
        """BPE ids plus one padding id per text position."""
        return self.vocab_size + self.text_length

    def encode(self, caption: str, dropout: float = 0.0, seed: int | None = None) -> torch.Tensor:
        """caption -> (text_length,) int64. dropout: BPE dropout probability (0 = off); seed
        makes the dropped merges repeatable."""
        text = normalize_caption(caption)
        if dropout > 0:
            ids = self._encode_with_dropout(text, dropout, random.Random(seed))
        else:
            ids = self.processor.encode(text)
        ids = ids[: self.text_length]
        padding = range(self.vocab_size + len(ids), self.vocab_size + self.text_length)
        return torch.tensor(ids + list(padding), dtype=torch.long)

    def _encode_with_dropout(self, text: str, dropout: float, rng: random.Random) -> list[int]:
        """BPE with dropout (Provilkov et al. 2020): words start as characters, and at every
        step the highest-scoring merge is applied among the possible ones that survive a coin
        flip each (skipped with probability `dropout`); with dropout 0 this is plain BPE."""
        ids: list[int] = []
        for word in text.split(" ") if text else []:
            symbols = list("\u2581" + word)  # sentencepiece marks a word start with U+2581
            while len(symbols) > 1:
                best, where = None, -1
                for i in range(len(symbols) - 1):
                    score = self._merge_scores.get(symbols[i] + symbols[i + 1])
                    if score is not None and rng.random() >= dropout:
                        if best is None or score > best:
                            best, where = score, i
                if best is None:
                    break
                symbols[where : where + 2] = [symbols[where] + symbols[where + 1]]
            for symbol in symbols:
                if symbol in self._piece_ids:
                    ids.append(self._piece_ids[symbol])
                else:  # a character the tokenizer never saw: its UTF-8 bytes
                    ids.extend(self._byte_ids[b] for b in symbol.encode("utf-8"))
        return ids

    def encode_batch(self, captions: list[str], dropout: float = 0.0) -> torch.Tensor:
        """list of B captions -> (B, text_length) int64."""
        return torch.stack([self.encode(c, dropout) for c in captions])

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        """(text_length,) ids -> the lower-cased caption (padding ids dropped)."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return self.processor.decode([i for i in ids if 0 <= i < self.vocab_size])
