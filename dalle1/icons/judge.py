"""The icons' judge: a classifier of object and style, independent of the model it judges.

It is trained on the real drawings of every cell of the grid, held-out cells included (the judge
may know them; the generator may not), with random shifts and zooms so that a drawing a little
off centre or off size is still read. Its accuracy is measured on renderings it never saw: every
cell rendered at another size (DIR/test_SIZE, resized to the judge's size), and the same images
zoomed in. Its pooled features also give the Fréchet distance between generated and real images
(ours: not comparable to published FIDs, which use Inception features of photographs).

    judge = train_judge("data/icons", "data/icons/judge")      # or IconJudge.from_pretrained(...)
    verdicts = judge.classify(images)                         # object / style logits
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from dalle1.clip import small_cnn
from dalle1.icons.data import load_images
from pretrained import Pretrained

logger = logging.getLogger(__name__)


@dataclass
class IconJudgeConfig:
    image_size: int = 64  # side S of the images it reads (others are resized)
    width: int = 32  # channels of the first stage; each of the 4 stages doubles it
    objects: list[str] = field(default_factory=list)  # class names, in logit order
    styles: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.objects or not self.styles:
            raise ValueError("the judge needs the object and style names")


class IconJudge(nn.Module, Pretrained):
    """A small CNN: a 4x4 stride-2 stem, 4 stages of two 3x3 convs (the first of stages 2-4
    with stride 2), global average pooling, and two linear heads."""

    config_class = IconJudgeConfig
    label = "icon judge"

    def __init__(self, config: IconJudgeConfig) -> None:
        super().__init__()
        self.config = config
        self.body, channels = small_cnn(config.width)
        self.object_head = nn.Linear(channels, len(config.objects))
        self.style_head = nn.Linear(channels, len(config.styles))

    @property
    def feature_width(self) -> int:
        return self.object_head.in_features

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, F) pooled features (resized to image_size first)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) images, got {tuple(images.shape)}")
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
        x = (images - 0.5) / 0.25
        return self.body(x).mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) in [0, 1] -> object logits (B, objects), style logits (B, styles)."""
        features = self.features(images)
        return self.object_head(features), self.style_head(features)

    @torch.no_grad()
    def classify(self, images: torch.Tensor, batch: int = 256) -> dict[str, torch.Tensor]:
        """{"object_logits", "style_logits", "features"} for (B, 3, H, W) images, in batches."""
        self.eval()
        out = {"object_logits": [], "style_logits": [], "features": []}
        device = next(self.parameters()).device
        for chunk in images.split(batch):
            features = self.features(chunk.to(device).float())
            out["features"].append(features.cpu())
            out["object_logits"].append(self.object_head(features).cpu())
            out["style_logits"].append(self.style_head(features).cpu())
        return {k: torch.cat(v) for k, v in out.items()}


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random zoom (0.9-1.15) and shift (up to 5% of the side) of (B, 3, S, S) images in
    [0, 1], the uncovered border white."""
    b = images.shape[0]
    scale = torch.empty(b).uniform_(0.9, 1.15, generator=generator)
    shift = torch.empty(b, 2).uniform_(-0.1, 0.1, generator=generator)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    # 1 - x: grid_sample fills with zeros, which is white after the flip back
    return 1 - F.grid_sample(1 - images, grid, mode="bilinear", align_corners=False)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, S, S, 3) uint8 -> (N, 3, S, S) float in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


def all_cells(data: Path) -> tuple[list[list[str]], list[str], list[str]]:
    summary = json.loads((data / "icons.json").read_text())
    objects, styles = summary["objects"], summary["styles"]
    return [[o, s] for o in objects for s in styles], objects, styles


@dataclass
class JudgeTrainingConfig:
    """What `python train.py icons-judge` trains."""

    data: str = ""  # the icons folder (train.py icons --out)
    out: str = ""  # where the judge goes; "" = DATA/judge
    steps: int = 4000  # updates of 64 drawings
    width: int = 32  # the first stage's channels
    size: int = 64  # side the judge reads images at

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("data: give the icons folder (--data DIR)")
        if self.steps < 1 or self.width < 1 or self.size < 16:
            raise ValueError("steps and width must be positive and size at least 16")


def train_judge(
    data: str | Path,
    out: str | Path,
    steps: int = 4000,
    batch_size: int = 64,
    width: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    image_size: int = 64,
    progress: bool = True,
) -> IconJudge:
    """Train the judge on every drawing of an icons folder (`train.py icons`), resized to
    image_size, and save it to out (model.safetensors + model_config.json) with its accuracy on
    the other-size renderings (accuracy.json). Returns it."""
    data, out = Path(data), Path(out)
    cells, objects, styles = all_cells(data)
    size = image_size or json.loads((data / "icons.json").read_text())["size"]
    images = to_tensor(load_images(data / "images", cells, size))
    object_ids = torch.tensor([objects.index(o) for o, _ in cells])
    style_ids = torch.tensor([styles.index(s) for _, s in cells])
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    judge = IconJudge(IconJudgeConfig(size, width, objects, styles))
    judge = judge.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=0.05)
    judge.train()
    for step in tqdm(range(steps), desc="judge", disable=not progress):
        warmup = min(1.0, (step + 1) / 100)
        for group in optimizer.param_groups:  # warm-up, then cosine to zero
            group["lr"] = lr * warmup * 0.5 * (1 + math.cos(math.pi * step / steps))
        index = torch.randint(len(cells), (batch_size,), generator=generator)
        batch = augment(images[index], generator).contiguous(memory_format=torch.channels_last)
        object_logits, style_logits = judge(batch)
        loss = F.cross_entropy(object_logits, object_ids[index]) + F.cross_entropy(
            style_logits, style_ids[index]
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 250 == 0:
            logger.info("judge step %d: loss %.4f", step, loss.item())
    judge.eval()
    judge.save_pretrained(out)
    accuracy = judge_accuracy(judge, data)
    (out / "accuracy.json").write_text(json.dumps(accuracy, indent=1))
    return judge


def test_images(data: Path, size: int) -> tuple[str, list[list[str]], torch.Tensor]:
    """(the folder's name, cells, images): every cell as rendered at another size
    (DIR/test_*), resized to `size`."""
    folders = sorted(data.glob("test_*"))
    if not folders:
        raise FileNotFoundError(f"{str(data)!r} holds no test_SIZE renderings")
    cells, _, _ = all_cells(data)
    return folders[0].name, cells, to_tensor(load_images(folders[0], cells, size))


def zoom(images: torch.Tensor, factor: float) -> torch.Tensor:
    """The centre 1/factor of each image, resized back to its size."""
    size = images.shape[-1]
    side = round(size / factor)
    start = (size - side) // 2
    crop = images[..., start : start + side, start : start + side]
    return F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True).clamp(0, 1)


def judge_accuracy(judge: IconJudge, data: str | Path) -> dict:
    """The judge on drawings it did not train on: every cell rendered at DIR/test_SIZE's size
    and resized, as is and zoomed in by 1.15 (the centre 87%)."""
    data = Path(data)
    folder, cells, images = test_images(data, judge.config.image_size)
    report = {}
    for name, shown in ((folder, images), (f"{folder}_zoom1.15", zoom(images, 1.15))):
        scores = score_cells(judge, shown, cells)
        report[name] = {k: v for k, v in scores.items() if k not in ("per_image", "features")}
    return report


def score_cells(judge: IconJudge, images: torch.Tensor, cells: list[list[str]]) -> dict:
    """Object top-1 / top-5, style, both right, over (N, 3, H, W) images of the given cells;
    "per_image": those four as (N,) bool tensors, and "features" (N, F)."""
    out = judge.classify(images)
    objects, styles = judge.config.objects, judge.config.styles
    want_object = torch.tensor([objects.index(o) for o, _ in cells])
    want_style = torch.tensor([styles.index(s) for _, s in cells])
    top5 = out["object_logits"].topk(min(5, len(objects)), dim=1).indices
    per_image = {
        "object": top5[:, 0] == want_object,
        "object_top5": (top5 == want_object[:, None]).any(dim=1),
        "style": out["style_logits"].argmax(dim=1) == want_style,
    }
    per_image["both"] = per_image["object"] & per_image["style"]
    report = {k: v.float().mean().item() for k, v in per_image.items()}
    return report | {"n": len(cells), "per_image": per_image, "features": out["features"]}


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two (N, F) feature sets:
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2)."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.t()), torch.cov(b.t())
    # tr (S_a S_b)^1/2 = sum of the square roots of the eigenvalues of S_a^1/2 S_b S_a^1/2
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.t()
    middle = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * middle)
