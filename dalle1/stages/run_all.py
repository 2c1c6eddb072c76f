"""`python train.py all`: every stage on one data source, in order, into one folder.

    OUT/data/{train,eval}        a folder source split in two (as links) when no eval data is given
    OUT/tokenizer.model          BPE over the training captions
    OUT/vqvae, OUT/clip, OUT/dalle   runs of configs/{vqvae,clip,dalle}_PRESET.yaml (no vqvae run
                                 when an image tokenizer is given: --image-tokenizer)
    OUT/cache/{train,eval}       token caches
    OUT/samples/NN.png           reranked grids for held-out captions (captions.txt names them)
    OUT/completion.png           a held-out image's top half, completed
    OUT/report.json              each stage's time, and what a caller adds (the demo: benchmark)

A stage that is done is reused and one that was interrupted resumes, so the same command run
again continues where it stopped. Per-stage overrides are written `STAGE.key=value`
(`dalle.train.max_steps=20000`).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dalle1.config import ConfigError, load_config
from dalle1.data import ImageFolderDataset, is_token_cache, iter_captions, open_source
from dalle1.images import make_grid, save_image
from dalle1.pipeline import Pipeline
from dalle1.stages.clip import CLIPRunConfig, train_clip
from dalle1.stages.dalle import DALLERunConfig, train_dalle
from dalle1.stages.encode import encode_dataset
from dalle1.stages.vqvae import VQVAERunConfig, train_vqvae
from dalle1.tokenizer import train_tokenizer
from pretrained.run import latest_step
from vqvae import load_image_tokenizer

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TRAINED = {
    "vqvae": (VQVAERunConfig, train_vqvae),
    "clip": (CLIPRunConfig, train_clip),
    "dalle": (DALLERunConfig, train_dalle),
}
PRESETS_HELP = """presets (configs/STAGE_PRESET.yaml):
  cpu64   64 px, 8x8 codes: about 10 minutes on 2 CPU cores for 800 images
  icons64 64 px, 16x16 codes, K = 1024: the icon grid (11,450 drawings) on 2 CPU cores
  gpu256  the paper's 256 px -> 32x32 codes, K = 8192, 256 text positions, for one 24-80 GB GPU
  paper   the paper's 12B transformer (torchrun, train.parallel=fsdp)
  shapes  the demo's; tiny: the tests'
Per-stage overrides: STAGE.key=value, e.g. dalle.train.max_steps=20000 vqvae.train.batch_size=16
(every key: python train.py STAGE --help)."""
HELD_OUT_SHARE, HELD_OUT_MAX = 0.05, 500  # of a folder, when no eval data is given
SAMPLES, KEEP = 32, 8  # candidates per caption and the best kept in the grids


@dataclass
class AllConfig:
    """What `python train.py all` runs; each stage's own keys are overrides: STAGE.key=value."""

    data: str = ""  # captioned images: a folder or tar shards
    out: str = ""  # the output folder: one run per stage
    # held-out images; none: for a folder, 5% of it (at most 500), set aside as links in
    # OUT/data/eval (tar shards need it)
    eval_data: str | None = None
    preset: str = "cpu64"  # configs/STAGE_PRESET.yaml to start from (the presets below)
    text_vocab: int = 16384  # BPE ids (fewer when the captions are few)
    # a trained or converted image tokenizer (python -m dalle1 convert-tokenizer): the vqvae
    # stage is skipped and every later stage uses it
    image_tokenizer: str | None = None

    def __post_init__(self) -> None:
        if not self.data or not self.out:
            raise ValueError("give the images (--data) and the output folder (--out)")


def presets(configs: Path = CONFIGS) -> list[str]:
    """The presets that ship a config for every training stage."""
    names = [p.stem.split("_", 1)[1] for p in configs.glob("dalle_*.yaml")]
    return sorted(n for n in names if all((configs / f"{k}_{n}.yaml").is_file() for k in TRAINED))


