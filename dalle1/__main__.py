"""`python -m dalle1 COMMAND ...`: sample, complete, evaluate and judge.

Commands:
    sample CAPTION ...   draw n images per caption, rerank them with CLIP, save the best as a grid
    complete CAPTION     keep the top rows of an image, sample the rest, rerank, save a grid
    edit CAPTION         regenerate a box or a masked region of an image, rerank, save a grid
    eval                 generate for a shapes suite and judge every candidate
    eval-icons           generate for the icon grid's held-out and seen cells, judge each
    judge DIR            score every NAME.png in DIR against its NAME.json (the shapes benchmark)
    serve                a web page to sample and complete (gradio), on 127.0.0.1:7860
    export RUN OUT       a trained model as one self-contained folder to share
    convert-tokenizer    read OpenAI's dVAE, a taming VQGAN or LlamaGen's VQ as our model folder
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm import tqdm

from dalle1.data import image_source
from dalle1.data.folder import example_pictures, first_caption
from dalle1.data.transforms import (
    BadSample,
    decode_image,
    read_image,
    resize_and_crop,
    to_tensor,
)
from dalle1.icons.benchmark import evaluate_icons, load_judge, report_table
from dalle1.images import make_grid, save_image
from dalle1.pipeline import Pipeline
from dalle1.regions import box_mask, highlight, parse_box, read_mask, to_model_size
from dalle1.sampling import SamplingConfig
from dalle1.shapes.benchmark import SUITES, evaluate_suite, suite_folder
from dalle1.shapes.judge import judge_folder
from pretrained.run import export_run
from vqvae.convert import SOURCES, convert


def run_judge(args: argparse.Namespace) -> None:
    report = judge_folder(args.folder, progress=not args.quiet)
    text = json.dumps(report, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    print(f"accuracy {report['accuracy']:.4f} over {report['n']} images", file=sys.stderr)


SAMPLING_FLAGS = {  # flag -> SamplingConfig field
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "guidance": "guidance_scale",
    "batch_size": "batch_size",
    "compile": "compile",
    "precision": "precision",
}


def sampling_config(args: argparse.Namespace, run_default: SamplingConfig) -> SamplingConfig:
    """The run's sampling section with the flags given on the command line."""
    given = {field: getattr(args, flag) for flag, field in SAMPLING_FLAGS.items()}
    return replace(run_default, **{k: v for k, v in given.items() if v is not None})


def write_results(images, scores, out: Path, each: bool, stem: str, first=None) -> None:
    """The grid (the original first, for completion) and optionally each image with its score."""
    shown = images if first is None else torch.cat([first[None].cpu(), images.cpu()])
    save_image(make_grid(shown, columns=min(8, len(shown))), out)
    if each:
        folder = out.with_suffix("")
        for rank, (image, score) in enumerate(zip(images, scores.tolist(), strict=True)):
            save_image(image, folder / f"{stem}_{rank:03d}_score{score:.4f}.png")


def read_captions(args: argparse.Namespace) -> list[str]:
    captions = list(args.captions)
    if args.captions_file:
        lines = Path(args.captions_file).read_text(encoding="utf-8").splitlines()
        captions += [line.strip() for line in lines if line.strip()]
    if not captions:
        raise ValueError("no caption given (as arguments or with --captions-file)")
    return captions


def run_sample(args: argparse.Namespace) -> None:
    captions = read_captions(args)
    pipe = Pipeline.load(args.run, args.clip, args.device)
    out = Path(args.out)
    config = sampling_config(args, pipe.sampling)
    with tqdm(total=args.n * len(captions), unit="image", desc="sampling") as bar:
        # every caption's candidates in shared batches; each caption reranked on its own
        results = pipe.sample_many(
            captions, args.n, args.keep, config=config, seed=args.seed, progress=bar.update
        )
    for i, (caption, (images, scores)) in enumerate(zip(captions, results, strict=True)):
        path = out if len(captions) == 1 else out.with_name(f"{out.stem}_{i:03d}{out.suffix}")
        write_results(images, scores, path, args.save_each, f"{i:03d}")
        print(f"{path}: {len(images)} of {args.n} for {caption!r}")


def run_complete(args: argparse.Namespace) -> None:
    pipe = Pipeline.load(args.run, args.clip, args.device)
    path = Path(args.image)
    if not path.is_file():
        raise FileNotFoundError(f"image {str(path)!r} not found")
    try:
        image = read_image(path, pipe.image_tokenizer.image_size)
    except BadSample as err:
        raise ValueError(f"cannot read the image {str(path)!r}: {err}") from err
    with tqdm(total=args.n, unit="image", desc="completing") as bar:
        images, scores = pipe.complete(
            image,
            args.rows,
            args.caption,
            n=args.n,
            keep=args.keep,
            config=sampling_config(args, pipe.sampling),
            seed=args.seed,
            progress=bar.update,
        )
    write_results(images, scores, Path(args.out), args.save_each, "completion", first=image)
    print(f"{args.out}: the original, then {len(images)} of {args.n} completions")


