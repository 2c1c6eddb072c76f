"""`python -m dalle1 serve --run RUN`: a web page to sample and complete, built with gradio.

    Sample tab      caption, settings -> the reranked images, best first, each with its CLIP score
    Complete tab    an uploaded image or one of the run's held-out images, the code rows to keep
                    (drawn as a line on it) -> the original beside the reranked completions
    About this run  which image tokenizer, text tokenizer and CLIP, grid, sizes, training steps

`Studio` holds what the page does, as plain methods that the tests call without a browser; bad
input (an empty caption, an unreadable or oversized image) raises `gradio.Error`, which the page
shows as a message while the server keeps serving. Requests queue: one sampling at a time.
The same functions are the HTTP API gradio exposes (`/gradio_api/call/sample`, `.../complete`).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import gradio as gr
import torch
import yaml
from PIL import Image, ImageDraw

from dalle1.data import is_token_cache
from dalle1.data.transforms import BadSample, read_image
from dalle1.images import to_pil
from dalle1.pipeline import Pipeline, read_run_parts
from dalle1.sampling import SamplingConfig
from pretrained import read_model_config, resolve_model_folder

DISPLAY_SIDE = 256  # images are enlarged (nearest neighbour) to at least this many pixels
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def held_out_images(run: Path, limit: int = 12) -> list[Path]:
    """Pictures to complete: the demo's pair suite beside the run, else the run's eval images."""
    config = yaml.safe_load((resolve_model_folder(run) / "config.yaml").read_text())
    data = config.get("data") or {}
    folders = [run.parent / "data" / "pair"]
    for source in (data.get("eval_source"), data.get("source")):
        if source and is_token_cache(source):  # the images it was encoded from
            source = json.loads((Path(source) / "meta.json").read_text()).get("source")
        if source:
            folders.append(Path(source))
    for folder in folders:
        if folder.is_dir():
            found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if found:
                return found[:limit]
    return []


def enlarged(image: Image.Image) -> Image.Image:
    factor = max(1, DISPLAY_SIDE // max(image.size))
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


class Studio:
    """The page's functions over one loaded pipeline."""

    def __init__(self, pipe: Pipeline, run: str | Path) -> None:
        self.pipe, self.run = pipe, Path(run)
        self.held_out = held_out_images(self.run)

    def facts(self) -> str:
        """The run's parts and sizes, as Markdown."""
        checkpoint = resolve_model_folder(self.run)
        parts = read_run_parts(checkpoint)
        step = json.loads((checkpoint / "state.json").read_text())["step"]
        c, tokenizer = self.pipe.dalle.config, self.pipe.image_tokenizer
        tokenizer_class, _ = read_model_config(resolve_model_folder(parts["image_tokenizer"]))
        count = sum(p.numel() for p in self.pipe.dalle.parameters())
        clip = parts["clip"] or "none (candidates in drawing order)"
        return "\n".join(
            [
                f"- **Transformer**: `{checkpoint}`, step {step}: {count / 1e6:.1f}M parameters, "
                f"width {c.width}, depth {c.depth}, {c.heads} heads, {c.attention} attention, "
                f"{c.text_length} text + {c.grid}x{c.grid} image positions",
                f"- **Image tokenizer**: `{parts['image_tokenizer']}` ({tokenizer_class}): "
                f"{tokenizer.image_size} px images as {tokenizer.grid}x{tokenizer.grid} codes of "
                f"{tokenizer.codebook_size}",
                f"- **Text tokenizer**: `{parts['text_tokenizer']}`: "
                f"{self.pipe.tokenizer.vocab_size} BPE ids",
                f"- **CLIP reranker**: `{clip}`",
            ]
        )

    def _sampling(self, temperature, top_k, top_p, guidance) -> SamplingConfig:
        """The run's sampling section with the page's settings."""
        try:
            return replace(
                self.pipe.sampling,
                temperature=float(temperature),
                top_k=int(top_k),
                top_p=float(top_p),
                guidance_scale=float(guidance),
            )
        except ValueError as err:
            raise _error(str(err)) from err

    def _gallery(self, images: torch.Tensor, scores: torch.Tensor, first=None) -> list:
        """[(PIL image, caption)], best first: CLIP score and rank; the original first if given."""
        shown = [] if first is None else [(enlarged(to_pil(first)), "original")]
        for rank, (image, score) in enumerate(zip(images, scores.tolist(), strict=True)):
            label = f"#{rank + 1}" + ("" if score != score else f"  CLIP {score:.3f}")
            shown.append((enlarged(to_pil(image)), label))
        return shown

    def _progress(self, progress, total: int):
        done = [0]

        def update(count: int) -> None:
            done[0] += count
            progress(done[0] / total, desc=f"{done[0]} of {total} candidates")

        return update if progress is not None else None

    def sample(self, caption, *settings, progress=None):
        """Reranked samples for a caption: [(image, 'rank  CLIP score')], best first.
        settings: candidates, kept, temperature, top_k, top_p, guidance, seed."""
        return self._draw(caption, settings, progress)

    def complete(self, uploaded, held_out, rows, caption, *settings, progress=None):
        """The original, then the reranked completions of its bottom rows (settings: as for
        sample())."""
        picture = self.read_picture(uploaded, held_out)
        return self._draw(caption, settings, progress, picture, int(rows))

    def _draw(self, caption, settings, progress, picture=None, rows: int = 0) -> list:
        n, keep, temperature, top_k, top_p, guidance, seed = settings
        caption, n, keep = (caption or "").strip(), int(n), int(keep)
        if not caption:
            raise _error("Type a caption first.")
        config = self._sampling(temperature, top_k, top_p, guidance)
        options = {"n": n, "keep": min(keep, n), "config": config, "seed": int(seed)}
        options["progress"] = self._progress(progress, n)
        try:
            if picture is None:
                images, scores = self.pipe.sample(caption, **options)
            else:
                images, scores = self.pipe.complete(picture, rows, caption, **options)
        except ValueError as err:
            raise _error(str(err)) from err
        return self._gallery(images, scores, first=picture)

    def read_picture(self, uploaded, held_out) -> torch.Tensor:
        """(3, S, S) in [0, 1] from an uploaded file or a held-out image's path."""
        path = uploaded or held_out
        if not path:
            raise _error("Upload an image or pick one of the run's held-out images.")
        try:  # the data layer's decoding, with its decompression-bomb guard
            return read_image(path, self.pipe.image_tokenizer.image_size)
        except (BadSample, OSError) as err:
            raise _error(f"Cannot use this image: {err}") from err

    def preview(self, uploaded, held_out, rows) -> Image.Image | None:
        """The picture with a red line under the code rows that are kept."""
        if not (uploaded or held_out):
            return None
        picture = enlarged(to_pil(self.read_picture(uploaded, held_out)))
        y = round(int(rows) * picture.height / self.pipe.dalle.config.grid)
        ImageDraw.Draw(picture).line([(0, y), (picture.width, y)], fill=(230, 0, 0), width=2)
        return picture