def split_overrides(overrides: list[str]) -> dict[str, list[str]]:
    """['dalle.train.max_steps=9', ...] -> {'dalle': ['train.max_steps=9'], ...}."""
    by_stage: dict[str, list[str]] = {kind: [] for kind in TRAINED}
    for text in overrides:
        stage, dot, rest = text.partition(".")
        if stage not in by_stage or not dot:
            raise ConfigError(
                f"override {text!r} must start with a stage: {', '.join(TRAINED)} "
                "(e.g. dalle.train.max_steps=20000)"
            )
        by_stage[stage].append(rest)
    return by_stage


def finished(run_dir: Path, max_steps: int) -> bool:
    step = latest_step(run_dir)
    return step is not None and step >= max_steps


class AllStages:
    """One output folder: each stage is done once, timed, and recorded in report.json."""

    def __init__(
        self,
        out: str | Path,
        data: str,
        eval_data: str | None = None,
        preset: str = "cpu64",
        overrides: list[str] = (),
        text_vocab: int = 16384,
        configs: Path = CONFIGS,
        image_tokenizer: str | Path | None = None,
    ) -> None:
        """image_tokenizer: a trained or converted one (model or run folder): no vqvae stage."""
        self.out, self.preset, self.text_vocab, self.configs = (
            Path(out),
            preset,
            text_vocab,
            configs,
        )
        if preset not in presets(configs):
            raise ConfigError(f"preset {preset!r} is not one of {presets(configs)}")
        self.overrides = split_overrides(list(overrides))
        self.data, self.eval_data = data, eval_data
        self.tokenizer = self.out / "tokenizer.model"
        self.given_image_tokenizer = image_tokenizer is not None
        self.image_tokenizer = Path(image_tokenizer or self.out / "vqvae")
        if self.given_image_tokenizer:  # a wrong folder stops here, before any work
            load_image_tokenizer(self.image_tokenizer)
        for kind in TRAINED:  # a bad key stops here, before any work
            self.config(kind)
        self.out.mkdir(parents=True, exist_ok=True)
        self.report_path = self.out / "report.json"
        self.report = json.loads(self.report_path.read_text()) if self.report_path.is_file() else {}
        self.timings = self.report.setdefault("seconds", {})

    def config(self, kind: str, *extra: str):
        """configs/KIND_PRESET.yaml with the stage's paths, then the user's overrides."""
        config_class, _ = TRAINED[kind]
        path = self.configs / f"{kind}_{self.preset}.yaml"
        args = [*extra, f"train.run_dir={self.out / kind}", *self.overrides[kind]]
        return load_config(config_class, path, args)

    def stage(self, name: str, work) -> None:
        """Run work() (True: it did something, False: all was there) and record its time."""
        start = time.perf_counter()
        did = work()
        if did or name not in self.timings:
            self.timings[name] = round(time.perf_counter() - start, 1)
        self.report_path.write_text(json.dumps(self.report, indent=1))
        print(f"[all] {name}: {'done' if did else 'reused'} ({self.timings[name]} s)", flush=True)

    def split(self) -> bool:
        """A folder source without eval data: a held-out share of it, as links in OUT/data."""
        if self.eval_data is not None:
            return False
        train, held = self.out / "data" / "train", self.out / "data" / "eval"
        if not Path(self.data).is_dir():
            raise ValueError(
                f"{self.data!r} is not a folder: give its held-out part as --eval-data"
            )
        made = not (held / ".complete").is_file()
        if made:
            images = ImageFolderDataset(self.data, 8, train=False).items
            held_names = held_out_names([str(p) for p, _ in images])
            for image, _ in images:
                folder = held if str(image) in held_names else train
                for path in (Path(image), Path(image).with_suffix(".txt")):
                    link = folder / path.relative_to(self.data)
                    link.parent.mkdir(parents=True, exist_ok=True)
                    link.unlink(missing_ok=True)
                    link.symlink_to(path.resolve())
            (held / ".complete").write_text(f"{len(held_names)} of {len(images)} images\n")
        self.data, self.eval_data = str(train), str(held)
        return made

    def make_tokenizer(self) -> bool:
        if self.tokenizer.is_file():
            return False
        train_tokenizer(iter_captions(self.data), self.text_vocab, self.tokenizer)
        return True

    def encode(self) -> bool:
        done, mirror = False, self.config("dalle").data.mirror
        for split, source in (("train", self.data), ("eval", self.eval_data)):
            cache = self.out / "cache" / split
            if not is_token_cache(cache):
                encode_dataset(
                    self.image_tokenizer, source, cache, mirror=mirror and split == "train"
                )
                done = True
        return done

    def train(self, kind: str, *extra: str) -> bool:
        config = self.config(kind, *extra)
        if finished(Path(config.train.run_dir), config.train.max_steps):
            return False
        TRAINED[kind][1](config, resume=True)
        return True

    def run(self, sample_captions: list[str] | None = None) -> dict:
        """Every stage in order, then grids for `sample_captions` (default: held-out ones)."""
        self.stage("split", self.split)
        self.stage("tokenizer", self.make_tokenizer)
        images = [f"data.source={self.data}", f"data.eval_source={self.eval_data}"]
        if not self.given_image_tokenizer:
            self.stage("vqvae", lambda: self.train("vqvae", *images))
        self.stage("token cache", self.encode)
        self.stage(
            "clip", lambda: self.train("clip", *images, f"data.text_tokenizer={self.tokenizer}")
        )
        captions = sample_captions or held_out_captions(self.eval_data, 6)
        out = self.out
        dalle = [
            f"data.source={out / 'cache' / 'train'}",
            f"data.eval_source={out / 'cache' / 'eval'}",
        ]
        dalle += [f"data.image_tokenizer={self.image_tokenizer}"]
        dalle += [f"data.text_tokenizer={self.tokenizer}"]
        dalle += [f"data.clip={out / 'clip'}", f"data.sample_captions={json.dumps(captions[:2])}"]
        self.stage("dalle", lambda: self.train("dalle", *dalle))
        self.stage("samples", lambda: write_samples(out, captions, self.eval_data))
        return self.report

    def summary(self) -> str:
        times = ", ".join(f"{name} {seconds} s" for name, seconds in self.timings.items())
        total = sum(self.timings.values())
        return f"[all] {self.out}: {total / 60:.1f} minutes ({times}); report {self.report_path}"


