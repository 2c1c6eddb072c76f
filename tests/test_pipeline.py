"""Every stage through its command line on tiny configs, then sampling and completion; resume;
2 processes of every training stage equal to 1; the errors a user meets on bad arguments."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

import train
from dalle1.__main__ import main as dalle1_main
from dalle1.training.checkpoint import TRAIN_WEIGHTS_FILE
from pretrained.run import MANIFEST_FILE

ROOT = Path(__file__).resolve().parents[1]


def final_weights(run_dir: Path, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    last = sorted((run_dir / "checkpoints").glob("step_*"))[-1]
    return load_file(last / name)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_transformer_stage_resumes_exactly(parts, tmp_path, dalle_args, optimizer):
    options = [
        f"optim.optimizer={optimizer}",
        "train.max_steps=6",
        "train.checkpoint_every=3",
        "train.ema_decay=0.9",
        "data.bpe_dropout=0.3",
        "data.caption_drop=0.3",
    ]
    assert train.main(dalle_args(parts, tmp_path / "one", *options)) == 0
    # Stop after 3 steps (the step-6 checkpoint never written), then resume the same run.
    assert train.main(dalle_args(parts, tmp_path / "two", *options, "train.max_steps=3")) == 0
    assert train.main(dalle_args(parts, tmp_path / "two", *options, "--resume")) == 0
    assert_same_weights(final_weights(tmp_path / "one"), final_weights(tmp_path / "two"))
    assert (tmp_path / "one" / "previews" / "samples_0000006.png").is_file()
    logged = (parts / "clip" / "metrics.jsonl").read_text()
    assert '"negative_accuracy"' in logged  # the CLIP of the parts had hard negatives


def test_accumulated_micro_batches_train_like_one_large_batch(parts, tmp_path, dalle_args):
    """4 micro-batches of 2 per step give the weights of steps of 8 at once, per-sample draws
    (BPE dropout, dropped captions) included."""
    options = ["train.max_steps=3", "data.bpe_dropout=0.3", "data.caption_drop=0.3"]
    options += ["train.eval_every=0", "train.batch_size=8", "train.ema_decay=0.9"]
    assert train.main(dalle_args(parts, tmp_path / "whole", *options)) == 0
    accumulated = [*options, "train.grad_accum_steps=4"]
    assert train.main(dalle_args(parts, tmp_path / "micro", *accumulated)) == 0
    for name in ("model.safetensors", TRAIN_WEIGHTS_FILE):
        assert_same_weights(
            final_weights(tmp_path / "whole", name), final_weights(tmp_path / "micro", name)
        )
    # and a batch that does not split into the micro-batches is refused before any work
    assert (
        train.main(dalle_args(parts, tmp_path / "bad", *options, "train.grad_accum_steps=3")) == 2
    )


def test_fine_tuning_starts_from_a_runs_weights_with_a_fresh_optimizer(
    parts, tmp_path, dalle_args, dalle_run, capsys
):
    # A tiny learning rate: after one step the weights are still the ones started from.
    options = ["train.max_steps=1", "train.eval_every=0", "optim.lr=1e-9", "optim.warmup_steps=0"]
    tuned = tmp_path / "tuned"
    assert train.main([*dalle_args(parts, tuned, *options), "--from", str(dalle_run)]) == 0
    assert_same_weights(final_weights(dalle_run), final_weights(tuned))
    state = json.loads((tuned / "checkpoints" / "step_0000001" / "state.json").read_text())
    assert state["step"] == 1  # its own steps, from 0
    optimizer = torch.load(tuned / "checkpoints" / "step_0000001" / "optimizer.pt")
    assert {s["step"].item() for s in optimizer["state"].values()} == {1.0}  # fresh AdamW
    capsys.readouterr()
    other = dalle_args(parts, tmp_path / "wider", *options, "model.width=64")
    assert train.main([*other, "--from", str(dalle_run)]) == 2
    message = capsys.readouterr().err
    assert "cannot start from" in message and "same model sizes" in message
    assert "column_embedding: checkpoint (4, 32) vs model (4, 64)" in message


def test_a_second_start_without_resume_stops_and_keeps_every_checkpoint(
    parts, tmp_path, dalle_args, capsys
):
    run = tmp_path / "run"
    options = ["train.max_steps=4", "train.checkpoint_every=2", "train.eval_every=0"]
    assert train.main(dalle_args(parts, run, *options)) == 0
    before = {p: p.read_bytes() for p in (run / "checkpoints").rglob("*") if p.is_file()}
    assert len({p.parent.name for p in before}) == 2  # step_0000002, step_0000004
    capsys.readouterr()
    assert train.main(dalle_args(parts, run, *options)) == 2
    message = capsys.readouterr().err
    assert "already holds checkpoints" in message and "--resume" in message
    assert "--restart" in message
    after = {p: p.read_bytes() for p in (run / "checkpoints").rglob("*") if p.is_file()}
    assert after == before
    # --restart starts anew from step 0 and keeps the earlier checkpoints aside.
    assert train.main(dalle_args(parts, run, *options, "train.max_steps=1", "--restart")) == 0
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_0000001"]
    (aside,) = run.glob("checkpoints_replaced_*")
    assert sorted(p.name for p in aside.iterdir()) == ["step_0000002", "step_0000004"]


def torchrun(args: list[str]) -> str:
    """Run train.py on 2 CPU processes (gloo); returns what it printed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(ROOT / "train.py"),
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.mark.slow
def test_two_processes_train_the_transformer_like_one(parts, tmp_path, dalle_args):
    options = [
        "train.max_steps=3",
        "data.bpe_dropout=0.3",
        "data.caption_drop=0.3",
        "train.eval_every=0",
    ]
    assert train.main(dalle_args(parts, tmp_path / "single", *options)) == 0
    torchrun(dalle_args(parts, tmp_path / "ddp", *options))
    assert_same_weights(final_weights(tmp_path / "single"), final_weights(tmp_path / "ddp"))