def _error(message: str) -> gr.Error:
    return gr.Error(message, print_exception=False)


def build_app(studio: Studio):
    """The gradio page over a Studio: two tabs, the settings they share, the run's facts."""
    with gr.Blocks(title="dalle1") as app:
        gr.Markdown("# dalle1: text to image, reranked by CLIP")
        with gr.Tab("Sample"):
            sample = _sample_tab()
        with gr.Tab("Complete"):
            complete = _complete_tab(studio)
        with gr.Accordion("Settings", open=False, elem_id="settings"):
            settings = _settings(studio)
        with gr.Accordion("About this run", open=False, elem_id="about"):
            gr.Markdown(studio.facts())
        _connect(studio, sample, complete, settings)
    return app.queue(default_concurrency_limit=1)  # one sampling at a time on the model


def _gallery(label: str, elem_id: str):
    return gr.Gallery(label=label, columns=4, buttons=["download"], format="png", elem_id=elem_id)


def _sample_tab() -> dict:
    placeholder = "a red circle above a blue square"
    return {
        "caption": gr.Textbox(label="Caption", placeholder=placeholder, elem_id="caption"),
        "button": gr.Button("Sample", variant="primary", elem_id="sample-button"),
        "gallery": _gallery("Best first", "samples"),
    }


def _complete_tab(studio: Studio) -> dict:
    grid = studio.pipe.dalle.config.grid
    with gr.Row():
        uploaded = gr.File(
            label="Upload an image", file_types=["image"], type="filepath", elem_id="upload"
        )
        held_out = gr.Dropdown(
            [(p.name, str(p)) for p in studio.held_out],
            label="... or pick one of the run's held-out images",
            value=None,
            elem_id="held-out",
        )
    return {
        "uploaded": uploaded,
        "held_out": held_out,
        "rows": gr.Slider(1, grid - 1, value=grid // 2, step=1, label="Code rows kept"),
        "preview": gr.Image(label="Kept above the red line", interactive=False),
        "caption": gr.Textbox(label="Caption", elem_id="completion-caption"),
        "button": gr.Button("Complete", variant="primary", elem_id="complete-button"),
        "gallery": _gallery("Original, then best first", "completions"),
    }


def _settings(studio: Studio) -> list:
    """candidates, kept, temperature, top-k, top-p, guidance, seed: Studio's *settings."""
    codebook, run = studio.pipe.dalle.config.codebook_size, studio.pipe.sampling
    return [  # the sampling settings start at the run's
        gr.Slider(1, 512, value=32, step=1, label="Candidates"),
        gr.Slider(1, 64, value=8, step=1, label="Images kept"),
        gr.Slider(0.0, 2.0, value=run.temperature, step=0.05, label="Temperature (0: greedy)"),
        gr.Slider(0, codebook, value=run.top_k, step=1, label="Top-k (0: all)"),
        gr.Slider(0.05, 1.0, value=run.top_p, step=0.05, label="Top-p (1: all)"),
        gr.Slider(1.0, 5.0, value=run.guidance_scale, step=0.25, label="Guidance (1: off)"),
        gr.Number(value=0, precision=0, label="Seed", elem_id="seed"),
    ]


def _connect(studio: Studio, sample: dict, complete: dict, settings: list) -> None:
    """The events; `sample` and `complete` are also the HTTP API's names."""

    # gradio finds the progress bar as a default argument
    def run_sample(text, *values, progress=gr.Progress()):  # noqa: B008
        return studio.sample(text, *values, progress=progress)

    def run_complete(file, chosen, kept, text, *values, progress=gr.Progress()):  # noqa: B008
        return studio.complete(file, chosen, kept, text, *values, progress=progress)

    inputs = [sample["caption"], *settings]
    sample["button"].click(run_sample, inputs, sample["gallery"], api_name="sample")
    sample["caption"].submit(run_sample, inputs, sample["gallery"], api_name=False)
    picture = [complete["uploaded"], complete["held_out"], complete["rows"]]
    for source in picture:
        source.change(studio.preview, picture, complete["preview"], api_name=False)
    inputs = [*picture, complete["caption"], *settings]
    complete["button"].click(run_complete, inputs, complete["gallery"], api_name="complete")


def serve(run: str, clip: str | None, host: str, port: int, device: str = "auto") -> None:
    """Load the run (a clear error if it does not load), then serve until interrupted."""
    pipe = Pipeline.load(run, clip, device)
    build_app(Studio(pipe, run)).launch(server_name=host, server_port=port, show_error=True)
