"""The char-GPT influence experiment of `notebooks/transformer_influence.py` (Grosse et al. 2023,
"Studying large language model generalization with influence functions", at workbench scale).

A `workbench.gpt.GPT` trained with full-batch Adam on windows of the standard-library corpus
(`data.load_corpus`); queries are held-out windows, the measure their loss. The ground truth of
the linear datamodeling score (LDS) is the same training run repeated from the same
initialisation on random halves of the training set. The statistics are the ones Grosse et al.
read off their influence scores: how concentrated influence is on a few sequences, and how much
the most influential sequences share the query's surface form (character bigrams here).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from flax import nnx

from workbench import data, gpt, influence, models, train
from workbench.core.numerics import check_positive_int
from workbench.influence import validation

PyTree = Any


class CharGPTProblem(NamedTuple):
    """A trained char GPT with its training windows, its query windows and how it was trained."""

    model: Any  # models.Functional, holding the initial params
    params: PyTree  # after training
    train: data.Dataset  # [n_train, seq_len] int32 windows, y = x shifted by one
    query: data.Dataset  # [n_query, seq_len] held-out windows
    vocab: str
    optimizer: optax.GradientTransformation
    steps: int
    train_loss: float
    query_loss: float
    unigram_entropy: float  # of the training targets: the best loss that ignores the context


def char_gpt_problem(config: gpt.GPTConfig | str, n_train: int, n_query: int, seq_len: int, *, steps: int,
                     learning_rate: float, seed: int, corpus: data.TextCorpus | None = None) -> CharGPTProblem:
    """Train a char GPT on `n_train` random training windows and pick `n_query` validation windows.

    Args:
        config: a `gpt.GPTConfig` (its vocab_size and seq_len are replaced by the corpus's) or a
            size name of `gpt.GPT_SIZES`.
        n_train: training windows drawn (without replacement) from the corpus's training split.
        n_query: query windows drawn from its validation split.
        seq_len: characters per window.
        steps: full-batch Adam steps.
        learning_rate: Adam's step size.
        seed: draws the windows and the initialisation.
        corpus: a `data.TextCorpus` of `seq_len` windows; None loads `data.load_corpus(seq_len)`.

    Returns:
        The `CharGPTProblem` (float32 parameters).

    Raises:
        ValueError: a count that is not a positive int or exceeds the corpus's windows, or a
            corpus of another window length.
    """
    n_train = check_positive_int("n_train", n_train, least=2)
    n_query = check_positive_int("n_query", n_query)
    steps = check_positive_int("steps", steps)
    corpus = data.load_corpus(seq_len=seq_len) if corpus is None else corpus
    if corpus.train.x.shape[1] != seq_len:
        raise ValueError(f"the corpus has windows of {corpus.train.x.shape[1]} characters, not seq_len={seq_len}")
    for name, n, split in (("n_train", n_train, corpus.train), ("n_query", n_query, corpus.validation)):
        if n > len(split):
            raise ValueError(f"{name}={n} is more than the {len(split)} windows of the corpus's split")
    k_train, k_query = jax.random.split(jax.random.key(seed))
    train_set = corpus.train.take(np.sort(np.asarray(jax.random.choice(k_train, len(corpus.train), (n_train,), replace=False))))
    query = corpus.validation.take(np.sort(np.asarray(jax.random.choice(k_query, len(corpus.validation), (n_query,), replace=False))))
    if isinstance(config, str):
        config = gpt.gpt_config(config, len(corpus.vocab), seq_len)
    config = gpt.check_config(config._replace(vocab_size=len(corpus.vocab), seq_len=seq_len))
    model = models.functional(gpt.GPT(config, rngs=nnx.Rngs(seed)), "cross_entropy")
    optimizer = optax.adam(learning_rate)
    result = train.train(model, model.params, train_set, None, optimizer=optimizer, num_steps=steps, progress=False)
    return CharGPTProblem(model, result.params, train_set, query, corpus.vocab, optimizer, steps,
                          float(model.loss_fn(result.params, train_set)), float(model.loss_fn(result.params, query)),
                          data.unigram_entropy(train_set.y))


def lds_truth(problem: CharGPTProblem, num_subsets: int, key: jax.Array) -> validation.LDSGroundTruth:
    """The LDS ground truth: the problem's training run (same initialisation, optimizer and full-batch
    steps) repeated on `num_subsets` random halves of its training windows, measured by the loss
    of each query window.

    Args:
        problem: the `CharGPTProblem`.
        num_subsets: M, the models retrained (>= 2).
        key: draws the halves.

    Returns:
        The `validation.LDSGroundTruth` (masks [M, n_train], outputs [M, n_query]).
    """
    return validation.lds_ground_truth(problem.model, problem.model.params, problem.train, key, problem.query,
                                       num_subsets=num_subsets, method="optax", optimizer=problem.optimizer,
                                       num_steps=problem.steps)


def estimator_builders(problem: CharGPTProblem, key: jax.Array, *, arnoldi_k: int) -> dict[str, Callable]:
    """Builders of the estimators the paper compares, each at its defaults but the key (and Arnoldi's k).

    "ekfac" and "kfac" are kronfluence's defaults (true Fisher, one sampled label per example,
    damping 0.1 x each layer's mean eigenvalue); "arnoldi" keeps the top `arnoldi_k` eigenpairs
    of the Gauss-Newton matrix of the whole model (no layer blocks, no Kronecker factors); "logra"
    projects each layer's gradient to k_in x k_out = 8 x 8 dimensions (Choe et al. 2024, as LogIX
    builds it) and inverts its damped covariance there; "trak" and "grad_dot" drop most of the
    curvature.

    Args:
        problem: the `CharGPTProblem`.
        key: the estimators' key (the sampled labels, the projections, Arnoldi's start).
        arnoldi_k: eigenpairs Arnoldi keeps.

    Returns:
        Estimator name -> a function of no argument that builds it.
    """
    fn, params, train_set = problem.model, problem.params, problem.train
    return {
        "ekfac": lambda: influence.make("ekfac", fn, params, train_set, key=key),
        "kfac": lambda: influence.make("kfac", fn, params, train_set, key=key),
        "arnoldi": lambda: influence.make("arnoldi", fn, params, train_set, key=key, k=arnoldi_k, kind="ggn"),
        "logra": lambda: influence.make("logra", fn, params, train_set, key=key),
        "trak": lambda: influence.make("trak", fn, params, train_set, key=key),
        "grad_dot": lambda: influence.make("grad_dot", fn, params, train_set),
    }


def top_share(scores, fraction: float) -> np.ndarray:
    """Per query, the share of the total absolute influence held by its top `fraction` of
    training sequences (by absolute score): about `fraction` when influence is spread evenly,
    near 1 when a few sequences carry it.

    Args:
        scores: [n_query, n_train] influence scores.
        fraction: in (0, 1]; at least one sequence is always counted.

    Returns:
        [n_query] shares in [fraction-ish, 1].
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    magnitude = np.abs(np.asarray(scores, dtype=np.float64))
    top = max(1, int(round(fraction * magnitude.shape[1])))
    ranked = -np.sort(-magnitude, axis=1)
    return ranked[:, :top].sum(axis=1) / ranked.sum(axis=1)


