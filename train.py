"""The one training entry: `python train.py STAGE [--config FILE] [key=value ...]`.

Stages:
    shapes     write a split of the procedural shapes data (images, captions, specs)
    icons      render the icon grid (real drawings: objects x styles) with held-out cells
    icons-judge  train the icons' judge (object and style classifier) on every drawing
    tokenizer  train the BPE text tokenizer on the captions of a data set
    vqvae      train the discrete VAE (the image tokenizer)
    encode     encode a data set once with a trained image tokenizer (the token cache)
    clip       train the CLIP reranker
    dalle      train the transformer
    all        every stage on one data source, then sample grids (train.py all --help)
    demo       `all` on the shapes data, then the benchmark

Every stage reads a typed config (a dataclass): defaults, then --config FILE (YAML), then its
flags (one per top-level key: --out, --n, ...), then dotted `key.sub=value` overrides. A bad
key or value stops the run before any work. `python train.py STAGE --help` lists every key.
vqvae, clip and dalle run on many processes with `torchrun --nproc_per_node=N train.py STAGE`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dalle1.config import (
    ConfigError,
    add_config_flags,
    describe_config,
    flag_values,
    load_config,
    save_config,
)
from dalle1.data import iter_captions
from dalle1.demo import DemoConfig
from dalle1.demo import run_demo as run_pipeline_demo
from dalle1.icons import data as icons_module
from dalle1.icons.data import IconsConfig, write_icons
from dalle1.icons.judge import JudgeTrainingConfig, train_judge
from dalle1.shapes.scenes import ShapesConfig, write_split
from dalle1.stages import run_all as run_all_module
from dalle1.stages.clip import CLIPRunConfig, train_clip
from dalle1.stages.dalle import DALLERunConfig, train_dalle
from dalle1.stages.encode import EncodeConfig, encode_dataset
from dalle1.stages.run_all import PRESETS_HELP, AllConfig, AllStages
from dalle1.stages.vqvae import VQVAERunConfig, train_vqvae
from dalle1.tokenizer import TextTokenizer, TokenizerTrainingConfig, train_tokenizer
from dalle1.training.distributed import exit_process

logger = logging.getLogger("train")


@dataclass
class StageCommand:
    """One stage of train.py: its config class, what runs it, and its help."""

    config_class: type
    run: Callable[[Any, argparse.Namespace], None]  # (resolved config, parsed arguments)
    help: str
    description: str = ""
    trains: bool = False  # a training run: --resume, --restart, --from; keys in the epilog
    stage_overrides: bool = False  # key=value arguments may name a stage: dalle.train.x=1


def run_shapes(config: ShapesConfig, args: argparse.Namespace) -> None:
    save_config(config, Path(config.out) / f"{config.split}_config.yaml")
    write_split(config)
    logger.info("wrote %d %s scenes to %s", config.n, config.split, config.out)


def run_icons(config: IconsConfig, args: argparse.Namespace) -> None:
    summary = write_icons(config)
    save_config(config, Path(config.out) / "icons_config.yaml")
    print(
        f"wrote {summary['images']} drawings ({len(summary['objects'])} objects x "
        f"{len(summary['styles'])} styles, {config.size} px) to {config.out}; held-out splits: "
        + ", ".join(f"{config.out}/split_{seed}" for seed in config.split_seeds)
    )


def run_icons_judge(config: JudgeTrainingConfig, args: argparse.Namespace) -> None:
    out = config.out or str(Path(config.data) / "judge")
    train_judge(config.data, out, config.steps, width=config.width, image_size=config.size)
    print(f"icon judge in {out}; its accuracy on unseen renderings:")
    print((Path(out) / "accuracy.json").read_text())


def run_training(train_fn, what: str):
    def run(config, args: argparse.Namespace) -> None:
        trainer = train_fn(config, args.resume, args.restart, args.init_from)
        if trainer.rank == 0:
            print(f"{what}: checkpoints in {trainer.checkpoints.root}")

    return run


def run_tokenizer(config: TokenizerTrainingConfig, args: argparse.Namespace) -> None:
    path = train_tokenizer(iter_captions(config.data), config.vocab, config.out)
    size = TextTokenizer(path, 1).vocab_size
    print(f"tokenizer {path}: {size} BPE ids (asked for {config.vocab})")


def run_encode(config: EncodeConfig, args: argparse.Namespace) -> None:
    c = config
    meta = encode_dataset(
        c.vqvae, c.data, c.out, c.batch_size, c.shard_size, c.device, mirror=c.mirror
    )
    print(
        f"token cache {c.out}: {meta['count']} images as {meta['grid']}x{meta['grid']} codes "
        f"in {len(meta['shards'])} shard(s), {meta['skipped']} skipped"
    )


def run_all(config: AllConfig, args: argparse.Namespace) -> None:
    c = config
    run = AllStages(
        c.out,
        c.data,
        c.eval_data,
        c.preset,
        args.stage_overrides,
        c.text_vocab,
        image_tokenizer=c.image_tokenizer,
    )
    run.run()
    print(run.summary())


def run_demo(config: DemoConfig, args: argparse.Namespace) -> None:
    run_pipeline_demo(
        config.out,
        config.size,
        ",".join(config.holdout),
        config.eval,
        seed=config.seed,
        incontext_share=config.incontext_share,
        stage_overrides=args.stage_overrides,
    )


STAGES = {
    "shapes": StageCommand(
        ShapesConfig,
        run_shapes,
        "write a split of the shapes data",
        "Write N scenes as NAME.png, NAME.txt (caption) and NAME.json (spec) to OUT.",
    ),
    "icons": StageCommand(
        IconsConfig,
        run_icons,
        "render the icon grid (real drawings) with held-out cells",
        icons_module.__doc__,
    ),
    "icons-judge": StageCommand(
        JudgeTrainingConfig,
        run_icons_judge,
        "train the icons' judge on every drawing",
        "Train the classifier of object and style that judges the icons benchmark on every "
        "cell's drawing (held-out cells included: the judge may know them, the generator may "
        "not), with random shifts and zooms; report its accuracy on the DATA/test_T renderings "
        "it never saw (dalle1/icons/judge.py).",
    ),
    "tokenizer": StageCommand(
        TokenizerTrainingConfig,
        run_tokenizer,
        "train the BPE text tokenizer",
        "Train a sentencepiece BPE model on the lower-cased captions of DATA.",
    ),
    "vqvae": StageCommand(
        VQVAERunConfig,
        run_training(train_vqvae, "the discrete VAE, the image tokenizer"),
        "train the discrete VAE, the image tokenizer",
        trains=True,
    ),
    "encode": StageCommand(
        EncodeConfig,
        run_encode,
        "encode a data set into a token cache",
        "Encode every image of DATA (centre crops) with an image tokenizer and write the codes "
        "(uint16) with all captions, sharded, to OUT.",
    ),
    "clip": StageCommand(
        CLIPRunConfig,
        run_training(train_clip, "the CLIP reranker"),
        "train the CLIP reranker",
        trains=True,
    ),
    "dalle": StageCommand(
        DALLERunConfig,
        run_training(train_dalle, "the transformer"),
        "train the transformer",
        trains=True,
    ),
    "all": StageCommand(
        AllConfig,
        run_all,
        "every stage on one data source, in order",
        run_all_module.__doc__,
        stage_overrides=True,
    ),
    "demo": StageCommand(
        DemoConfig,
        run_demo,
        "the whole pipeline on the shapes data",
        "Data, tokenizer, dVAE, token cache, CLIP and transformer on the shapes data, then "
        "reranked sample grids, a completion and the benchmark, all in OUT. A second run reuses "
        "the finished stages.",
        stage_overrides=True,
    ),
}


def run_stage(args: argparse.Namespace) -> None:
    """Resolve the stage's config (defaults <- --config <- flags <- key=value), then run it."""
    command = STAGES[args.stage]
    own, args.stage_overrides = list(args.overrides), []
    if command.stage_overrides:  # its own keys are flat: a dotted key is STAGE.key=value
        args.stage_overrides = [o for o in own if "." in o.partition("=")[0]]
        own = [o for o in own if o not in args.stage_overrides]
    values = flag_values(args, command.config_class)
    config = load_config(command.config_class, args.config, own, values)
    command.run(config, args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, command in STAGES.items():
        epilog = PRESETS_HELP if name == "all" else None
        if command.trains:
            keys = describe_config(command.config_class())
            epilog = "config keys (type, default: meaning):\n" + "\n".join(f"  {k}" for k in keys)
        stage = stages.add_parser(
            name,
            help=command.help,
            description=command.description
            or f"Train {command.help.removeprefix('train ')}: defaults, then --config FILE.yaml, "
            f"then key=value overrides (values read as YAML; see configs/{name}_*.yaml).",
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        stage.add_argument("--config", help="YAML file of the settings below")
        add_config_flags(stage, command.config_class)
        if command.trains:
            add_run_arguments(stage)
        overrides = "STAGE.key=value" if command.stage_overrides else "key=value"
        example = "dalle.train.max_steps=100" if command.stage_overrides else "a.b=value"
        stage.add_argument("overrides", nargs="*", metavar=overrides, help=f"e.g. {example}")
        stage.set_defaults(handler=run_stage)
    return parser


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--resume", action="store_true", help="continue from the last checkpoint of train.run_dir"
    )
    start.add_argument(
        "--restart",
        action="store_true",
        help="start anew in a train.run_dir that holds checkpoints (they are moved aside)",
    )
    parser.add_argument(
        "--from",
        dest="init_from",
        metavar="RUN",
        help="fine-tune: start from RUN's weights (same sizes and vocabularies) with a fresh "
        "optimizer and schedule; ignored when --resume finds checkpoints",
    )


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    exit_process(main())