def held_out_names(paths: list[str]) -> set[str]:
    """A fixed share of the images, chosen by a hash of each name (stable as images are added)."""
    count = min(HELD_OUT_MAX, max(1, round(len(paths) * HELD_OUT_SHARE)))
    ranked = sorted(paths, key=lambda p: hashlib.sha256(Path(p).name.encode()).hexdigest())
    return set(ranked[:count])


def held_out_captions(source: str, count: int) -> list[str]:
    captions = []
    for caption in iter_captions(source):
        if caption.strip() and caption not in captions:
            captions.append(caption)
        if len(captions) == count:
            break
    return captions


def write_samples(out: Path, captions: list[str], eval_source: str) -> bool:
    """Reranked grids for each caption and one held-out image completed, best first."""
    if (out / "completion.png").is_file():
        return False
    pipe = Pipeline.load(out / "dalle")
    lines = []
    for i, caption in enumerate(captions):
        images, _ = pipe.sample(caption, SAMPLES, KEEP, seed=i)
        path = out / "samples" / f"{i:02d}.png"
        save_image(make_grid(images, columns=KEEP), path)
        lines.append(f"{path.name}: {caption}")
    (out / "samples" / "captions.txt").write_text("\n".join(lines) + "\n")
    # The first held-out image, centre-cropped, with its caption.
    image, caption = next(iter(open_source(eval_source, pipe.image_tokenizer.image_size, False)))
    rows = pipe.dalle.config.grid // 2
    images, _ = pipe.complete(image, rows, caption, n=SAMPLES, keep=KEEP)
    save_image(
        make_grid(torch.cat([image[None], images]), columns=KEEP + 1), out / "completion.png"
    )
    (out / "completion.txt").write_text(f"{caption} (top {rows} code rows kept)\n")
    return True
