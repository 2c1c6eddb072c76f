"""How to rank an edit's candidates: CLIP, the kept cells' likelihood, or both (edit_scores).

For the first N scenes of the edit suite (a box around one object of a two-object scene, a
caption asking for another object there), C candidates each are drawn once, judged, and picked
by each ranking: CLIP alone (weight 0), CLIP + w x the kept cells' log-likelihood (each
standardised over the candidates) for each w, the likelihood alone, and the first draw. Prints
the accuracy of each pick per run, and writes them as JSON. With several --top-p, the candidates
are drawn once per nucleus and each ranking gets a row per nucleus.

    python bench/edit_ranking.py --runs runs/demo/dalle runs/demo_seed1/dalle --n 200
    python bench/edit_ranking.py --runs runs/demo/dalle runs/demo_seed1/dalle --n 200 \
        --weights 1 --top-p 0.7 0.8 0.9 1
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dalle1.data import image_source  # noqa: E402
from dalle1.pipeline import Pipeline, edit_scores, standardised  # noqa: E402
from dalle1.shapes.benchmark import judge_edits, suite_folder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, help="transformer runs (demo's)")
    parser.add_argument("--n", type=int, default=200, help="scenes per run (default 200)")
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--weights", nargs="+", type=float, default=[0.25, 0.5, 1.0, 2.0])
    parser.add_argument(
        "--top-p", nargs="+", type=float, help="nuclei to draw from (default: the run's)"
    )
    parser.add_argument("--json", default="runs/bench/edit_ranking.json")
    args = parser.parse_args()
    report = {}
    for run in args.runs:
        pipe = Pipeline.load(run)
        folder = suite_folder(Path(image_source(pipe.parts.eval_data)).parent, "edit")
        picks: dict[str, list[bool]] = {}
        for top_p in args.top_p or [pipe.sampling.top_p]:
            config = replace(pipe.sampling, top_p=top_p)
            nucleus = f", top-p {top_p:g}" if args.top_p else ""
            for scene in judge_edits(pipe, folder, args.n, args.candidates, config):
                rankings = {"first draw": 0, "CLIP alone": int(scene.scores.argmax())}
                for w in args.weights:
                    rankings[f"CLIP + {w:g} x likelihood"] = int(
                        edit_scores(scene.scores, scene.loglik, w).argmax()
                    )
                rankings["likelihood alone"] = int(standardised(scene.loglik).argmax())
                for name, best in rankings.items():
                    picks.setdefault(name + nucleus, []).append(scene.verdicts[best]["pass"])
        report[run] = {name: sum(p) / len(p) for name, p in picks.items()}
    names = list(next(iter(report.values())))
    print("| ranking | " + " | ".join(args.runs) + " | mean |")
    print("|---|" + "---|" * (len(args.runs) + 1))
    for name in names:
        values = [report[run][name] for run in args.runs]
        cells = " | ".join(f"{v:.1%}" for v in values)
        print(f"| {name} | {cells} | {sum(values) / len(values):.1%} |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"n": args.n, "runs": report}, indent=1))


if __name__ == "__main__":
    main()
