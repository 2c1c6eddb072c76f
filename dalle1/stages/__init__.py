"""The training stages (vqvae.py, clip.py, dalle.py): each builds its data and model and gives
the Trainer a step and an evaluation; encode.py writes token caches; run_all.py runs them all."""

from __future__ import annotations

from dalle1.training import Trainer


class Stage:
    """A training stage: __init__(config, resume, restart, init_from) builds self.trainer and
    starts it (see Trainer.start); step() and evaluate() are what the Trainer calls."""

    trainer: Trainer

    @classmethod
    def train(
        cls, config, resume: bool = False, restart: bool = False, init_from: str | None = None
    ) -> Trainer:
        """Build the stage and train it to train.max_steps; returns its Trainer."""
        stage = cls(config, resume, restart, init_from)
        stage.trainer.fit(stage.step, stage.evaluate)
        return stage.trainer
