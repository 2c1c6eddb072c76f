"""generate(): the cache changes nothing but speed; seeds, top-k / top-p, prefixes, guidance."""

import pytest
import torch

from dalle1.sampling import SamplingConfig, filter_logits, generate, sample_candidates


def sharpened(model):
    """Random weights scaled up, so that greedy decoding does not repeat one code."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


@pytest.mark.parametrize("attention", ["sparse", "causal"])
def test_greedy_with_the_cache_equals_greedy_without(attention, tiny_dalle, random_batch):
    model = sharpened(tiny_dalle(attention))
    text, _ = random_batch(model, size=3)
    greedy = SamplingConfig(temperature=0)
    cached = generate(model, text, greedy)
    assert torch.equal(cached, generate(model, text, greedy, use_cache=False))
    assert len(set(cached.flatten().tolist())) > 2  # a real test: not one repeated code
    # Sampled too, with the same generator seed, and with guidance on.
    for config in (SamplingConfig(), SamplingConfig(guidance_scale=3.0, top_k=5)):
        a = generate(model, text, config, generator=torch.Generator().manual_seed(5))
        b = generate(
            model, text, config, generator=torch.Generator().manual_seed(5), use_cache=False
        )
        assert torch.equal(a, b)


def test_the_same_seed_gives_the_same_codes_and_another_seed_others(tiny_dalle, random_batch):
    model = sharpened(tiny_dalle())
    text, _ = random_batch(model, size=4)
    run = lambda seed: generate(model, text, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_a_prefix_is_kept_and_continued_as_greedy_would(tiny_dalle, random_batch):
    model = sharpened(tiny_dalle())
    text, _ = random_batch(model, size=2)
    greedy = SamplingConfig(temperature=0)
    full = generate(model, text, greedy)
    prefix = full[:, :6].clone()
    assert torch.equal(generate(model, text, greedy, prefix=prefix), full)
    other = (prefix + 1) % model.config.codebook_size
    completed = generate(model, text, greedy, prefix=other)
    assert torch.equal(completed[:, :6], other)
    with pytest.raises(ValueError, match="prefix must be"):
        generate(model, text, greedy, prefix=full)


def test_top_k_and_top_p_restrict_the_support(tiny_dalle, random_batch):
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [
        [True, True, False, False, False]
    ]
    # 0.5 + 0.2 < 0.8 <= 0.5 + 0.2 + 0.15: three codes
    assert torch.isfinite(filter_logits(logits, top_p=0.8)).sum() == 3
    assert torch.isfinite(filter_logits(logits, top_p=0.4)).sum() == 1  # always the best one
    shuffled = logits[:, [3, 0, 4, 2, 1]]
    assert torch.isfinite(filter_logits(shuffled, top_p=0.8)).tolist() == [
        [False, True, False, True, True]
    ]
    model = sharpened(tiny_dalle())
    text, _ = random_batch(model, size=8)
    config = SamplingConfig(top_k=1)  # top-1 sampling is greedy
    sampled = generate(model, text, config, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sampled, generate(model, text, SamplingConfig(temperature=0)))


def test_guidance_leaves_the_callers_tensors_alone_and_batches_bound_memory(
    tiny_dalle, random_batch
):
    model = sharpened(tiny_dalle())
    text, codes = random_batch(model, size=1)
    text_before, prefix = text.clone(), codes[:, :3].clone()
    generate(model, text, SamplingConfig(guidance_scale=2.0), prefix=prefix)
    assert torch.equal(text, text_before) and torch.equal(prefix, codes[:, :3])
    seen = []
    out = sample_candidates(
        model,
        text[0],
        10,
        SamplingConfig(batch_size=4),
        generator=torch.Generator().manual_seed(0),
        progress=seen.append,
    )
    assert out.shape == (10, 16) and seen == [4, 4, 2]


def test_several_captions_share_batches_and_keep_their_own_rows(tiny_dalle, random_batch):
    model = sharpened(tiny_dalle())
    text, _ = random_batch(model, size=3)
    greedy = SamplingConfig(temperature=0, batch_size=4)  # batches mix the captions' rows
    together = sample_candidates(model, text, 2, greedy)
    assert together.shape == (6, 16)
    for i in range(3):  # caption i's candidates are rows 2i, 2i + 1, as drawn alone
        alone = sample_candidates(model, text[i], 2, greedy)
        assert torch.equal(together[2 * i : 2 * i + 2], alone)
    assert not torch.equal(together[0], together[2])


def test_each_caption_keeps_its_own_prefix(tiny_dalle, random_batch):
    model = sharpened(tiny_dalle())
    text, codes = random_batch(model, size=3)
    greedy = SamplingConfig(temperature=0, batch_size=4)  # batches mix the captions' rows
    prefixes = codes[:, :5]  # (C, m): one per caption
    together = sample_candidates(model, text, 2, greedy, prefix=prefixes)
    for i in range(3):  # as drawn alone with its own prefix, which every candidate keeps
        alone = sample_candidates(model, text[i], 2, greedy, prefix=prefixes[i])
        assert torch.equal(together[2 * i : 2 * i + 2], alone)
        assert torch.equal(together[2 * i : 2 * i + 2, :5], prefixes[i].expand(2, -1))
    with pytest.raises(ValueError, match=r"prefix must be \(m,\) or \(C=3, m\)"):
        sample_candidates(model, text, 2, greedy, prefix=prefixes[:2])


@pytest.mark.parametrize("name", ["temperature", "top_p", "guidance_scale"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_settings_are_refused_where_they_enter(name, value):
    # NaN passes every range comparison: it must be refused before any sampling runs.
    with pytest.raises(ValueError, match=f"{name} must be a finite number"):
        SamplingConfig(**{name: value})