@pytest.mark.slow
def test_two_processes_train_the_dvae_like_one(shapes_data, tmp_path, configs):
    """Gumbel noise per image and restarts over the global batch: the weights of one process.
    Both quantizers, with dead-code restarts on."""
    for quantizer in ("gumbel", "vq"):
        args = [
            "vqvae",
            "--config",
            str(configs / "vqvae_tiny.yaml"),
            f"data.source={shapes_data}",
            f"model.quantizer={quantizer}",
            "train.max_steps=4",
            "train.eval_every=0",
            "loss.restart_dead_codes_every=2",
            "train.ema_decay=0.9",
            # Adam turns rounding noise in a ~0 gradient into a full step; a larger eps keeps
            # such steps small, so that the comparison shows real differences only.
            "optim.eps=1e-3",
        ]
        single, ddp = tmp_path / f"{quantizer}_single", tmp_path / f"{quantizer}_ddp"
        assert train.main([*args, f"train.run_dir={single}"]) == 0
        output = torchrun([*args, f"train.run_dir={ddp}"])
        assert "training on 2 processes (DDP)" in output
        assert "restarted" in output
        for name in ("model.safetensors", TRAIN_WEIGHTS_FILE):
            assert_same_weights(final_weights(single, name), final_weights(ddp, name))


@pytest.mark.slow
def test_two_processes_train_clip_like_one(parts, shapes_data, tmp_path, configs):
    """The contrastive loss over the global batch, with hard negatives, mirrored and flipped
    scenes (so the processes hold different numbers of rows)."""
    args = [
        "clip",
        "--config",
        str(configs / "clip_tiny.yaml"),
        f"data.source={shapes_data}",
        f"data.text_tokenizer={parts / 'tok.model'}",
        "data.hard_negative_groups=[[red, green, blue], [left, right]]",
        "data.mirror_words=[[left, right]]",
        "data.flip_words=[[top, bottom], [above, below]]",
        "train.max_steps=3",
        "train.eval_every=0",
        "optim.eps=1e-3",  # as for the dVAE: attention's key bias has a gradient of exactly 0
    ]
    assert train.main([*args, f"train.run_dir={tmp_path / 'single'}"]) == 0
    torchrun([*args, f"train.run_dir={tmp_path / 'ddp'}"])
    assert_same_weights(final_weights(tmp_path / "single"), final_weights(tmp_path / "ddp"))