def run_edit(args: argparse.Namespace) -> None:
    pipe = Pipeline.load(args.run, args.clip, args.device)
    path, size = Path(args.image), pipe.image_tokenizer.image_size
    if not path.is_file():
        raise FileNotFoundError(f"image {str(path)!r} not found")
    try:
        picture = decode_image(path.read_bytes())
    except BadSample as err:
        raise ValueError(f"cannot read the image {str(path)!r}: {err}") from err
    if args.box:  # in the file's pixels, then resized and cropped as the image is
        mask = box_mask(parse_box(args.box), picture.height, picture.width)
    else:
        mask = read_mask(args.mask, picture.height, picture.width)
    image, region = to_tensor(resize_and_crop(picture, size, None)), to_model_size(mask, size)
    with tqdm(total=args.n, unit="image", desc="editing") as bar:
        images, scores = pipe.edit(
            image,
            region,
            args.caption,
            n=args.n,
            keep=args.keep,
            config=sampling_config(args, pipe.sampling),
            seed=args.seed,
            progress=bar.update,
            dilate=not args.no_dilate,
        )
    shown = highlight(image, region)
    write_results(images, scores, Path(args.out), args.save_each, "edit", first=shown)
    print(f"{args.out}: the image (region in red), then {len(images)} of {args.n} edits")


def run_eval(args: argparse.Namespace) -> None:
    pipe = Pipeline.load(args.run, args.clip, args.device)
    folder = args.data
    if folder is None:  # the shapes data's suites lie beside the split the run held out
        if pipe.parts.eval_data is None:
            raise ValueError(f"{args.run!r} records no held-out data: give the suite's --data")
        folder = str(suite_folder(Path(image_source(pipe.parts.eval_data)).parent, args.suite))
    report = evaluate_suite(
        pipe,
        args.suite,
        folder,
        args.n,
        args.candidates,
        args.keep,
        sampling_config(args, pipe.sampling),
        args.seed,
        args.save,
    )
    text = json.dumps(report, indent=1)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)
    print(text)


def run_eval_icons(args: argparse.Namespace) -> None:
    pipe = Pipeline.load(args.run, args.clip, args.device)
    judge = load_judge(args.data, args.judge)
    config = sampling_config(args, pipe.sampling)
    report = evaluate_icons(
        pipe, args.data, judge, args.n, args.candidates, config, args.seed, args.save
    )
    text = json.dumps(report, indent=1)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)
    print(text)
    print(report_table(report))


def run_export(args: argparse.Namespace) -> None:
    pipe = Pipeline.load(args.run, device="cpu")  # the parts must load and fit together
    held_out = pipe.parts.eval_data
    pictures = example_pictures(Path(image_source(held_out))) if held_out else []
    examples = [(p, first_caption(p)) for p in pictures]
    report = None
    if args.report:
        try:
            report = json.loads(Path(args.report).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read the report {args.report!r}: {err}") from err
    out = export_run(args.run, args.out, asdict(pipe.sampling), examples, report)
    print(f"{out}: the model, its parts, {len(examples)} examples and README.md (the model card)")


def run_convert_tokenizer(args: argparse.Namespace) -> None:
    model = convert(args.source, args.files, args.image_size)
    model.save_pretrained(args.out)
    print(
        f"{args.out}: {model.label} ({type(model).__name__}), {model.image_size} px images as "
        f"{model.grid}x{model.grid} codes of {model.codebook_size}; use it with "
        f"`train.py all --image-tokenizer {args.out}` or data.image_tokenizer={args.out}"
    )


def run_serve(args: argparse.Namespace) -> None:
    from dalle1.serve import Limits, serve  # gradio is imported only for the page

    limits = Limits(args.max_upload_mib, args.max_pixels, args.max_decoded_mib, args.max_candidates)
    serve(args.run, args.clip, args.host, args.port, args.device, args.auth_file, limits)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="transformer run folder (or checkpoint)")
    parser.add_argument("--clip", help="CLIP run for reranking (default: data.clip of the run)")


