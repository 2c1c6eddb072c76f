"""bench/rerank_curve.py's arithmetic: CLIP's top-1 and 'any of N' over disjoint groups."""

import importlib.util
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "rerank_curve.py"


@pytest.fixture(scope="module")
def rerank_curve():
    spec = importlib.util.spec_from_file_location("rerank_curve", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_curve_ranks_disjoint_groups_by_clip_score(rerank_curve):
    # One scene, 4 candidates in drawing order: only the second passes, and CLIP likes the first.
    passes = torch.tensor([False, True, False, False])
    scores = torch.tensor([0.9, 0.1, 0.5, 0.2])
    result = rerank_curve.curve([(passes, scores)], [1, 2, 4])
    assert result["top1"] == [0.25, 0.0, 0.0]  # N = 1: the transformer's own accuracy
    assert result["any"] == [0.25, 0.5, 1.0]  # a perfect reranker finds it once it is in the group
    assert result["best4"] == [None, None, 0.25]


def test_curve_averages_scenes(rerank_curve):
    good = (torch.tensor([True, False]), torch.tensor([1.0, 0.0]))  # CLIP picks the pass
    bad = (torch.tensor([True, False]), torch.tensor([0.0, 1.0]))  # CLIP picks the failure
    assert rerank_curve.curve([good, bad], [1, 2])["top1"] == [0.5, 0.5]
    assert rerank_curve.curve([good, good], [1, 2])["top1"] == [0.5, 1.0]