@pytest.mark.slow
def test_sharded_training_saves_and_resumes_like_one_process(parts, tmp_path, dalle_args):
    """FSDP on 2 processes, stopped and resumed, under FSDP and on one process, gives the weights,
    EMA and optimizer steps of one uninterrupted process."""
    options = [
        "train.max_steps=4",
        "train.checkpoint_every=2",
        "train.eval_every=2",  # sampling under FSDP: every rank must take part
        "train.ema_decay=0.9",
        "data.bpe_dropout=0.3",
        "data.caption_drop=0.3",
    ]
    assert train.main(dalle_args(parts, tmp_path / "single", *options)) == 0
    sharded = dalle_args(parts, tmp_path / "fsdp", *options, "train.parallel=fsdp")
    assert "training on 2 processes (FSDP, sharded)" in torchrun([*sharded, "train.max_steps=2"])
    shutil.copytree(tmp_path / "fsdp", tmp_path / "fsdp_then_single")
    torchrun([*sharded, "--resume"])
    assert (tmp_path / "fsdp" / "previews" / "samples_0000004.png").is_file()
    resume_alone = dalle_args(parts, tmp_path / "fsdp_then_single", *options, "--resume")
    assert train.main(resume_alone) == 0
    expected = final_weights(tmp_path / "single")
    for run in ("fsdp", "fsdp_then_single"):
        assert_same_weights(expected, final_weights(tmp_path / run))
        assert_same_weights(
            final_weights(tmp_path / "single", TRAIN_WEIGHTS_FILE),
            final_weights(tmp_path / run, TRAIN_WEIGHTS_FILE),
        )


def test_sample_and_complete_write_reranked_grids(parts, tmp_path, dalle_args):
    run = tmp_path / "dalle"
    assert train.main(dalle_args(parts, run)) == 0
    out = tmp_path / "grid.png"
    assert (
        dalle1_main(
            [
                "sample",
                "--run",
                str(run),
                "a red circle",
                "-n",
                "6",
                "--keep",
                "3",
                "--batch-size",
                "4",
                "--out",
                str(out),
                "--save-each",
            ]
        )
        == 0
    )
    assert Image.open(out).size == (3 * 18 + 2, 20)  # 3 images of 16 px, 2 px padding
    kept = sorted((tmp_path / "grid").glob("*.png"))
    scores = [float(p.stem.split("score")[1]) for p in kept]
    assert len(kept) == 3 and scores == sorted(scores, reverse=True)

    captions = tmp_path / "captions.txt"
    captions.write_text("a blue square\n\na green triangle on the left\n")
    assert (
        dalle1_main(
            [
                "sample",
                "--run",
                str(run),
                "--captions-file",
                str(captions),
                "-n",
                "2",
                "--keep",
                "2",
                "--out",
                str(tmp_path / "many.png"),
            ]
        )
        == 0
    )
    assert (tmp_path / "many_000.png").is_file() and (tmp_path / "many_001.png").is_file()

    picture = next((parts / "data").glob("*.png"))
    completion = tmp_path / "completion.png"
    assert (
        dalle1_main(
            [
                "complete",
                "--run",
                str(run),
                "--image",
                str(picture),
                "--rows",
                "2",
                "a red circle",
                "-n",
                "4",
                "--keep",
                "2",
                "--out",
                str(completion),
            ]
        )
        == 0
    )
    assert Image.open(completion).size == (3 * 18 + 2, 20)  # the original, then 2 kept


def test_many_captions_sample_together_and_rerank_on_their_own(dalle_run):
    from dalle1.pipeline import Pipeline
    from dalle1.sampling import SamplingConfig

    pipe = Pipeline.load(dalle_run)
    captions = ["a red circle", "a blue square on the left", "a green triangle"]
    greedy = SamplingConfig(temperature=0, batch_size=4)
    together = pipe.sample_many(captions, n=3, keep=2, config=greedy)
    for caption, (images, scores) in zip(captions, together, strict=True):
        alone, alone_scores = pipe.sample(caption, n=3, keep=2, config=greedy)
        torch.testing.assert_close(images, alone)
        torch.testing.assert_close(scores, alone_scores)
        assert images.shape == (2, 3, 16, 16) and scores[0] >= scores[1]


