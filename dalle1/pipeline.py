"""Text -> image with every trained part together: sample, decode, rerank; and completion.

    pipe = Pipeline.load("runs/demo/dalle")          # a transformer run folder
    images, scores = pipe.sample("a red circle above a blue square", n=64, keep=8)
    images, scores = pipe.complete(picture, rows=4, caption="...", n=64, keep=8)
    images, scores = pipe.edit(picture, (x0, y0, x1, y1), "...", n=64, keep=8)  # any region

A transformer run's manifest (pretrained/run.py) names its image tokenizer, text tokenizer and
(optionally) CLIP run; the sizes of all four must agree, or loading says which one does not fit.
An exported model (`python -m dalle1 export`) loads the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from einops import rearrange

from dalle1.clip import CLIP, clip_scores, rerank
from dalle1.config import from_dict
from dalle1.device import pick_device
from dalle1.regions import box_mask, cell_region
from dalle1.sampling import SamplingConfig, fill_candidates, sample_candidates
from dalle1.tokenizer import TextTokenizer
from dalle1.transformer import DALLE
from pretrained.run import RunParts, run_parts
from vqvae import ImageTokenizer, load_image_tokenizer

LIKELIHOOD_WEIGHT = 1.0  # of an edit's kept-cell likelihood beside CLIP (edit_scores)


def standardised(x: torch.Tensor) -> torch.Tensor:
    """(N,) -> zero mean, unit spread over the N (all zero when they do not differ)."""
    spread = x.std() if len(x) > 1 else x.new_tensor(0.0)
    return (x - x.mean()) / spread if spread > 0 else torch.zeros_like(x)


def edit_scores(
    similarity: torch.Tensor | None, loglik: torch.Tensor, weight: float = LIKELIHOOD_WEIGHT
) -> torch.Tensor:
    """(N,) scores of an edit's candidates, higher is better: CLIP's similarity to the caption
    and the kept cells' log-likelihood, each standardised over the N so that neither scale
    dominates, summed with `weight` on the likelihood. Without CLIP: the likelihood alone."""
    fit = standardised(loglik.float())
    if similarity is None:
        return fit
    return standardised(similarity.float()) + weight * fit


@dataclass
class Pipeline:
    dalle: DALLE
    image_tokenizer: ImageTokenizer
    tokenizer: TextTokenizer  # with the transformer's text_length
    clip: CLIP | None = None
    clip_tokenizer: TextTokenizer | None = None  # with CLIP's text_length
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # when none is given

    parts: RunParts | None = None  # where each part was read from

    @classmethod
    def load(cls, run: str | Path, clip: str | Path | None = None, device: str = "auto"):
        """run: a transformer run folder (or one of its checkpoints) or an exported model;
        clip: a CLIP run folder (default: the run's own; none there: no reranking)."""
        parts = run_parts(run)
        target = pick_device(device)
        dalle = DALLE.from_pretrained(parts.transformer, map_location=str(target)).eval()
        image_tokenizer = load_image_tokenizer(parts.image_tokenizer)
        tokenizer = TextTokenizer(parts.text_tokenizer, dalle.config.text_length)
        c = dalle.config
        mismatches = [
            f"{what}: transformer {want}, {source} {have}"
            for what, want, have, source in (
                ("grid", c.grid, image_tokenizer.grid, "image tokenizer"),
                ("codebook", c.codebook_size, image_tokenizer.codebook_size, "image tokenizer"),
                ("text ids", c.text_vocab_size, tokenizer.vocab_size, "text tokenizer"),
            )
            if want != have
        ]
        if mismatches:
            raise ValueError(f"the parts of {str(run)!r} do not fit: " + "; ".join(mismatches))
        if clip is not None:
            parts.clip = Path(clip)
        clip_model = clip_tokenizer = None
        if parts.clip is not None:
            clip_model = CLIP.from_pretrained(parts.clip, map_location=str(target)).eval()
            clip_tokenizer = TextTokenizer.load(
                parts.text_tokenizer,
                clip_model.config.text_length,
                clip_model.config.text_vocab_size,
            )
        sampling = from_dict(SamplingConfig, parts.sampling)  # none recorded: the defaults
        image_tokenizer = image_tokenizer.to(target)
        return cls(dalle, image_tokenizer, tokenizer, clip_model, clip_tokenizer, sampling, parts)

    @property
    def device(self) -> torch.device:
        return next(self.dalle.parameters()).device

    @torch.no_grad()
    def sample_many(
        self,
        captions: list[str],
        n: int = 64,
        keep: int | None = None,
        config: SamplingConfig | None = None,
        seed: int = 0,
        progress=None,
        prefix: torch.Tensor | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """n candidates for each caption, drawn in shared batches, each caption's reranked by
        CLIP on their own, best `keep` first.

        prefix: codes of the first m cells (raster order) to keep in the candidates, (m,) for
        every caption or (C, m) one per caption;
        progress: optional callable(count) told how many candidates each batch finished.
        Returns per caption (images (keep, 3, S, S) in [0, 1], CLIP scores (keep,); NaN
        without CLIP).
        """
        if not captions or any(not c or not c.strip() for c in captions):
            raise ValueError("the caption is empty")
        if keep is not None and not 1 <= keep:
            raise ValueError(f"keep must be at least 1, got {keep}")
        text = self.tokenizer.encode_batch(captions).to(self.device)
        generator = torch.Generator(self.device).manual_seed(seed)
        config = config or self.sampling
        codes = sample_candidates(self.dalle, text, n, config, prefix, generator, progress)
        images = self.decode(codes)
        results = []
        for caption, candidates in zip(captions, images.split(n), strict=True):
            if self.clip is None:  # no reranker: in drawing order
                kept = n if keep is None else min(keep, n)
                results.append((candidates[:kept], torch.full((kept,), float("nan"))))
                continue
            order, scores = rerank(self.clip, self.clip_tokenizer, candidates, caption, keep)
            results.append((candidates[order], scores))
        return results

    def sample(self, caption: str, n: int = 64, keep: int | None = None, **options):
        """n candidates for one caption, reranked: sample_many's result for [caption]
        (options: config, seed, progress, prefix)."""
        return self.sample_many([caption], n, keep, **options)[0]

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(3, S, S) in [0, 1] -> (h, w) codes."""
        return self.image_tokenizer.encode(image[None].to(self.device))[0]

    @torch.no_grad()
    def edit_candidates(
        self,
        image: torch.Tensor,
        region: torch.Tensor | tuple[int, int, int, int],
        caption: str,
        n: int = 64,
        config: SamplingConfig | None = None,
        seed: int = 0,
        progress=None,
        dilate: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """n candidates of an edit in drawing order: (images (n, 3, S, S), (n,) log-likelihoods
        of the kept cells after the region). Arguments: as edit()'s."""
        grid, size = self.dalle.config.grid, self.image_tokenizer.image_size
        if isinstance(region, tuple):
            region = box_mask(region, size, size)
        if region.shape != (size, size):
            raise ValueError(f"the region mask must be {size}x{size}, got {tuple(region.shape)}")
        if not caption or not caption.strip():
            raise ValueError("the caption is empty")
        cells = cell_region(region.cpu(), grid, dilate).flatten().to(self.device)
        text = self.tokenizer.encode_batch([caption]).to(self.device)
        codes = self.encode_image(image).flatten()
        generator = torch.Generator(self.device).manual_seed(seed)
        config = config or self.sampling
        rows, given = text.expand(n, -1), codes.expand(n, -1)
        codes, loglik = fill_candidates(
            self.dalle, rows, given, ~cells, config, generator, progress
        )
        return self.decode(codes), loglik.cpu()

    def edit(
        self,
        image: torch.Tensor,
        region: torch.Tensor | tuple[int, int, int, int],
        caption: str,
        n: int = 64,
        keep: int | None = None,
        likelihood_weight: float = LIKELIHOOD_WEIGHT,
        **options,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Regenerate a region of the image for the caption; every other code cell is kept.

        image: (3, S, S) in [0, 1] at the image tokenizer's size; region: an (S, S) bool mask
        or a box (x0, y0, x1, y1) in its pixels (dalle1/regions.py). The cells of the region
        are sampled in raster order, the kept ones read as they are. Candidates are ranked by
        edit_scores: CLIP's similarity to the caption and the log-likelihood of the kept cells
        that follow the region (chosen without seeing them). options: config, seed, progress,
        dilate (grow the region by one cell; default True). Returns (images (keep, 3, S, S),
        scores (keep,)), best first.
        """
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        images, loglik = self.edit_candidates(image, region, caption, n, **options)
        similarity = None
        if self.clip is not None:
            similarity = clip_scores(self.clip, self.clip_tokenizer, images, caption)
        scores = edit_scores(similarity, loglik, likelihood_weight)
        order = torch.sort(scores, descending=True, stable=True).indices[:keep]
        return images[order], scores[order]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(N, h*w) codes -> (N, 3, S, S) images in [0, 1], 64 at a time."""
        grid = self.dalle.config.grid
        parts = [rearrange(part, "n (h w) -> n h w", h=grid) for part in codes.split(64)]
        return torch.cat([self.image_tokenizer.decode(part) for part in parts])

    def complete(self, image: torch.Tensor, rows: int, caption: str, **options):
        """Keep the top `rows` rows of the image's codes, sample the rest, rerank.

        image: (3, S, S) in [0, 1] at the image tokenizer's size; options: those of sample()
        (n, keep, config, seed, progress). Returns as sample().
        """
        grid = self.dalle.config.grid
        if not 1 <= rows < grid:
            raise ValueError(
                f"rows must lie in [1, {grid - 1}] for a {grid}x{grid} grid, got {rows}"
            )
        prefix = self.encode_image(image)[:rows].flatten()
        return self.sample(caption, prefix=prefix, **options)