def add_output_arguments(parser: argparse.ArgumentParser, default_out: str) -> None:
    parser.add_argument("-n", type=int, default=64, help="candidates per caption (default 64)")
    parser.add_argument("--keep", type=int, default=16, help="best candidates kept (default 16)")
    parser.add_argument("--out", default=default_out, help=f"grid PNG (default {default_out})")
    parser.add_argument(
        "--save-each",
        action="store_true",
        help="also write each kept image as OUT_STEM/NAME_RANK_scoreS.png",
    )


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    # Unset flags take the run's `sampling` section (its config.yaml), else the defaults named.
    parser.add_argument("--temperature", type=float, help="0: greedy (default: the run's; 1)")
    parser.add_argument(
        "--top-k", type=int, help="keep the k likeliest codes; 0 = all (default: the run's; 0)"
    )
    parser.add_argument(
        "--top-p",
        type=float,
        help="keep the likeliest codes holding this much probability; 1 = all "
        "(default: the run's; 1)",
    )
    parser.add_argument(
        "--guidance",
        type=float,
        help="classifier-free guidance scale; 1 = off, needs caption_drop > 0 "
        "(default: the run's; 1)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        help="candidates per model call; 0 (default): as many as half the free memory holds",
    )
    parser.add_argument(
        "--compile",
        choices=("auto", "yes", "no"),
        help="compile the decode step (auto, the default: on CUDA, where CUDA graphs remove the "
        "per-step overhead; on the CPU it did not pay for itself)",
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        help="auto (default): bf16 autocast on CUDA, fp32 on the CPU",
    )
    parser.add_argument("--seed", type=int, default=0, help="the same seed gives the same images")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dalle1",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_generation_commands(commands)
    add_benchmark_commands(commands)
    serve = commands.add_parser(
        "serve",
        help="a web page to sample and complete",
        description="Serve a page (gradio) where one types a caption and gets reranked samples, "
        "or completes an image; its functions are also an HTTP API (see the README).",
    )
    add_model_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default local)")
    serve.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    serve.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    serve.add_argument(
        "--auth-file",
        help="a file of USER:PASSWORD lines: the page asks for one (do use it with --host 0.0.0.0)",
    )
    limit = serve.add_argument_group("what one request may cost")
    limit.add_argument("--max-upload-mib", type=float, default=20, help="upload size (default 20)")
    limit.add_argument("--max-pixels", type=int, default=4096 * 4096, help="(default 4096x4096)")
    limit.add_argument(
        "--max-decoded-mib", type=float, default=64, help="an image decoded (default 64)"
    )
    limit.add_argument("--max-candidates", type=int, default=512, help="(default 512)")
    serve.set_defaults(handler=run_serve)

    export = commands.add_parser(
        "export",
        help="write a trained model as one folder to share",
        description="Write RUN (a transformer run, with the image tokenizer, text tokenizer and "
        "CLIP it names) as one self-contained folder OUT: the weights of each part, the sampling "
        "settings, a manifest with paths relative to OUT, a few held-out pictures and a model "
        "card (README.md). OUT is what --run of sample, complete, edit and serve, "
        "Pipeline.load and train.py --from accept, wherever it is copied.",
    )
    export.add_argument("run", help="transformer run folder (or checkpoint)")
    export.add_argument("out", help="the folder to write (new or empty)")
    export.add_argument(
        "--report", help="a JSON of figures for the model card (e.g. report.json of train.py all)"
    )
    export.set_defaults(handler=run_export)

    convert = commands.add_parser(
        "convert-tokenizer",
        help="read a pretrained image tokenizer (OpenAI dVAE, taming VQGAN, LlamaGen VQ)",
        description="Read an image tokenizer trained elsewhere once and write it as our model "
        "folder (model.safetensors + model_config.json), which every stage and command "
        "accepts as an image tokenizer. Files: openai-dvae: encoder.pkl decoder.pkl; taming: "
        "MODEL.ckpt MODEL.yaml; llamagen: VQ.pt. Checkpoints are pickles, and a pickle can run "
        "code: they are read with torch.load(weights_only=True), else with a reader that "
        "imports none of the file's classes and keeps only tensors (vqvae/convert.py).",
    )
    convert.add_argument(
        "--from", dest="source", required=True, choices=SOURCES, help="where it comes from"
    )
    convert.add_argument("files", nargs="+", help="the checkpoint file(s), as listed above")
    convert.add_argument("--out", required=True, help="the model folder to write")
    convert.add_argument(
        "--image-size",
        type=int,
        default=256,
        help="side of the images it reads (default 256; taming's yaml gives its own)",
    )
    convert.set_defaults(handler=run_convert_tokenizer)
    return parser


