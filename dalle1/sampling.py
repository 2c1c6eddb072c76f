"""Autoregressive sampling of image codes given text, with a key/value cache.

generate() fills the image cells in raster order: `prefill` runs the text (and any given top
rows, for completion) through the model once, then `decode_step` costs one position per layer
per new cell. Without the cache every step reruns the whole prefix (for tests and measuring).

Classifier-free guidance (beyond the paper): the same cells are also predicted from the
padding-only text, and the logits mixed as uncond + scale * (cond - uncond). Both halves run as
one batch of 2B rows, each row with its own cache entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dalle1.attention import KVCache
from dalle1.transformer import DALLE


@dataclass
class SamplingConfig:
    temperature: float = 1.0  # 0: greedy (argmax)
    top_k: int = 0  # keep the k most likely codes; 0 = all
    top_p: float = 1.0  # keep the smallest set of codes with this much probability; 1 = all
    guidance_scale: float = 1.0  # classifier-free guidance; 1 = off
    batch_size: int = 32  # candidates per model call: bounds memory for large n

    def __post_init__(self) -> None:
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(
                "temperature must be >= 0, top_k >= 0 and top_p in (0, 1], got "
                f"{self.temperature}, {self.top_k}, {self.top_p}"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """(B, K) logits -> a copy with -inf outside the top-k / top-p support."""
    logits = logits.clone()
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits[logits < kth] = float("-inf")
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = probs.cumsum(-1) - probs  # probability mass of the codes ranked above
        drop_sorted = before >= top_p  # the first code is always kept
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits[drop] = float("-inf")
    return logits


def pick(logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None):
    """(B, K) logits -> (B,) codes."""
    if config.temperature == 0:
        return logits.argmax(-1)
    logits = filter_logits(logits.float() / config.temperature, config.top_k, config.top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def padding_text(model: DALLE, batch: int, device: torch.device) -> torch.Tensor:
    """(B, T) padding-only text: the unconditional prompt of classifier-free guidance."""
    c = model.config
    ids = torch.arange(c.text_vocab_size, c.text_vocab_size + c.text_length, device=device)
    return ids.expand(batch, -1)


def prefill(model: DALLE, text: torch.Tensor, inputs: torch.Tensor, cache: KVCache):
    """Run the text and the first image positions through the model once, filling the cache.

    text: (B, T) ids; inputs: (B, n + 1) image-position inputs (the start token, then the n
    given codes). Returns (B, D) features of the last position: they predict cell n.
    """
    return model.run_blocks(model.embed(text, inputs), cache, start=0)[:, -1]


def decode_step(model: DALLE, code: torch.Tensor, position: int, cache: KVCache):
    """One new stream position through every layer, attending to the cache.

    code: (B, 1) the code of the cell before `position`'s cell. Returns (B, D) features that
    predict the code of cell position - T.
    """
    return model.run_blocks(model.embed(None, code, position), cache, position)[:, -1]


@torch.no_grad()
def generate(
    model: DALLE,
    text: torch.Tensor,
    config: SamplingConfig | None = None,
    prefix: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Sample the image codes of one batch.

    text: (B, T) ids; prefix: (B, n) codes of the first n cells (raster order) to keep, e.g.
    the top rows of an image for completion. Returns (B, h*w) int64 codes. The inputs are
    never modified. use_cache=False reruns the whole prefix at every cell (for tests and
    measurements).
    """
    config = config or SamplingConfig()
    c = model.config
    batch, cells = text.shape[0], c.grid**2
    codes = torch.zeros(batch, cells, dtype=torch.long, device=text.device)
    given = 0
    if prefix is not None:
        given = prefix.shape[1]
        if prefix.shape[0] != batch or not 0 <= given < cells:
            raise ValueError(
                f"prefix must be (B={batch}, n < {cells}) codes, got {tuple(prefix.shape)}"
            )
        codes[:, :given] = prefix
    guided = config.guidance_scale != 1.0
    if guided:  # rows B..2B: the same cells from the padding-only text
        text = torch.cat([text, padding_text(model, batch, text.device)])

    def both(x: torch.Tensor) -> torch.Tensor:  # the same codes for the guided halves
        return torch.cat([x, x]) if guided else x

    def pick_cell(features: torch.Tensor) -> torch.Tensor:  # (rows, D) -> (B,) codes
        logits = model.image_head(features).float()
        if guided:
            cond, uncond = logits.chunk(2)
            logits = uncond + config.guidance_scale * (cond - uncond)
        return pick(logits, config, generator)

    if not use_cache:
        for cell in range(given, cells):
            x = model.embed(text, model.image_inputs(both(codes[:, :cell])))
            codes[:, cell] = pick_cell(model.run_blocks(x)[:, -1])
        return codes
    cache = model.new_cache()
    features = prefill(model, text, model.image_inputs(both(codes[:, :given])), cache)
    for cell in range(given, cells):
        if cell > given:
            code = both(codes[:, cell - 1 : cell])
            features = decode_step(model, code, c.text_length + cell, cache)
        codes[:, cell] = pick_cell(features)
    return codes


def sample_candidates(
    model: DALLE,
    text: torch.Tensor,
    n: int,
    config: SamplingConfig | None = None,
    prefix: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    progress=None,
) -> torch.Tensor:
    """n candidates per caption, config.batch_size rows at a time; the rows of several captions
    share batches, so many captions with few candidates each still fill them.

    text: (T,) ids of one caption or (C, T) of C; prefix: (m,) codes kept in every candidate,
    or None. Returns (C * n, h*w) codes, caption by caption. progress: optional
    callable(count) told how many candidates each batch finished.
    """
    config = config or SamplingConfig()
    rows = (text if text.ndim == 2 else text[None]).repeat_interleave(n, dim=0)  # (C n, T)
    out = []
    for part in rows.split(config.batch_size):
        batch_prefix = None if prefix is None else prefix.expand(len(part), -1)
        out.append(generate(model, part, config, batch_prefix, generator))
        if progress is not None:
            progress(len(part))
    return torch.cat(out)
