"""`python -m dalle1 COMMAND ...`: a thin command line over the library.

Commands:
    judge DIR    score every NAME.png in DIR against its NAME.json (the shapes benchmark)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from dalle1.judge import judge_folder


def run_judge(args: argparse.Namespace) -> int:
    try:
        report = judge_folder(args.folder, progress=not args.quiet)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    print(f"accuracy {report['accuracy']:.4f} over {report['n']} images", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dalle1",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    judge = commands.add_parser(
        "judge",
        help="score shapes pictures against their specs",
        description="Judge every NAME.png in FOLDER against NAME.json; print a JSON report with "
        "the accuracy overall and per attribute, and the reason for each failure.",
    )
    judge.add_argument("folder", help="folder of NAME.png + NAME.json pairs")
    judge.add_argument("--json", help="also write the report to this file")
    judge.add_argument("--quiet", action="store_true", help="no progress bar")
    judge.set_defaults(run=run_judge)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