def _bigrams(ids) -> set:
    ids = np.asarray(ids).tolist()
    return set(zip(ids[:-1], ids[1:]))


def bigram_overlap_gain(scores, query_tokens, train_tokens, top_k: int) -> np.ndarray:
    """Per query, how much more its `top_k` most influential (most positive score) training
    sequences share its character bigrams than an average training sequence does: the mean
    Jaccard overlap of bigram sets over the top k, minus its mean over all training sequences.

    Grosse et al. report that a small model's most influential sequences share the query's
    tokens; an estimator that ranks at random gives about 0.

    Args:
        scores: [n_query, n_train] influence scores.
        query_tokens: [n_query, seq_len] token ids of the queries.
        train_tokens: [n_train, seq_len] token ids of the training sequences.
        top_k: training sequences taken per query (<= n_train).

    Returns:
        [n_query] overlap gains.
    """
    scores = np.asarray(scores)
    top_k = check_positive_int("top_k", top_k)
    if scores.shape != (len(query_tokens), len(train_tokens)) or top_k > scores.shape[1]:
        raise ValueError(f"scores must be [n_query={len(query_tokens)}, n_train={len(train_tokens)}] and top_k <= "
                         f"n_train, got {scores.shape} and top_k={top_k}")
    train_sets = [_bigrams(t) for t in np.asarray(train_tokens)]
    gains = []
    for row, q in zip(scores, np.asarray(query_tokens)):
        query_set = _bigrams(q)
        jaccard = np.array([len(query_set & s) / len(query_set | s) for s in train_sets])
        gains.append(jaccard[np.argsort(-row, kind="stable")[:top_k]].mean() - jaccard.mean())
    return np.asarray(gains)


def describe_top(scores, problem: CharGPTProblem, *, query: int, top_k: int) -> list[str]:
    """Lines of text: query `query`, its `top_k` most helpful training windows (largest score) and
    its most harmful one (smallest), each with its score, decoded with the problem's vocabulary.

    Args:
        scores: [n_query, n_train] influence scores.
        problem: the `CharGPTProblem` the scores are of.
        query: the query's row.
        top_k: helpful windows listed.

    Returns:
        The lines, without newlines.
    """
    row = np.asarray(scores)[query]
    show = lambda ids: repr(data.decode(np.asarray(ids), problem.vocab))
    lines = [f"query {query}: {show(problem.query.x[query])}", "most helpful training windows:"]
    lines += [f"  {row[i]:+.3g}  {show(problem.train.x[i])}" for i in np.argsort(-row, kind="stable")[:top_k]]
    worst = int(np.argmin(row))
    return [*lines, "most harmful:", f"  {row[worst]:+.3g}  {show(problem.train.x[worst])}"]
