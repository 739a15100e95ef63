"""The statistics of the transformer influence paper (`experiments.transformer_influence`) against
brute-force references, and its problem's refusals."""

import itertools

import numpy as np
import pytest

from workbench import data, gpt
from workbench.experiments import transformer_influence as ti


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_top_share_is_the_top_fraction_of_absolute_influence(seed):
    rng = np.random.default_rng(seed)
    scores = rng.standard_t(2, size=(4, 37)) * rng.choice([-1, 1], size=(4, 37))
    for fraction in (0.01, 0.1, 0.5, 1.0):
        top = max(1, round(fraction * 37))
        expected = [sorted(np.abs(row), reverse=True)[:top] for row in scores]
        np.testing.assert_allclose(ti.top_share(scores, fraction),
                                   [sum(e) / np.abs(row).sum() for e, row in zip(expected, scores)], rtol=1e-12)
    assert np.all(ti.top_share(np.ones((2, 40)), 0.1) == 0.1)  # spread evenly: the fraction itself
    assert np.all(ti.top_share(np.eye(2, 40) * -3.0, 0.1) == 1.0)  # one sequence carries all, sign ignored
    with pytest.raises(ValueError, match="fraction must lie in"):
        ti.top_share(scores, 0.0)


def _jaccard(a, b):
    pairs = lambda t: {(int(x), int(y)) for x, y in itertools.pairwise(t)}
    return len(pairs(a) & pairs(b)) / len(pairs(a) | pairs(b))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bigram_overlap_gain_is_top_k_jaccard_minus_the_average(seed):
    rng = np.random.default_rng(seed)
    query, train = rng.integers(0, 6, size=(3, 9)), rng.integers(0, 6, size=(25, 9))
    scores = rng.normal(size=(3, 25))
    gains = ti.bigram_overlap_gain(scores, query, train, top_k=4)
    for q in range(3):
        jac = np.array([_jaccard(query[q], t) for t in train])
        np.testing.assert_allclose(gains[q], jac[np.argsort(-scores[q])[:4]].mean() - jac.mean(), rtol=1e-12)
    # scores that are the overlap itself rank the most similar first: the largest gain there is
    best = np.array([[_jaccard(q, t) for t in train] for q in query])
    assert np.all(ti.bigram_overlap_gain(best, query, train, 4) >= gains - 1e-12)
    assert np.all(ti.bigram_overlap_gain(-best, query, train, 4) < 0)  # the least similar first
    np.testing.assert_allclose(ti.bigram_overlap_gain(scores, query, train, 25), 0, atol=1e-12)  # all of them
    with pytest.raises(ValueError, match="top_k <= n_train"):
        ti.bigram_overlap_gain(scores, query, train, 26)
    with pytest.raises(ValueError, match="scores must be"):
        ti.bigram_overlap_gain(scores.T, query, train, 4)


@pytest.mark.standard_promotion  # flax's LayerNorm promotes float64 statistics with float32
def test_problem_refuses_what_the_corpus_cannot_give():
    rng = np.random.default_rng(0)
    corpus = data.text_corpus(["".join(rng.choice(list("abcdefghij"), 300)) for _ in range(2)], seq_len=8)
    config = gpt.GPTConfig(1, 8, d_model=8, num_heads=2, num_layers=1)
    with pytest.raises(ValueError, match="n_train=1000 is more than the"):
        ti.char_gpt_problem(config, 1000, 2, 8, steps=2, learning_rate=1e-2, seed=0, corpus=corpus)
    with pytest.raises(ValueError, match="not seq_len=16"):
        ti.char_gpt_problem(config, 8, 2, 16, steps=2, learning_rate=1e-2, seed=0, corpus=corpus)
    problem = ti.char_gpt_problem(config, 8, 2, 8, steps=3, learning_rate=1e-2, seed=0, corpus=corpus)
    assert problem.train.x.shape == (8, 8) and problem.query.x.shape == (2, 8)
    assert len(set(map(tuple, np.asarray(problem.train.x)))) == 8  # drawn without replacement
    assert np.isfinite(problem.train_loss) and problem.unigram_entropy > 0


def test_describe_top_lists_the_query_its_helpers_and_its_worst():
    vocab = "abc"
    problem = ti.CharGPTProblem(None, None, data.Dataset(np.array([[0, 0], [1, 1], [2, 2]]), None),
                                data.Dataset(np.array([[0, 1]]), None), vocab, None, 1, 0.0, 0.0, 0.0)
    lines = ti.describe_top(np.array([[0.5, -2.0, 1.5]]), problem, query=0, top_k=2)
    assert lines == ["query 0: 'ab'", "most helpful training windows:", "  +1.5  'cc'", "  +0.5  'aa'",
                     "most harmful:", "  -2  'bb'"]
