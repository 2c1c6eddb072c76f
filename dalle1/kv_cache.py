"""The decoding cache: each layer keeps and reads only the keys its mask lets a new position see.

A new image position i (stream position T + i) attends to
- the whole text. Its keys are the same for every row that shares the text and the given codes
  (the candidates of one caption), so they are kept once per group of such rows;
- the image keys its layer's mask allows (dalle1/masks.py):
    row, conv, causal: a ring buffer in raster order, as long as the mask reaches back (w + 1
        for row, about kernel // 2 rows for conv, the whole image for causal); a step reads the
        slots written so far (the whole ring once it is full; compiled: always the whole ring);
    column: every cell, stored column by column, so that the column above and the cell to the
        left are the w + 1 slots ending at the new cell's; a step reads those.

Which key each slot holds at each step, and whether the new position may see it, comes from
`StreamLayout.allowed`; `SlotPlan` checks when it is built that the keys a step reads are
exactly the ones the mask allows, so this cache gives the full cache's attention.

Every per-step index is a table lookup by the cell, so a step given the cell as a tensor has
static shapes (it can be compiled, and captured as a CUDA graph).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from einops import rearrange

from dalle1.masks import StreamLayout


class SlotPlan:
    """Where one layer's image keys live and which of them each new image position reads.

    size: S slots per row; write: (N,) the slot of image position i; position i reads the R
    slots from first[i] on (first None: all S, R = S); visible: (N, R) bool, whether each slot
    read holds a key position i may attend to.
    """

    def __init__(self, layout: StreamLayout, mask: str) -> None:
        n, w, t = layout.image_length, layout.grid, layout.text_length
        allowed = layout.dense_mask(mask)[t:, t:]  # (N, N) image query -> image key
        cell = torch.arange(n)
        if mask == "column":  # slot = the cell's index in column-major order
            self.size = n
            self.write = (cell % w) * w + cell // w
            cell_of_slot = torch.empty_like(cell).scatter_(0, self.write, cell)
            self.first = (self.write - w).clamp(min=0)  # the w + 1 slots ending here
            self.reads = w + 1
            held = cell_of_slot[self.first[:, None] + torch.arange(self.reads)]
            readable = held <= cell[:, None]  # already written
        else:  # ring buffer: as long as the farthest key back any position sees
            back = torch.where(allowed, cell[:, None] - cell[None, :], -1)
            self.size = int(back.max()) + 1
            self.write = cell % self.size
            self.first, self.reads = None, self.size
            slot = torch.arange(self.size)
            held = cell[:, None] - (cell[:, None] - slot[None, :]) % self.size  # last write
            readable = held >= 0
        self.firsts = None if self.first is None else self.first.tolist()
        held = held.clamp(min=0)
        self.visible = readable & allowed.gather(1, held)
        self._check(allowed, held)

    def _check(self, allowed: torch.Tensor, held: torch.Tensor) -> None:
        """Raise unless each position reads every key its mask allows, each exactly once."""
        seen = torch.zeros_like(allowed, dtype=torch.long)
        seen.scatter_add_(1, held, self.visible.long())
        if not torch.equal(seen, allowed.long()):
            raise AssertionError("the cache's reads do not match the mask")

    def prefix_writes(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The (positions, slots) that positions 0..count-1 leave in the cache: the last
        position written to each slot."""
        device = self.write.device
        last = torch.full((self.size,), -1, device=device).scatter_reduce(
            0, self.write[:count], torch.arange(count, device=device), "amax"
        )
        kept = last >= 0
        return last[kept], torch.arange(self.size, device=device)[kept]

    def to(self, device: torch.device) -> SlotPlan:
        """This plan with its tables on `device` (a copy)."""
        plan = object.__new__(SlotPlan)
        plan.size, plan.reads = self.size, self.reads
        plan.write, plan.visible = self.write.to(device), self.visible.to(device)
        plan.first = None if self.first is None else self.first.to(device)
        plan.firsts = self.firsts
        return plan


@functools.cache
def slot_plan(layout: StreamLayout, mask: str, device: torch.device) -> SlotPlan:
    """The SlotPlan of one mask on one device, built once per process."""
    return SlotPlan(layout, mask).to(device)


