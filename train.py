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

Every stage reads a typed config: defaults, then --config FILE (YAML), then stage flags, then
dotted `key.sub=value` overrides. A bad key or value stops the run before any work.
`python train.py STAGE --help` lists every key. vqvae, clip and dalle run on many processes
with `torchrun --nproc_per_node=N train.py STAGE ...`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from dalle1.config import ConfigError, describe_config, load_config, save_config
from dalle1.data import iter_captions
from dalle1.demo import INCONTEXT_SHARE
from dalle1.demo import run_demo as run_pipeline_demo
from dalle1.icons import data as icons_module
from dalle1.icons.data import IconsConfig, write_icons
from dalle1.icons.judge import train_judge
from dalle1.shapes.scenes import SPLITS, ShapesConfig, write_split
from dalle1.stages import run_all as run_all_module
from dalle1.stages.clip import CLIPRunConfig, train_clip
from dalle1.stages.dalle import DALLERunConfig, train_dalle
from dalle1.stages.encode import encode_dataset
from dalle1.stages.run_all import PRESETS_HELP, AllStages, presets
from dalle1.stages.vqvae import VQVAERunConfig, train_vqvae
from dalle1.tokenizer import TextTokenizer, train_tokenizer
from dalle1.training.distributed import exit_process

logger = logging.getLogger("train")

# The training stages that read a run config: name -> (config class, train function, what).
TRAINING_STAGES = {
    "vqvae": (VQVAERunConfig, train_vqvae, "the discrete VAE, the image tokenizer"),
    "clip": (CLIPRunConfig, train_clip, "the CLIP reranker"),
    "dalle": (DALLERunConfig, train_dalle, "the transformer"),
}


def run_shapes(args: argparse.Namespace) -> None:
    flags = {"out": args.out, "n": args.n, "size": args.size, "seed": args.seed}
    flags |= {"split": args.split, "holdout": args.holdout}
    values = {k: v for k, v in flags.items() if v is not None}
    if isinstance(values.get("holdout"), str):
        values["holdout"] = [s.strip() for s in values["holdout"].split(",") if s.strip()]
    config = load_config(ShapesConfig, args.config, args.overrides, values)
    out = Path(config.out)
    save_config(config, out / f"{config.split}_config.yaml")
    write_split(config)
    logger.info("wrote %d %s scenes to %s", config.n, config.split, out)


def run_icons(args: argparse.Namespace) -> None:
    flags = {"out": args.out, "size": args.size, "objects": args.objects}
    values = {k: v for k, v in flags.items() if v is not None}
    if args.sets is not None:
        values["sets"] = [s.strip() for s in args.sets.split(",") if s.strip()]
    config = load_config(IconsConfig, args.config, args.overrides, values)
    summary = write_icons(config)
    save_config(config, Path(config.out) / "icons_config.yaml")
    print(
        f"wrote {summary['images']} drawings ({len(summary['objects'])} objects x "
        f"{len(summary['styles'])} styles, {config.size} px) to {config.out}; held-out splits: "
        + ", ".join(f"{config.out}/split_{seed}" for seed in config.split_seeds)
    )


def run_icons_judge(args: argparse.Namespace) -> None:
    out = args.out or str(Path(args.data) / "judge")
    train_judge(args.data, out, args.steps, width=args.width, image_size=args.size)
    print(f"icon judge in {out}; its accuracy on unseen renderings:")
    print((Path(out) / "accuracy.json").read_text())


def run_training_stage(args: argparse.Namespace) -> None:
    config_class, train_fn, what = TRAINING_STAGES[args.stage]
    config = load_config(config_class, args.config, args.overrides)
    trainer = train_fn(config, args.resume, args.restart, args.init_from)
    if trainer.rank == 0:
        print(f"{what}: checkpoints in {trainer.checkpoints.root}")


def run_tokenizer(args: argparse.Namespace) -> None:
    path = train_tokenizer(iter_captions(args.data), args.vocab, args.out)
    size = TextTokenizer(path, 1).vocab_size
    print(f"tokenizer {path}: {size} BPE ids (asked for {args.vocab})")


def run_encode(args: argparse.Namespace) -> None:
    meta = encode_dataset(
        args.vqvae, args.data, args.out, args.batch_size, args.shard_size, args.device
    )
    print(
        f"token cache {args.out}: {meta['count']} images as {meta['grid']}x{meta['grid']} codes "
        f"in {len(meta['shards'])} shard(s), {meta['skipped']} skipped"
    )


def run_all(args: argparse.Namespace) -> None:
    run = AllStages(
        args.out, args.data, args.eval_data, args.preset, args.overrides, args.text_vocab
    )
    run.run()
    print(run.summary())