def test_a_runs_sampling_section_is_the_default_and_flags_override_it(dalle_run, tmp_path):
    from dalle1.pipeline import Pipeline

    run = tmp_path / "greedy"
    shutil.copytree(dalle_run, run)
    for config_file in run.rglob("config.yaml"):  # the run samples greedily
        config = yaml.safe_load(config_file.read_text())
        config["sampling"]["temperature"] = 0.0
        config_file.write_text(yaml.safe_dump(config))
    pipe = Pipeline.load(run)
    assert pipe.sampling.temperature == 0.0
    greedy = [pipe.sample("a red circle", n=3, seed=seed)[0] for seed in (0, 1)]
    torch.testing.assert_close(*greedy)  # greedy: the seed changes nothing

    def grid(seed: int, *flags: str) -> bytes:
        out = tmp_path / "grid.png"
        argv = ["sample", "--run", str(run), "a red circle", "-n", "3", "--keep", "3"]
        assert dalle1_main([*argv, "--seed", str(seed), "--out", str(out), *flags]) == 0
        return out.read_bytes()

    assert grid(0) == grid(1)
    assert grid(0, "--temperature", "1") != grid(1, "--temperature", "1")


def test_bad_arguments_name_the_problem(parts, tmp_path, dalle_args, capsys):
    run = tmp_path / "dalle"
    assert train.main(dalle_args(parts, run, "train.max_steps=1")) == 0
    picture = next((parts / "data").glob("*.png"))
    cases = [
        (["sample", "--run", str(run)], "no caption given"),
        (
            ["complete", "--run", str(run), "--image", str(picture), "--rows", "4", "x"],
            r"rows must lie in \[1, 3\]",
        ),
        (
            [
                "complete",
                "--run",
                str(run),
                "--image",
                str(tmp_path / "none.png"),
                "--rows",
                "1",
                "x",
            ],
            "not found",
        ),
        (
            [
                "complete",
                "--run",
                str(run),
                "--image",
                str(parts / "tok.model"),
                "--rows",
                "1",
                "x",
            ],
            "cannot read the image",
        ),
        (["sample", "--run", str(parts / "clip"), "x"], "not a transformer"),
        (["sample", "--run", str(tmp_path), "x"], "neither a model folder"),
    ]
    for argv, message in cases:
        assert dalle1_main(argv) == 2, argv
        assert message.split("\\")[0].split("[")[0] in capsys.readouterr().err, argv
    # A tokenizer that does not fit the trained transformer.
    other = tmp_path / "other.model"
    assert (
        train.main(
            ["tokenizer", "--data", str(parts / "data"), "--vocab", "320", "--out", str(other)]
        )
        == 0
    )
    manifest = json.loads((run / MANIFEST_FILE).read_text())  # what loading the run reads
    manifest["text_tokenizer"] = os.path.relpath(other, run)
    (run / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert dalle1_main(["sample", "--run", str(run), "x"]) == 2
    assert "do not fit" in capsys.readouterr().err


def test_mirror_on_a_cache_without_mirrors_names_the_command_that_writes_them(
    parts, tmp_path, dalle_args, capsys
):
    argv = dalle_args(parts, tmp_path / "run", "data.mirror=true", "train.max_steps=1")
    assert train.main(argv) != 0
    assert "train.py encode --mirror" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_mirror_on_images_encoded_on_the_fly_trains(parts, tmp_path, dalle_args):
    options = ["data.mirror=true", "train.max_steps=2", "train.eval_every=0"]
    argv = dalle_args(parts, tmp_path / "run", f"data.source={parts / 'data'}", *options)
    assert train.main(argv) == 0
    assert (tmp_path / "run" / "checkpoints" / "step_0000002").is_dir()