class KVCache:
    """Keys and values of every layer for B rows in G groups of B / G rows with the same text.

    Per layer: text keys (G, H, T, d), image keys (B, H, S, d) in the layer's SlotPlan; values
    alike. Allocated by `fill` (prefill) in the dtype the layer computes in (bf16 under autocast).
    """

    def __init__(
        self, layout: StreamLayout, masks: list[str], rows: int, groups: int, device: torch.device
    ) -> None:
        if rows % groups:
            raise ValueError(f"{rows} rows do not split into {groups} equal groups")
        self.layout, self.rows, self.groups = layout, rows, groups
        self.plans = [slot_plan(layout, mask, torch.device(device)) for mask in masks]
        depth = len(masks)
        self.text_keys: list[torch.Tensor | None] = [None] * depth
        self.text_values: list[torch.Tensor | None] = [None] * depth
        self.keys: list[torch.Tensor | None] = [None] * depth
        self.values: list[torch.Tensor | None] = [None] * depth

    def fill(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store the prefill's (G, H, T + m, d) keys and values: the text and m image positions."""
        plan = self.plans[layer]
        t = self.layout.text_length
        self.text_keys[layer], self.text_values[layer] = k[:, :, :t].clone(), v[:, :, :t].clone()
        _, heads, _, width = k.shape
        shape = (self.rows, heads, plan.size, width)
        self.keys[layer], self.values[layer] = k.new_zeros(shape), v.new_zeros(shape)
        positions, slots = plan.prefix_writes(k.shape[2] - t)
        per_group = self.rows // self.groups
        for store, given in ((self.keys[layer], k), (self.values[layer], v)):
            image = given[:, :, t:][:, :, positions]  # (G, H, kept, d)
            store[:, :, slots] = image.repeat_interleave(per_group, dim=0)

    def attend(self, layer: int, q, k, v, cell: int | torch.Tensor) -> torch.Tensor:
        """(B, H, 1, d) q, k, v of image position `cell` -> (B, H, 1, d): stores k, v in its
        slot, then attends to the text and the visible image keys."""
        keys, values, visible = self._store_and_read(layer, k, v, cell)
        # The text part as (G, H, rows per group, ·) matmuls: one text for many rows.
        grouped = rearrange(q, "(g n) h 1 d -> g h n d", g=self.groups)
        text_scores = grouped @ self.text_keys[layer].transpose(-1, -2)  # (G, H, n, T)
        text_scores = rearrange(text_scores, "g h n t -> (g n) h 1 t")
        image_scores = (q @ keys.transpose(-1, -2)).masked_fill(~visible, float("-inf"))
        scores = torch.cat([text_scores, image_scores], dim=-1) * q.shape[-1] ** -0.5
        weights = F.softmax(scores.float(), dim=-1).to(v.dtype)
        text_weights, image_weights = weights.split([self.layout.text_length, keys.shape[2]], -1)
        text_weights = rearrange(text_weights, "(g n) h 1 t -> g h n t", g=self.groups)
        text_out = rearrange(text_weights @ self.text_values[layer], "g h n d -> (g n) h 1 d")
        return text_out + image_weights @ values

    def _store_and_read(self, layer: int, k, v, cell: int | torch.Tensor):
        """Write the (B, H, 1, d) k, v to their slot; return the (B, H, R, d) keys and values
        the cell reads, and (R,) or (1, R) whether each is visible to it.

        cell: an int (eager: the window read is a view), or a (1,) long tensor (compiled: a
        gather, so that the shapes and the code are the same at every step)."""
        plan = self.plans[layer]
        keys, values = self.keys[layer], self.values[layer]
        eager = isinstance(cell, int)
        slot = plan.write[cell : cell + 1] if eager else plan.write[cell]
        keys.index_copy_(2, slot, k)
        values.index_copy_(2, slot, v)
        visible = plan.visible[cell]
        if plan.first is not None and eager:
            window = slice(plan.firsts[cell], plan.firsts[cell] + plan.reads)
            keys, values = keys[:, :, window], values[:, :, window]
        elif plan.first is not None:
            read = plan.first[cell] + torch.arange(plan.reads, device=cell.device)
            keys, values = keys.index_select(2, read), values.index_select(2, read)
        elif eager and cell + 1 < plan.size:  # a ring not yet full: its written slots only
            keys, values, visible = (
                keys[:, :, : cell + 1],
                values[:, :, : cell + 1],
                visible[: cell + 1],
            )
        return keys, values, visible

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the cache holds (for byte counts and static addresses)."""
        parts = (self.text_keys, self.text_values, self.keys, self.values)
        return [x for part in parts for x in part if x is not None]

    def bytes_per_row(self) -> float:
        """The cache's bytes over its rows (the text counted once per group)."""
        return sum(x.numel() * x.element_size() for x in self.tensors()) / self.rows


def row_bytes(layout: StreamLayout, masks: list[str], width: int, element_size: int) -> int:
    """Bytes of one row's image keys and values over all layers (the text is per group)."""
    slots = sum(slot_plan(layout, mask, torch.device("cpu")).size for mask in masks)
    return 2 * slots * width * element_size
