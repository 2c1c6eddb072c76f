from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from dalle1.config import ConfigError, from_dict, load_config, parse_override, save_config
from dalle1.stages.clip import CLIPRunConfig
from dalle1.stages.dalle import DALLERunConfig
from dalle1.stages.vqvae import VQVAERunConfig


@dataclass
class Optim:
    lr: float = 1e-3  # peak learning rate
    betas: list[float] = field(default_factory=lambda: [0.9, 0.96])


@dataclass
class Model:
    num_layers: int = 2
    num_heads: int = 2
    embed_dim: int = 32
    name: str | None = None

    def __post_init__(self):
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by {self.num_heads}")


@dataclass
class Run:
    model: Model = field(default_factory=Model)
    optim: Optim = field(default_factory=Optim)
    steps: int = 10
    compile: bool = False


def test_defaults_file_and_overrides_stack(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("steps: 20\nmodel:\n  num_layers: 4\n")
    config = load_config(Run, path, ["model.embed_dim=64", "optim.lr=3e-4", "compile=true"])
    assert config.steps == 20 and config.model.num_layers == 4 and config.model.embed_dim == 64
    assert config.optim.lr == pytest.approx(3e-4) and isinstance(config.optim.lr, float)
    assert config.compile is True and config.model.num_heads == 2


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(
        ConfigError,
        match=r"unknown config key 'model.num_layer' \(did you mean 'model.num_layers'\?\)",
    ):
        load_config(Run, None, ["model.num_layer=3"])
    with pytest.raises(ConfigError, match="unknown config key 'nope'"):
        load_config(Run, None, ["nope=1"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("steps=ten", r"'steps' expects int, got 'ten'"),
        ("steps=1.5", r"'steps' expects int"),
        ("compile=1", r"'compile' expects bool"),
        ("optim.lr=fast", r"'optim.lr' expects float"),
        ("optim.betas=0.9", r"'optim.betas' expects a list"),
        ("model=3", r"section 'model.' must be a mapping|'model'"),
        ("model.num_heads=3", r"embed_dim 32 is not divisible by 3"),
        ("steps", r"not of the form key.sub=value"),
    ],
)
def test_bad_values_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Run, None, [override])


def test_optional_and_int_for_float():
    config = from_dict(Run, {"model": {"name": "tiny"}, "optim": {"lr": 1}})
    assert config.model.name == "tiny" and config.optim.lr == 1.0
    assert from_dict(Run, {"model": {"name": None}}).model.name is None


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Run, tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Run, bad)


def test_saved_config_loads_back_equal(tmp_path):
    config = load_config(Run, None, ["model.num_layers=6", "optim.betas=[0.8, 0.9]"])
    save_config(config, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["model"]["num_layers"] == 6
    assert load_config(Run, tmp_path / "config.yaml") == config


def test_parse_override_reads_yaml_scalars():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override("a=hello") == (["a"], "hello")


@dataclass
class Stage:
    train: Model = field(default_factory=lambda: Model(num_layers=12, name="stage"))


def test_partial_section_keeps_the_parent_defaults():
    config = from_dict(Stage, {"train": {"num_heads": 4}})
    assert (config.train.num_layers, config.train.name, config.train.num_heads) == (12, "stage", 4)


def test_every_shipped_config_loads():
    """A misspelt key or wrong type in configs/*.yaml would stop `make demo` or a user's run."""
    classes = {"vqvae": VQVAERunConfig, "clip": CLIPRunConfig, "dalle": DALLERunConfig}
    paths = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    stems = {path.stem for path in paths}
    for stage in classes:  # every stage ships its tests' and its demo's config
        assert {f"{stage}_tiny", f"{stage}_shapes"} <= stems, stems
    for path in paths:
        config = load_config(classes[path.stem.split("_")[0]], path)
        assert config.train.max_steps > 0, path
