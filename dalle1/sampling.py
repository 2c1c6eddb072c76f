"""Autoregressive sampling of image codes given text, with a key/value cache.

generate() fills the image cells in raster order: `prefill` runs the text (and any given top
rows, for completion) through the model once per group of rows that share them (the
candidates of one caption), then `decode_step` costs one position per layer per new cell,
attending only to the keys each layer's mask allows (dalle1/kv_cache.py). Without the cache
every step reruns the whole prefix (for tests and measuring). `fill()` is the general form: any
set of kept cells (an edit's region left out) is read through the cache as it is, and the
log-likelihood of the kept cells after the first sampled one comes back with the codes.

The decode step has static shapes, so it can be compiled (CUDA graphs on CUDA). On the CPU
compiling it did not pay for itself (bench/sampling_speed.py), so `compile="auto"` compiles on
CUDA only.

Classifier-free guidance (beyond the paper): the same cells are also predicted from the
padding-only text, and the logits mixed as uncond + scale * (cond - uncond). Both halves run as
one batch of 2B rows, each row with its own cache entries.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dalle1.device import autocast, autocast_dtype, free_memory
from dalle1.kv_cache import KVCache, row_bytes
from dalle1.masks import layer_masks
from dalle1.transformer import DALLE


@dataclass
class SamplingConfig:
    temperature: float = 1.0  # 0: greedy (argmax)
    top_k: int = 0  # keep the k most likely codes; 0 = all
    top_p: float = 1.0  # keep the smallest set of codes with this much probability; 1 = all
    guidance_scale: float = 1.0  # classifier-free guidance; 1 = off
    batch_size: int = 0  # candidates per model call; 0: as many as half the free memory holds
    compile: str = "auto"  # compile the decode step: auto (on CUDA only), yes or no
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on the CPU), fp32 or bf16

    def __post_init__(self) -> None:
        numbers = {"temperature": self.temperature, "top_p": self.top_p}
        numbers["guidance_scale"] = self.guidance_scale
        for name, value in numbers.items():  # NaN passes every comparison below
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(
                "temperature must be >= 0, top_k >= 0 and top_p in (0, 1], got "
                f"{self.temperature}, {self.top_k}, {self.top_p}"
            )
        if self.batch_size < 0:
            raise ValueError(f"batch_size must be at least 1 (or 0: auto), got {self.batch_size}")
        if self.compile not in ("auto", "yes", "no"):
            raise ValueError(f"compile must be auto, yes or no, got {self.compile!r}")
        autocast_dtype(self.precision, torch.device("cpu"))  # checks the name

    def compiles(self, device: torch.device) -> bool:
        return self.compile == "yes" or (self.compile == "auto" and device.type == "cuda")


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
    """(B, K) logits -> (B,) codes.

    Sampling inverts the cumulative distribution at one uniform draw per row: B random numbers
    per step, where torch.multinomial draws B x K (the slowest part of a CPU step at K = 8192).
    """
    if config.temperature == 0:
        return logits.argmax(-1)
    if config.temperature != 1:
        logits = logits / config.temperature
    if config.top_k or config.top_p < 1:
        logits = filter_logits(logits, config.top_k, config.top_p)
    draw = torch.rand(len(logits), 1, generator=generator, device=logits.device)
    return invert_cumulative(torch.softmax(logits, dim=-1), 1 - draw)


def invert_cumulative(weights: torch.Tensor, fraction: torch.Tensor, block: int = 128):
    """(B, K) weights >= 0 (each row's sum > 0), (B, 1) fractions in (0, 1] -> (B,) the first
    index whose cumulative weight reaches fraction x the row's total; never one of weight 0.

    In two levels, as a sequential cumulative sum over all K is the cost on a CPU: the sums of
    blocks of `block` weights locate the block, then one block's cumulative sum the index.
    """
    rows, count = weights.shape
    if count % block:
        weights = F.pad(weights, (0, -count % block))
    padded = weights.view(rows, -1, block)  # (B, nb, block)
    totals = padded.sum(-1).cumsum(-1)  # (B, nb)
    target = fraction * totals[:, -1:]
    chosen = torch.searchsorted(totals, target).clamp(max=totals.shape[1] - 1)  # (B, 1)
    before = torch.where(chosen > 0, totals.gather(1, (chosen - 1).clamp(min=0)), 0.0)
    inside = padded.gather(1, chosen[:, :, None].expand(-1, -1, block))[:, 0]  # (B, block)
    index = torch.searchsorted(before + inside.cumsum(-1), target)
    # Rounding may leave the target just past the block's end: its last positive weight then.
    last = (inside > 0) * torch.arange(block, device=weights.device)
    index = torch.minimum(index, last.amax(-1, keepdim=True))
    return (chosen * block + index).squeeze(1)


def padding_text(model: DALLE, batch: int, device: torch.device) -> torch.Tensor:
    """(B, T) padding-only text: the unconditional prompt of classifier-free guidance."""
    c = model.config
    ids = torch.arange(c.text_vocab_size, c.text_vocab_size + c.text_length, device=device)
    return ids.expand(batch, -1)


def shared_rows(rows: torch.Tensor) -> int:
    """(B, L) -> the largest n dividing B such that each block of n consecutive rows is one
    repeated row: rows that share one prefill and one copy of the text's keys."""
    count = rows.shape[0]
    for n in range(count, 0, -1):
        if count % n == 0:
            blocks = rows.reshape(count // n, n, -1)
            if bool((blocks == blocks[:, :1]).all()):
                return n
    return 1


def prefill(model: DALLE, text: torch.Tensor, inputs: torch.Tensor, cache: KVCache):
    """Run the text and the first image positions through the model once, filling the cache.

    text: (G, T) ids; inputs: (G, n + 1) image-position inputs (the start token, then the n
    given codes), one row per group of the cache. Returns (G, K) logits of cell n.
    """
    features = model.run_blocks(model.embed(text, inputs), cache)[:, -1]
    return model.image_head(features).float()


def decode_step(model: DALLE, code: torch.Tensor, cell: int | torch.Tensor, cache: KVCache):
    """Image position `cell` through every layer, attending to the cache.

    code: (B, 1) the code of cell - 1; cell: an int, or a (1,) long tensor when compiled.
    Returns (B, K) logits of the code of `cell`.
    """
    features = model.run_blocks(model.embed_cell(code, cell), cache, cell)[:, -1]
    return model.image_head(features).float()


@functools.cache
def compiled_decode_step(device_type: str):
    """decode_step compiled with static shapes; on CUDA replayed as a CUDA graph."""
    mode = "reduce-overhead" if device_type == "cuda" else None
    return torch.compile(decode_step, dynamic=False, mode=mode)


def starting_codes(batch: int, cells: int, prefix: torch.Tensor | None, device: torch.device):
    """(B, cells) codes holding the (B, n) prefix (or nothing) in front, and n."""
    codes = torch.zeros(batch, cells, dtype=torch.long, device=device)
    if prefix is None:
        return codes, 0
    if prefix.shape[0] != batch or not 0 <= prefix.shape[1] < cells:
        raise ValueError(
            f"prefix must be (B={batch}, n < {cells}) codes, got {tuple(prefix.shape)}"
        )
    codes[:, : prefix.shape[1]] = prefix
    return codes, prefix.shape[1]


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
    cells = model.config.grid**2
    codes, given = starting_codes(text.shape[0], cells, prefix, text.device)
    keep = torch.arange(cells) < given
    return fill(model, text, codes, keep, config, generator, use_cache)[0]


@torch.no_grad()
def fill(
    model: DALLE,
    text: torch.Tensor,
    codes: torch.Tensor,
    keep: torch.Tensor,
    config: SamplingConfig | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample the cells that are not kept, in raster order; kept cells are read as they are
    (teacher forcing), so any region costs one generation.

    text: (B, T) ids; codes: (B, h*w) holding the kept cells' codes; keep: (h*w,) bool, the
    same cells kept in every row. Returns (B, h*w) codes (kept cells unchanged) and (B,) the
    log-likelihood of the kept cells after the first sampled one, each given the caption and
    every cell before it: how well the sampled cells fit what follows them, which they were
    drawn without seeing. The inputs are never modified.
    """
    config = config or SamplingConfig()
    device, batch, cells = text.device, text.shape[0], model.config.grid**2
    if keep.shape != (cells,) or codes.shape != (batch, cells):
        raise ValueError(
            f"keep must be ({cells},) and codes ({batch}, {cells}), got "
            f"{tuple(keep.shape)} and {tuple(codes.shape)}"
        )
    kept = keep.tolist()
    if all(kept):
        raise ValueError("no cell to sample: the region is empty")
    codes, given = codes.clone(), kept.index(False)  # cells before `given` are one prefix
    loglik = torch.zeros(batch, device=device)
    guided = config.guidance_scale != 1.0
    if guided:  # rows B..2B: the same cells from the padding-only text
        text = torch.cat([text, padding_text(model, batch, device)])

    def both(x: torch.Tensor) -> torch.Tensor:  # the same codes for the guided halves
        return torch.cat([x, x]) if guided else x

    def take_cell(cell: int, logits: torch.Tensor) -> None:  # (rows, K) logits of `cell`
        cond, uncond = logits[:batch], logits[batch:]
        if kept[cell]:
            loglik.add_(cond.log_softmax(-1).gather(1, codes[:, cell : cell + 1])[:, 0])
            return
        if guided:
            logits = uncond + config.guidance_scale * (cond - uncond)
        codes[:, cell] = pick(logits, config, generator)

    with autocast(autocast_dtype(config.precision, device), device):
        if not use_cache:
            for cell in range(given, cells):
                x = model.embed(text, model.image_inputs(both(codes[:, :cell])))
                take_cell(cell, model.image_head(model.run_blocks(x)[:, -1]).float())
            return codes, loglik
        inputs = model.image_inputs(both(codes[:, :given]))
        rows = text.shape[0]
        share = shared_rows(torch.cat([text, inputs], dim=1))  # e.g. one caption's candidates
        cache = model.new_cache(rows, rows // share, device)
        logits = prefill(model, text[::share], inputs[::share], cache)
        logits = logits.repeat_interleave(share, 0)
        compiled = config.compiles(device)
        step = compiled_decode_step(device.type) if compiled else decode_step
        if compiled and device.type == "cuda":  # the graph reads the cache where it lies
            for tensor in cache.tensors():
                torch._dynamo.mark_static_address(tensor)
        for cell in range(given, cells):
            if cell > given:
                position = torch.tensor([cell], device=device) if compiled else cell
                logits = step(model, both(codes[:, cell - 1 : cell]), position, cache)
            take_cell(cell, logits)
    return codes, loglik


def bytes_per_row(model: DALLE, config: SamplingConfig, device: torch.device) -> int:
    """Memory one candidate's rows need while decoding: the image keys and values of every
    layer, the logits and sampling's copies of them, the MLP's activations (x2 with guidance)."""
    c = model.config
    dtype = autocast_dtype(config.precision, device)
    element = 4 if dtype is None else torch.finfo(dtype).bits // 8
    masks = layer_masks(c.depth, c.attention)
    cache = row_bytes(c.layout, masks, c.width, element)
    step = 4 * (6 * c.codebook_size + (2 + c.mlp_ratio) * c.width)
    return (cache + step) * (2 if config.guidance_scale != 1.0 else 1)


def batch_count(model: DALLE, rows: int, config: SamplingConfig, device: torch.device) -> int:
    """How many batches `rows` candidates take: as few as half the free memory allows."""
    most = max(1, int(free_memory(device) / 2 // bytes_per_row(model, config, device)))
    return -(-rows // most)


def sample_candidates(
    model: DALLE,
    text: torch.Tensor,
    n: int,
    config: SamplingConfig | None = None,
    prefix: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    progress=None,
) -> torch.Tensor:
    """n candidates per caption, in batches (fill_candidates); the rows of several captions
    share batches, so many captions with few candidates each still fill them.

    text: (T,) ids of one caption or (C, T) of C; prefix: codes of the first m cells kept in
    the candidates, (m,) for every caption or (C, m) one per caption, or None. Returns
    (C * n, h*w) codes, caption by caption. progress: optional callable(count) told how many
    candidates each batch finished.
    """
    config = config or SamplingConfig()
    text = text if text.ndim == 2 else text[None]
    rows = text.repeat_interleave(n, dim=0)  # (C n, T)
    if prefix is not None:
        if prefix.ndim == 1:
            prefix = prefix.expand(len(text), -1)
        if prefix.ndim != 2 or len(prefix) != len(text):
            raise ValueError(
                f"prefix must be (m,) or (C={len(text)}, m) codes, got {tuple(prefix.shape)}"
            )
        prefix = prefix.repeat_interleave(n, dim=0)  # (C n, m)
    cells = model.config.grid**2
    codes, given = starting_codes(len(rows), cells, prefix, rows.device)
    keep = torch.arange(cells) < given
    return fill_candidates(model, rows, codes, keep, config, generator, progress)[0]


def fill_candidates(
    model: DALLE,
    rows: torch.Tensor,
    codes: torch.Tensor,
    keep: torch.Tensor,
    config: SamplingConfig | None = None,
    generator: torch.Generator | None = None,
    progress=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """fill() over many rows, config.batch_size at a time (0: batches of equal size within
    half the free memory). rows: (R, T) ids; codes: (R, h*w); keep: (h*w,) bool. Returns
    (R, h*w) codes and (R,) log-likelihoods of the kept cells after the first sampled one."""
    config = config or SamplingConfig()
    if config.batch_size:
        sizes = config.batch_size
    else:
        count = batch_count(model, len(rows), config, rows.device)
        sizes = [len(part) for part in torch.arange(len(rows)).tensor_split(count)]
    out, logliks = [], []
    for part, part_codes in zip(rows.split(sizes), codes.split(sizes), strict=True):
        filled, loglik = fill(model, part, part_codes, keep, config, generator)
        out.append(filled)
        logliks.append(loglik)
        if progress is not None:
            progress(len(part))
    return torch.cat(out), torch.cat(logliks)
