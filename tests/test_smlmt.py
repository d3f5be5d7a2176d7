"""SMLMT episodes: real N-way k-shot tasks, correctly masked, fillable and determined by the generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metapretrain.config.load import run_config_from_dict
from metapretrain.meta import smlmt
from metapretrain.meta.smlmt import SMLMTBuilder, index_spans

EOS, MASK = 0, 1
RARE, FREQUENT = 250, 2


def tokenize_corpus(root, out_dir, n_lines: int = 6000, vocab_size: int = 1024):
    """(tokenizer.json path, uint16 shard, special ids) for the first lines of WikiText-2 valid."""
    from metapretrain.data.tokenizer import special_token_ids, train_bpe

    lines = (root / "corpus" / "wikitext-2_valid.tokens.txt").read_text(encoding="utf-8").splitlines()
    docs = [line.strip() for line in lines[:n_lines] if line.strip()]
    tok = train_bpe(docs, vocab_size)
    path = out_dir / "tokenizer.json"
    tok.save(str(path))
    ids = special_token_ids(tok)
    encoded = tok.encode_batch(docs, add_special_tokens=False)
    shard = np.concatenate([np.asarray([*e.ids, ids["eos"]], dtype=np.uint16) for e in encoded])
    return str(path), shard, ids


@pytest.fixture(scope="module")
def tokenized(data_root, tmp_path_factory):
    return tokenize_corpus(data_root, tmp_path_factory.mktemp("tok"))


def episode_cfg(**kw):
    ep = {"n_way": 5, "k_shot": 3, "q_query": 2, "window": 16, "min_count": 8, "max_frequency": 0.05, **kw}
    return run_config_from_dict({"meta": {"episode": ep}}).meta.episode


@pytest.fixture(scope="module")
def shard() -> np.ndarray:
    """Tokens 3..199 uniformly, token 2 at ~20% (a stop word), token 250 only 3 times (rare), EOS every ~50."""
    rng = np.random.default_rng(0)
    x = rng.integers(3, 200, size=30_000).astype(np.uint16)
    x[rng.random(len(x)) < 0.2] = FREQUENT
    x[rng.random(len(x)) < 0.02] = EOS
    x[[1000, 5000, 9000]] = RARE
    return x


def test_episode_is_a_real_n_way_k_shot_task(shard):
    cfg = episode_cfg()
    ep = SMLMTBuilder(shard, cfg, MASK, EOS).sample(torch.Generator().manual_seed(1))
    N, k, q, W = cfg.n_way, cfg.k_shot, cfg.q_query, cfg.window
    assert ep.support.shape == (N * k, W) and ep.query.shape == (N * q, W)
    assert ep.support.dtype == torch.int64
    # Every class has exactly k support and q query examples; query classes are support classes.
    assert np.bincount(ep.support_labels.numpy(), minlength=N).tolist() == [k] * N
    assert np.bincount(ep.query_labels.numpy(), minlength=N).tolist() == [q] * N
    assert set(ep.query_labels.tolist()) <= set(ep.support_labels.tolist())
    assert len({c for c in ep.classes}) == N
    # Query examples are other occurrences than the support examples.
    assert not set(ep.support_ends.tolist()) & set(ep.query_ends.tolist())
    for x, y, ends in ((ep.support, ep.support_labels, ep.support_ends), (ep.query, ep.query_labels, ep.query_ends)):
        for row, label, end in zip(x.numpy(), y.tolist(), ends.tolist(), strict=True):
            (cls,) = ep.classes[label]
            original = shard[end - W + 1:end + 1].astype(np.int64)
            assert original[-1] == cls  # the label's token really was there
            assert row[-1] == MASK  # ... and the predicted (last) position is masked
            # Every occurrence of the class token in the window is masked, nothing else is touched.
            np.testing.assert_array_equal(row, np.where(original == cls, MASK, original))


def test_unfillable_and_stopword_classes_are_never_used(shard):
    builder = SMLMTBuilder(shard, episode_cfg(), MASK, EOS)
    keys = {k for (k,) in builder.index.keys}
    assert RARE not in keys and FREQUENT not in keys and EOS not in keys and MASK not in keys
    used = set()
    for seed in range(50):
        used |= {c for (c,) in builder.sample(torch.Generator().manual_seed(seed)).classes}
    assert RARE not in used and FREQUENT not in used and EOS not in used
    assert len(used) > 100  # classes are really drawn across the vocabulary


def test_episode_is_a_function_of_the_generator(shard):
    builder = SMLMTBuilder(shard, episode_cfg(), MASK, EOS)
    a = builder.sample(torch.Generator().manual_seed(7))
    b = SMLMTBuilder(shard, episode_cfg(), MASK, EOS).sample(torch.Generator().manual_seed(7))
    c = builder.sample(torch.Generator().manual_seed(8))
    assert a.classes == b.classes and torch.equal(a.support, b.support) and torch.equal(a.query, b.query)
    assert a.classes != c.classes


def test_occurrences_need_a_full_left_window(shard):
    builder = SMLMTBuilder(shard, episode_cfg(window=64), MASK, EOS)
    for seed in range(20):
        ep = builder.sample(torch.Generator().manual_seed(seed))
        assert min(ep.support_ends.min(), ep.query_ends.min()) >= 63


def test_too_few_classes_names_the_keys(shard):
    with pytest.raises(ValueError, match=r"meta\.episode\.n_way=500"):
        SMLMTBuilder(shard, episode_cfg(n_way=500), MASK, EOS)


def test_word_episodes_mask_whole_multi_piece_words(tokenized):
    tok, shard, ids = tokenized
    cfg = episode_cfg(unit="word", n_way=8, k_shot=2, q_query=2, window=24, min_count=4, max_frequency=0.01)
    builder = SMLMTBuilder(shard, cfg, ids["mask"], ids["eos"], tokenizer_path=tok)
    assert sum(len(k) > 1 for k in builder.index.keys) > 50  # multi-piece words are classes
    from metapretrain.data.tokenizer import load_tokenizer

    t = load_tokenizer(tok)
    seen_multi = False
    for seed in range(10):
        ep = builder.sample(torch.Generator().manual_seed(seed))
        for row, label, end in zip(ep.support.numpy(), ep.support_labels.tolist(), ep.support_ends.tolist(), strict=True):
            pieces = ep.classes[label]
            n = len(pieces)
            seen_multi |= n > 1
            assert tuple(int(v) for v in shard[end - n + 1:end + 1]) == pieces
            assert (row[-n:] == ids["mask"]).all()
            word = t.decode(list(pieces))
            assert word.strip().isalpha() or not word.strip().isascii()  # a word, not punctuation
            # The word is whole: the next piece does not continue it.
            nxt = t.id_to_token(int(shard[end + 1])) if end + 1 < len(shard) else "Ġ"
            assert not (nxt.isalpha() and nxt.isascii()) or nxt.startswith("Ġ")
    assert seen_multi


@pytest.mark.parametrize("n, budget", [(100, 1000), (1000, 1000), (10_000_000, 3_500_000), (3_000_001, 3_000_000),
                                       (5_000_000, 1_000_000), (7_777_777, 2_500_000)])
def test_index_spans_are_disjoint_evenly_spaced_and_cover_the_budget(n, budget):
    spans = index_spans(n, budget)
    if n <= budget:
        assert spans == [(0, n)]
        return
    lengths = {b - a for a, b in spans}
    assert len(lengths) == 1 and budget - len(spans) < sum(b - a for a, b in spans) <= budget
    assert spans[0][0] == 0 and spans[-1][1] == n if len(spans) > 1 else spans == [(0, budget)]
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(spans, spans[1:], strict=False))
    gaps = {a2 - a1 for (a1, _), (a2, _) in zip(spans, spans[1:], strict=False)}
    assert max(gaps, default=0) - min(gaps, default=0) <= 1


def test_an_index_over_spans_samples_and_masks_inside_them(shard, monkeypatch):
    """A shard larger than meta.episode.index_tokens: windows lie inside indexed spans, every occurrence of
    the class in a window is masked, and frequencies count the indexed tokens only."""
    monkeypatch.setattr(smlmt, "SPAN_TOKENS", 2000)
    cfg = episode_cfg(index_tokens=10_000, min_count=4)
    builder = SMLMTBuilder(shard, cfg, MASK, EOS)
    spans = index_spans(len(shard), 10_000)
    assert len(spans) == 5 and builder.index.n_indexed == 10_000
    W = cfg.window
    for seed in range(20):
        ep = builder.sample(torch.Generator().manual_seed(seed))
        for x, y, ends in ((ep.support, ep.support_labels, ep.support_ends), (ep.query, ep.query_labels, ep.query_ends)):
            for row, label, end in zip(x.numpy(), y.tolist(), ends.tolist(), strict=True):
                assert any(a <= end - W + 1 and end < b for a, b in spans)  # the whole window is indexed
                (cls,) = ep.classes[label]
                original = shard[end - W + 1:end + 1].astype(np.int64)
                assert original[-1] == cls
                np.testing.assert_array_equal(row, np.where(original == cls, MASK, original))
    # The stop word is ~20% of the indexed tokens too; eligibility is judged on those tokens.
    assert FREQUENT not in {k for (k,) in builder.index.keys}
    with pytest.raises(ValueError, match=r"in the 10000 indexed tokens.*meta\.episode\.index_tokens"):
        SMLMTBuilder(shard, episode_cfg(index_tokens=10_000, n_way=300), MASK, EOS)


def test_word_index_over_spans_keeps_words_inside_them(tokenized, monkeypatch):
    tok, shard, ids = tokenized
    monkeypatch.setattr(smlmt, "SPAN_TOKENS", 5000)
    budget = len(shard) // 2
    cfg = episode_cfg(unit="word", n_way=8, k_shot=2, q_query=2, window=24, min_count=4, max_frequency=0.01,
                      index_tokens=budget)
    builder = SMLMTBuilder(shard, cfg, ids["mask"], ids["eos"], tokenizer_path=tok)
    spans = index_spans(len(shard), budget)
    assert len(spans) > 1
    index = builder.index
    for c in range(len(index)):
        n = len(index.keys[c])
        for end in index.occurrences(c):
            assert any(a <= end - n + 1 and end < b for a, b in spans)  # a word never crosses a span edge
            assert tuple(int(v) for v in shard[end - n + 1:end + 1]) == index.keys[c]
        assert all(any(a <= e - 23 and e < b for a, b in spans) for e in index.samplable(c))