def add_generation_commands(commands) -> None:
    sample = commands.add_parser(
        "sample",
        help="text -> reranked image grid",
        description="Draw N candidates per caption, decode them with the image tokenizer, rerank "
        "with CLIP "
        "and write the best KEEP as a grid, best first.",
    )
    sample.add_argument("captions", nargs="*", help="one or more captions")
    sample.add_argument("--captions-file", help="a file with one caption per line")
    add_model_arguments(sample)
    add_output_arguments(sample, "samples.png")
    add_sampling_arguments(sample)
    sample.set_defaults(handler=run_sample)

    complete = commands.add_parser(
        "complete",
        help="complete the bottom of an image",
        description="Encode IMAGE, keep the top ROWS rows of its codes, sample the rest given "
        "CAPTION, rerank with CLIP and write the original beside the best KEEP.",
    )
    complete.add_argument("caption", help="the caption")
    complete.add_argument("--image", required=True, help="the image to complete")
    complete.add_argument(
        "--rows", type=int, required=True, help="code rows kept from the top (1 .. grid - 1)"
    )
    add_model_arguments(complete)
    add_output_arguments(complete, "completion.png")
    add_sampling_arguments(complete)
    complete.set_defaults(handler=run_complete)

    edit = commands.add_parser(
        "edit",
        help="regenerate a region of an image",
        description="Encode IMAGE, sample the code cells of a region (a box or a mask) given "
        "CAPTION while every other cell keeps its code, rank the candidates by CLIP and by how "
        "well the kept cells after the region fit them, and write the image (region in red) "
        "beside the best KEEP.",
    )
    edit.add_argument("caption", help="what the region should show, in the whole picture")
    edit.add_argument("--image", required=True, help="the image to edit")
    where = edit.add_mutually_exclusive_group(required=True)
    where.add_argument("--box", help="X0,Y0,X1,Y1: the region in the image's pixels")
    where.add_argument("--mask", help="an image of IMAGE's size: non-black pixels are the region")
    edit.add_argument(
        "--no-dilate",
        action="store_true",
        help="sample only the cells the region touches (default: one cell more on every side, "
        "so that seams blend)",
    )
    add_model_arguments(edit)
    add_output_arguments(edit, "edit.png")
    add_sampling_arguments(edit)
    edit.set_defaults(handler=run_edit)


def add_benchmark_commands(commands) -> None:
    evaluate = commands.add_parser(
        "eval",
        help="the shapes benchmark: generate for a suite and judge every candidate",
        description="For N scenes of a shapes suite, draw C candidates per caption and judge "
        "each: accuracy of the first candidate, of CLIP's top-1 and the mean over CLIP's best "
        "KEEP, overall and per attribute. completion: the top half of each scene's codes is "
        "given, the whole picture judged.",
    )
    add_model_arguments(evaluate)
    evaluate.add_argument("--suite", required=True, choices=SUITES, help="which suite")
    evaluate.add_argument(
        "--data",
        help="the suite's folder (default: SUITE beside the run's held-out split, as in the "
        "demo's data/; the pair folder for completion and edit)",
    )
    evaluate.add_argument("--n", type=int, default=50, help="scenes (default 50)")
    evaluate.add_argument("--candidates", type=int, default=16, help="per scene (default 16)")
    evaluate.add_argument("--keep", type=int, default=4, help="CLIP's best kept (default 4)")
    evaluate.add_argument("--json", help="also write the report to this file")
    evaluate.add_argument("--save", help="write CLIP's best image per scene into this folder")
    add_sampling_arguments(evaluate)
    evaluate.set_defaults(handler=run_eval)

    icons = commands.add_parser(
        "eval-icons",
        help="the icons benchmark: held-out and seen cells of the icon grid, judged",
        description="For the held-out cells of an icons split (objects in a style never seen "
        "with them in training) and as many seen cells, draw C candidates of 'OBJECT, STYLE "
        "style' and let the icons' judge read each: object top-1 and top-5, style, both, for "
        "the first candidate and CLIP's top-1 and how often any candidate has it (the ceiling "
        "of reranking), a Fréchet distance in the judge's features, and the judge on the image "
        "tokenizer's reconstructions (its ceiling).",
    )
    add_model_arguments(icons)
    icons.add_argument("--data", required=True, help="an icons split, e.g. data/icons/split_0")
    icons.add_argument(
        "--judge", help="the judge's folder (default DATA/../judge; trained there when missing)"
    )
    icons.add_argument("--n", type=int, default=0, help="cells per suite (default 0: all)")
    icons.add_argument("--candidates", type=int, default=16, help="per cell (default 16)")
    icons.add_argument("--json", help="also write the report to this file")
    icons.add_argument("--save", help="folder for SUITE.png: real drawing, then CLIP's best 8")
    add_sampling_arguments(icons)
    icons.set_defaults(handler=run_eval_icons)

    judge = commands.add_parser(
        "judge",
        help="score shapes pictures against their specs",
        description="Judge every NAME.png in FOLDER against NAME.json; print a JSON report with "
        "the accuracy overall and per attribute, and the reason for each failure.",
    )
    judge.add_argument("folder", help="folder of NAME.png + NAME.json pairs")
    judge.add_argument("--json", help="also write the report to this file")
    judge.add_argument("--quiet", action="store_true", help="no progress bar")
    judge.set_defaults(handler=run_judge)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
