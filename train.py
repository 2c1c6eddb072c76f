"""The one training entry: `python train.py STAGE [--config FILE] [key=value ...]`.

Stages:
    shapes   write a split of the procedural shapes data (images, captions, specs)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
