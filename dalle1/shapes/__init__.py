"""The shapes benchmark: procedural captioned scenes (scenes.py), the judge that reads them back
from pixels (judge.py), and the suites that score a pipeline with it (benchmark.py)."""

from dalle1.shapes.benchmark import SUITES, evaluate_suite, suite_folder
from dalle1.shapes.judge import judge_folder, judge_image
from dalle1.shapes.scenes import SPLITS, ShapesConfig, write_split

__all__ = [
    "SPLITS",
    "SUITES",
    "ShapesConfig",
    "evaluate_suite",
    "judge_folder",
    "judge_image",
    "suite_folder",
    "write_split",
]