def run_demo(args: argparse.Namespace) -> None:
    run_pipeline_demo(
        args.out,
        args.size,
        args.holdout,
        not args.no_eval,
        seed=args.seed,
        incontext_share=args.incontext_share,
    )


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file with the run config")
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
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="e.g. train.max_steps=100"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    shapes = stages.add_parser(
        "shapes",
        help="write a split of the shapes data",
        description="Write N scenes as NAME.png, NAME.txt (caption) and NAME.json (spec) to DIR.",
    )
    shapes.add_argument("--config", help="YAML file of ShapesConfig keys")
    shapes.add_argument("--out", help="output folder (default data/shapes/train)")
    shapes.add_argument("--n", type=int, help="number of scenes (default 10000)")
    shapes.add_argument("--size", type=int, help="canvas side in pixels, 32..256, multiple of 8")
    shapes.add_argument("--seed", type=int, help="the same seed gives the same files")
    shapes.add_argument("--split", choices=SPLITS, help="which split (default train)")
    shapes.add_argument(
        "--holdout",
        help="held-out COLOUR:SHAPE pairs, comma-separated (default red:triangle,blue:circle)",
    )
    shapes.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    shapes.set_defaults(run=run_shapes)

    icons = stages.add_parser(
        "icons",
        help="render the icon grid (real drawings) with held-out cells",
        description=icons_module.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    icons.add_argument("--config", help="YAML file of IconsConfig keys")
    icons.add_argument("--out", help="output folder (default data/icons)")
    icons.add_argument("--size", type=int, help="side in pixels (default 64; 256 for 32x32 codes)")
    icons.add_argument("--sets", help="styles to render, comma-separated (default: all 26)")
    icons.add_argument("--objects", type=int, help="only the first N objects (default: all)")
    icons.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides (split_seeds=[0,1])"
    )
    icons.set_defaults(run=run_icons)

    judge = stages.add_parser(
        "icons-judge",
        help="train the icons' judge on every drawing",
        description="Train the classifier of object and style that judges the icons benchmark "
        "on every cell's drawing (held-out cells included: the judge may know them, the "
        "generator may not), with random shifts and zooms; report its accuracy on the "
        "DIR/test_T renderings it never saw (dalle1/icons/judge.py).",
    )
    judge.add_argument("--data", required=True, help="the icons folder (train.py icons --out)")
    judge.add_argument("--out", help="where the judge goes (default DATA/judge)")
    judge.add_argument("--steps", type=int, default=4000, help="updates of 64 (default 4000)")
    judge.add_argument("--width", type=int, default=32, help="first stage's channels (32)")
    judge.add_argument("--size", type=int, default=64, help="side it reads images at (64)")
    judge.set_defaults(run=run_icons_judge)

    for name, (config_class, _, what) in TRAINING_STAGES.items():
        keys = "\n".join(f"  {line}" for line in describe_config(config_class()))
        stage = stages.add_parser(
            name,
            help=f"train {what}",
            description=f"Train {what}: defaults, then --config FILE.yaml, then key=value "
            f"overrides (values read as YAML; see configs/{name}_*.yaml).",
            epilog=f"config keys (type, default: meaning):\n{keys}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_config_arguments(stage)
        stage.set_defaults(run=run_training_stage)

    tokenizer = stages.add_parser(
        "tokenizer",
        help="train the BPE text tokenizer",
        description="Train a sentencepiece BPE model on the lower-cased captions of SOURCE.",
    )
    tokenizer.add_argument("--data", required=True, help="image folder, tar shards or cache")
    tokenizer.add_argument("--vocab", type=int, default=16384, help="BPE ids (paper: 16384)")
    tokenizer.add_argument("--out", required=True, help="the .model file to write")
    tokenizer.set_defaults(run=run_tokenizer)

    encode = stages.add_parser(
        "encode",
        help="encode a data set into a token cache",
        description="Encode every image of SOURCE (centre crops) with a trained dVAE and write "
        "the codes (uint16) with all captions, sharded, to OUT.",
    )
    encode.add_argument(
        "--vqvae", required=True, help="image tokenizer (dVAE) run folder or model folder"
    )
    encode.add_argument("--data", required=True, help="image folder or tar shards")
    encode.add_argument("--out", required=True, help="cache folder to write")
    encode.add_argument("--batch-size", type=int, default=64, help="images per encoder call")
    encode.add_argument("--shard-size", type=int, default=10000, help="images per cache shard")
    encode.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    encode.set_defaults(run=run_encode)

    everything = stages.add_parser(
        "all",
        help="every stage on one data source, in order",
        description=run_all_module.__doc__,
        epilog=PRESETS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    everything.add_argument("--data", required=True, help="image folder or tar shards")
    everything.add_argument(
        "--eval-data",
        help="held-out images (default: for a folder, 5%% of it, at most 500, set aside as links "
        "in OUT/data/eval; tar shards need it)",
    )
    everything.add_argument("--out", required=True, help="output folder: one run per stage")
    everything.add_argument(
        "--preset", default="cpu64", choices=presets(), help="configs to start from (default cpu64)"
    )
    everything.add_argument(
        "--text-vocab", type=int, default=16384, help="BPE ids (fewer when the captions are few)"
    )
    everything.add_argument(
        "overrides", nargs="*", metavar="STAGE.key=value", help="e.g. dalle.train.max_steps=100"
    )
    everything.set_defaults(run=run_all)

    demo = stages.add_parser(
        "demo",
        help="the whole pipeline on the shapes data",
        description="Data, tokenizer, dVAE, token cache, CLIP and transformer on the shapes "
        "data, then reranked sample grids, a completion and the benchmark, all in OUT. A second "
        "run reuses the finished stages.",
    )
    demo.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    demo.add_argument("--size", type=int, default=64, help="canvas side in pixels (default 64)")
    demo.add_argument(
        "--holdout", default="red:triangle,blue:circle", help="held-out COLOUR:SHAPE pairs"
    )
    demo.add_argument(
        "--seed", type=int, default=0, help="seed of every training stage (the data stays)"
    )
    demo.add_argument(
        "--incontext-share",
        type=float,
        default=INCONTEXT_SHARE,
        help=f"share of two-panel in-context training scenes (default {INCONTEXT_SHARE})",
    )
    demo.add_argument("--no-eval", action="store_true", help="skip the benchmark at the end")
    demo.set_defaults(run=run_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    exit_process(main())
