"""`python -m dalle1 serve --run RUN`: a web page to sample and complete, built with gradio.

    Sample tab      caption, settings -> the reranked images, best first, each with its CLIP score
    Complete tab    an uploaded image or one of the run's held-out images, the code rows to keep
                    (drawn as a line on it) -> the original beside the reranked completions
    Edit tab        the same pictures, a box to regenerate (sliders; red on a preview) -> the
                    picture beside the reranked edits
    About this run  which image tokenizer, text tokenizer and CLIP, grid, sizes, training steps

`Studio` holds what the page does, as plain methods that the tests call without a browser; bad
input (an empty caption, an unreadable or oversized image, a number out of range) raises
`gradio.Error`, which the page shows as a message and the log as one line, while the server
keeps serving. Every event (sampling, completing, previews) waits in one queue: one request at
a time on the model. `Limits` bounds what one request may cost; uploads are deleted after a
while. The same functions are the HTTP API gradio exposes (`/gradio_api/call/sample`, ...).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import gradio as gr
import torch
from PIL import Image, ImageDraw

from dalle1.data import image_source
from dalle1.data.folder import example_pictures
from dalle1.data.transforms import BadSample, read_image
from dalle1.images import to_pil
from dalle1.pipeline import Pipeline
from dalle1.regions import box_mask, highlight
from dalle1.sampling import SamplingConfig
from pretrained.run import RunParts

logger = logging.getLogger(__name__)

DISPLAY_SIDE = 256  # images are enlarged (nearest neighbour) to at least this many pixels
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
ONE_QUEUE = {"concurrency_id": "model", "concurrency_limit": 1}  # every event, one at a time


@dataclass
class Limits:
    """What one request to the page may cost."""

    upload_mib: float = 20  # an uploaded file's size (gradio refuses larger uploads)
    pixels: int = 4096 * 4096  # an image's pixels
    decoded_mib: float = 64  # its bytes once decoded: a 16-bit image takes twice an 8-bit one's
    candidates: int = 512  # candidates per request
    upload_lifetime_s: int = 600  # uploads are deleted this long after they arrive

    def describe(self) -> str:
        return (
            f"uploads up to {self.upload_mib:g} MiB, images up to {self.pixels} pixels and "
            f"{self.decoded_mib:g} MiB decoded, up to {self.candidates} candidates, one request "
            f"at a time; uploads are deleted after {self.upload_lifetime_s} s"
        )


def held_out_images(parts: RunParts | None, limit: int = 12) -> list[Path]:
    """Pictures to complete and edit: the run's held-out images (an export's examples)."""
    if parts is None or parts.eval_data is None:
        return []
    return example_pictures(Path(image_source(parts.eval_data)), limit)


def enlarged(image: Image.Image) -> Image.Image:
    factor = max(1, DISPLAY_SIDE // max(image.size))
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


class Studio:
    """The page's functions over one loaded pipeline."""

    def __init__(self, pipe: Pipeline, limits: Limits | None = None) -> None:
        self.pipe, self.limits = pipe, limits or Limits()
        self.held_out = held_out_images(pipe.parts)

    def facts(self) -> str:
        """The run's parts and sizes, as Markdown."""
        parts = self.pipe.parts
        c, tokenizer = self.pipe.dalle.config, self.pipe.image_tokenizer
        count = sum(p.numel() for p in self.pipe.dalle.parameters())
        clip = parts.clip or "none (candidates in drawing order)"
        return "\n".join(
            [
                f"- **Transformer**: `{parts.transformer}`, step {parts.step}: "
                f"{count / 1e6:.1f}M parameters, "
                f"width {c.width}, depth {c.depth}, {c.heads} heads, {c.attention} attention, "
                f"{c.text_length} text + {c.grid}x{c.grid} image positions",
                f"- **Image tokenizer**: `{parts.image_tokenizer}` ({type(tokenizer).__name__}): "
                f"{tokenizer.image_size} px images as {tokenizer.grid}x{tokenizer.grid} codes of "
                f"{tokenizer.codebook_size}",
                f"- **Text tokenizer**: `{parts.text_tokenizer}`: "
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

    def _gallery(self, images, scores, first=None, score_name: str = "CLIP") -> list:
        """[(PIL image, caption)], best first: rank and score; the original first if given."""
        shown = [] if first is None else [(enlarged(to_pil(first)), "original")]
        for rank, (image, score) in enumerate(zip(images, scores.tolist(), strict=True)):
            label = f"#{rank + 1}" + ("" if score != score else f"  {score_name} {score:.3f}")
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

    def edit(self, uploaded, held_out, x0, y0, x1, y1, caption, *settings, progress=None):
        """The picture with its region in red, then the reranked edits of the region (a box in
        the picture's pixels at the model's size; settings: as for sample())."""
        picture = self.read_picture(uploaded, held_out)
        return self._draw(caption, settings, progress, picture, region=self._box(x0, y0, x1, y1))

    def edit_preview(self, uploaded, held_out, x0, y0, x1, y1) -> Image.Image | None:
        """The picture with the region to regenerate in red."""
        if not (uploaded or held_out):
            return None
        picture = self.read_picture(uploaded, held_out)
        return enlarged(to_pil(highlight(picture, self._box(x0, y0, x1, y1))))

    def _box(self, x0, y0, x1, y1) -> torch.Tensor:
        size = self.pipe.image_tokenizer.image_size
        try:
            return box_mask((int(x0), int(y0), int(x1), int(y1)), size, size)
        except ValueError as err:
            raise _error(f"Cannot use this region: {err}") from err

    def _draw(self, caption, settings, progress, picture=None, rows: int = 0, region=None):
        n, keep, temperature, top_k, top_p, guidance, seed = settings
        caption, n, keep = (caption or "").strip(), int(n), int(keep)
        if not caption:
            raise _error("Type a caption first.")
        if not (1 <= n <= self.limits.candidates and keep >= 1):
            raise _error(
                f"Candidates must lie in [1, {self.limits.candidates}] and images kept be at "
                f"least 1, got {n} and {keep}."
            )
        config = self._sampling(temperature, top_k, top_p, guidance)
        options = {"n": n, "keep": min(keep, n), "config": config, "seed": int(seed)}
        options["progress"] = self._progress(progress, n)
        score_name = "CLIP"
        try:
            if picture is None:
                images, scores = self.pipe.sample(caption, **options)
            elif region is None:
                images, scores = self.pipe.complete(picture, rows, caption, **options)
            else:  # ranked by CLIP and the kept cells' likelihood (Pipeline.edit)
                images, scores = self.pipe.edit(picture, region, caption, **options)
                picture, score_name = highlight(picture, region), "score"
        except ValueError as err:
            raise _error(str(err)) from err
        return self._gallery(images, scores, picture, score_name)

    def read_picture(self, uploaded, held_out) -> torch.Tensor:
        """(3, S, S) in [0, 1] from an uploaded file or a held-out image's path."""
        path, limits = uploaded or held_out, self.limits
        if not path:
            raise _error("Upload an image or pick one of the run's held-out images.")
        try:  # the data layer's decoding, with its decompression-bomb guards
            if Path(path).stat().st_size > limits.upload_mib * 2**20:
                raise BadSample(f"the file is over the limit of {limits.upload_mib:g} MiB")
            size, most = self.pipe.image_tokenizer.image_size, int(limits.decoded_mib * 2**20)
            return read_image(path, size, limits.pixels, most)
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
    """A refused request: a message on the page and one line in the log, no traceback."""
    logger.warning("refused: %s", message)
    return gr.Error(message, print_exception=False)


def _one_line_refusals(component):
    """A gradio input whose own checks (a number out of range, a value not among the choices)
    refuse with _error, where gradio would print a traceback for each."""
    check = component.preprocess

    def preprocess(payload):
        try:
            return check(payload)
        except gr.Error as err:
            raise _error(err.message) from None

    component.preprocess = preprocess
    return component


def build_app(studio: Studio):
    """The gradio page over a Studio: three tabs, the settings they share, the run's facts."""
    lifetime = studio.limits.upload_lifetime_s  # checked as often as that, at least every minute
    with gr.Blocks(title="dalle1", delete_cache=(min(60, lifetime), lifetime)) as app:
        gr.Markdown("# dalle1: text to image, reranked by CLIP")
        with gr.Tab("Sample"):
            sample = _sample_tab()
        with gr.Tab("Complete"):
            complete = _complete_tab(studio)
        with gr.Tab("Edit"):
            edit = _edit_tab(studio)
        with gr.Accordion("Settings", open=False, elem_id="settings"):
            settings = _settings(studio)
        with gr.Accordion("About this run", open=False, elem_id="about"):
            gr.Markdown(studio.facts())
        for component in [complete["held_out"], complete["rows"], edit["held_out"], *edit["box"]]:
            _one_line_refusals(component)
        for component in settings:
            _one_line_refusals(component)
        _connect(studio, sample, complete, edit, settings)
    return app.queue()


def _gallery(label: str, elem_id: str):
    return gr.Gallery(label=label, columns=4, buttons=["download"], format="png", elem_id=elem_id)


def _sample_tab() -> dict:
    placeholder = "a red circle above a blue square"
    return {
        "caption": gr.Textbox(label="Caption", placeholder=placeholder, elem_id="caption"),
        "button": gr.Button("Sample", variant="primary", elem_id="sample-button"),
        "gallery": _gallery("Best first", "samples"),
    }


def _picture_inputs(studio: Studio, tab: str) -> dict:
    """An upload box and the run's held-out pictures: what a tab works on."""
    with gr.Row():
        uploaded = gr.File(
            label="Upload an image", file_types=["image"], type="filepath", elem_id=f"{tab}-upload"
        )
        held_out = gr.Dropdown(
            [(p.name, str(p)) for p in studio.held_out],
            label="... or pick one of the run's held-out images",
            value=None,
            elem_id=f"{tab}-held-out",
        )
    return {"uploaded": uploaded, "held_out": held_out}


def _complete_tab(studio: Studio) -> dict:
    grid = studio.pipe.dalle.config.grid
    return _picture_inputs(studio, "complete") | {
        "rows": gr.Slider(1, grid - 1, value=grid // 2, step=1, label="Code rows kept"),
        "preview": gr.Image(label="Kept above the red line", interactive=False),
        "caption": gr.Textbox(label="Caption", elem_id="completion-caption"),
        "button": gr.Button("Complete", variant="primary", elem_id="complete-button"),
        "gallery": _gallery("Original, then best first", "completions"),
    }


def _edit_tab(studio: Studio) -> dict:
    size = studio.pipe.image_tokenizer.image_size
    picture = _picture_inputs(studio, "edit")
    with gr.Row():  # the box, in the picture's pixels at the model's size; x1, y1 excluded
        box = [
            gr.Slider(0, size, value=value, step=1, label=label)
            for value, label in zip(
                (size // 4, size // 4, 3 * size // 4, 3 * size // 4),
                ("Left (x0)", "Top (y0)", "Right (x1)", "Bottom (y1)"),
                strict=True,
            )
        ]
    return picture | {
        "box": box,
        "preview": gr.Image(label="The region to regenerate, in red", interactive=False),
        "caption": gr.Textbox(label="Caption (of the whole picture)", elem_id="edit-caption"),
        "button": gr.Button("Edit", variant="primary", elem_id="edit-button"),
        "gallery": _gallery("The picture, then best first", "edits"),
    }


def _settings(studio: Studio) -> list:
    """candidates, kept, temperature, top-k, top-p, guidance, seed: Studio's *settings."""
    codebook, run = studio.pipe.dalle.config.codebook_size, studio.pipe.sampling
    most = studio.limits.candidates
    return [  # the sampling settings start at the run's
        gr.Slider(1, most, value=min(32, most), step=1, label="Candidates"),
        gr.Slider(1, 64, value=8, step=1, label="Images kept"),
        gr.Slider(0.0, 2.0, value=run.temperature, step=0.05, label="Temperature (0: greedy)"),
        gr.Slider(0, codebook, value=run.top_k, step=1, label="Top-k (0: all)"),
        gr.Slider(0.05, 1.0, value=run.top_p, step=0.05, label="Top-p (1: all)"),
        gr.Slider(1.0, 5.0, value=run.guidance_scale, step=0.25, label="Guidance (1: off)"),
        gr.Number(value=0, precision=0, minimum=0, maximum=2**63 - 1, label="Seed", elem_id="seed"),
    ]


def _connect(studio: Studio, sample: dict, complete: dict, edit: dict, settings: list) -> None:
    """The events; `sample`, `complete` and `edit` are also the HTTP API's names."""

    # gradio finds the progress bar as a default argument
    def run_sample(text, *values, progress=gr.Progress()):  # noqa: B008
        return studio.sample(text, *values, progress=progress)

    def run_complete(file, chosen, kept, text, *values, progress=gr.Progress()):  # noqa: B008
        return studio.complete(file, chosen, kept, text, *values, progress=progress)

    def run_edit(file, chosen, x0, y0, x1, y1, text, *values, progress=gr.Progress()):  # noqa: B008
        return studio.edit(file, chosen, x0, y0, x1, y1, text, *values, progress=progress)

    inputs, shown = [sample["caption"], *settings], sample["gallery"]
    sample["button"].click(run_sample, inputs, shown, api_name="sample", **ONE_QUEUE)
    sample["caption"].submit(run_sample, inputs, shown, api_name=False, **ONE_QUEUE)
    for name, tab, run, preview, where in [
        ("complete", complete, run_complete, studio.preview, [complete["rows"]]),
        ("edit", edit, run_edit, studio.edit_preview, edit["box"]),
    ]:
        picture = [tab["uploaded"], tab["held_out"], *where]
        for source in picture:
            source.change(preview, picture, tab["preview"], api_name=False, **ONE_QUEUE)
        inputs, shown = [*picture, tab["caption"], *settings], tab["gallery"]
        tab["button"].click(run, inputs, shown, api_name=name, **ONE_QUEUE)


def read_auth_file(path: str) -> list[tuple[str, str]]:
    """USER:PASSWORD lines -> [(user, password)]; a clear error for a file without any."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read the auth file {path}: {err}") from err
    pairs = [tuple(line.strip().split(":", 1)) for line in lines if line.strip()]
    if not pairs or any(len(pair) != 2 or not all(pair) for pair in pairs):
        raise ValueError(f"the auth file {path} must hold USER:PASSWORD lines, one per user")
    return pairs


def listening_notice(host: str, auth: bool, limits: Limits) -> str | None:
    """What a server listening beyond this machine says at start; None on localhost."""
    if host in LOCAL_HOSTS:
        return None
    who = "users of --auth-file only" if auth else "anyone, with no password (see --auth-file)"
    return (
        f"warning: listening on {host}: every machine that reaches this one can use the page, "
        f"{who}. Each request: {limits.describe()}."
    )


def launch(studio: Studio, host: str, port: int, auth=None, block: bool = True):
    """Serve the page over a Studio, saying so first when it listens beyond localhost; with
    block=False, return the app once it listens (tests close it)."""
    notice = listening_notice(host, auth is not None, studio.limits)
    if notice:
        print(notice, file=sys.stderr, flush=True)
    app = build_app(studio)
    app.launch(
        server_name=host,
        server_port=port,
        show_error=True,
        auth=auth,
        max_file_size=int(studio.limits.upload_mib * 2**20),
        prevent_thread_lock=not block,
    )
    return app


def serve(
    run: str,
    clip: str | None,
    host: str,
    port: int,
    device: str = "auto",
    auth_file: str | None = None,
    limits: Limits | None = None,
) -> None:
    """Load the run (a clear error if it or the auth file does not load), then serve until
    interrupted."""
    auth = read_auth_file(auth_file) if auth_file else None
    launch(Studio(Pipeline.load(run, clip, device), limits), host, port, auth)
