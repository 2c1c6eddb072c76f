"""The one training entry: `python train.py STAGE [--config FILE] [key=value ...]`.

Stages:
    shapes   write a split of the procedural shapes data (images, captions, specs)
    vqvae    train the discrete VAE (the image tokenizer)
    encode   encode a data set once with a trained dVAE (the token cache)
    demo     the whole pipeline on the shapes data (so far: data and judge)

Every stage reads a typed config: defaults, then --config FILE (YAML), then stage flags, then
dotted `key.sub=value` overrides. A bad key or value stops the run before any work.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from dalle1.config import ConfigError, load_config, save_config
from dalle1.data.shapes import SPLITS, ShapesConfig, write_split
from dalle1.judge import judge_folder
from dalle1.stages.encode import encode_dataset
from dalle1.stages.vqvae import VQVAERunConfig, train_vqvae

logger = logging.getLogger("train")


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


def run_vqvae(args: argparse.Namespace) -> None:
    config = load_config(VQVAERunConfig, args.config, args.overrides)
    trainer = train_vqvae(config, resume=args.resume)
    print(f"dVAE checkpoints in {trainer.checkpoint_root}")


def run_encode(args: argparse.Namespace) -> None:
    meta = encode_dataset(
        args.vqvae, args.data, args.out, args.batch_size, args.shard_size, args.device
    )
    print(
        f"token cache {args.out}: {meta['count']} images as {meta['grid_size']}x"
        f"{meta['grid_size']} codes in {len(meta['shards'])} shard(s), {meta['skipped']} skipped"
    )


def run_demo(args: argparse.Namespace) -> None:
    """The demo on the shapes data. Built so far: every data split, checked by the judge."""
    out = Path(args.out)
    sizes = {"train": 2000, "single": 200, "pair": 200, "novel": 200}
    for split, n in sizes.items():
        values = {"out": str(out / "data" / split), "n": n, "size": args.size, "split": split}
        values["holdout"] = [s for s in args.holdout.split(",") if s]
        config = load_config(ShapesConfig, None, (), values)
        save_config(config, out / "data" / split / f"{split}_config.yaml")
        write_split(config)
        report = judge_folder(config.out)
        print(f"{split:>6}: {n} scenes in {config.out}, judge accuracy {report['accuracy']:.3f}")
    (out / "report.json").write_text(json.dumps({"data": str(out / "data")}, indent=1))
    print(
        "not built yet: the tokenizer, dVAE, CLIP and transformer stages of the demo. "
        f"The shapes data is in {out / 'data'}."
    )


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file with the run config")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the last checkpoint of train.run_dir"
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

    vqvae = stages.add_parser(
        "vqvae",
        help="train the discrete VAE",
        description="Train the dVAE. Keys: model.*, data.*, loss.*, optim.*, train.* "
        "(see configs/vqvae_*.yaml).",
    )
    add_config_arguments(vqvae)
    vqvae.set_defaults(run=run_vqvae)

    encode = stages.add_parser(
        "encode",
        help="encode a data set into a token cache",
        description="Encode every image of SOURCE (centre crops) with a trained dVAE and write "
        "the codes (uint16) with all captions, sharded, to OUT.",
    )
    encode.add_argument("--vqvae", required=True, help="dVAE run folder or checkpoint folder")
    encode.add_argument("--data", required=True, help="image folder or tar shards")
    encode.add_argument("--out", required=True, help="cache folder to write")
    encode.add_argument("--batch-size", type=int, default=64, help="images per encoder call")
    encode.add_argument("--shard-size", type=int, default=10000, help="images per cache shard")
    encode.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    encode.set_defaults(run=run_encode)

    demo = stages.add_parser("demo", help="the whole pipeline on the shapes data")
    demo.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    demo.add_argument("--size", type=int, default=64, help="canvas side in pixels (default 64)")
    demo.add_argument(
        "--holdout", default="red:triangle,blue:circle", help="held-out COLOUR:SHAPE pairs"
    )
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
    sys.exit(main())
