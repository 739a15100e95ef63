# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: workbench,kernelspec,jupytext
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   workbench:
#     claims:
#       lds_ekfac:
#         full: '>0.1'
#       overlap_gain_ekfac: '>0.035'
#       top_share_ekfac: '>0.155'
#     controls:
#       lds_random: lds_ekfac
#       overlap_gain_random: overlap_gain_ekfac
#       top_share_random: top_share_ekfac
#     full:
#       compared:
#       - kfac
#       - arnoldi
#       - logra
#       - trak
#       - grad_dot
#       d_model: 24
#       n_query: 32
#       n_train: 256
#       num_subsets: 48
#       seq_len: 32
#       steps: 100
#     quick_seconds: 45
#     title: Influence on a transformer - EK-FAC on a char GPT, against retraining
# ---

# %% [markdown]
# # Which training text does a prediction come from?
#
# Grosse et al. (2023, "Studying large language model generalization with influence functions")
# made influence functions work on language models with **EK-FAC**: the curvature of every
# linear layer (attention projections and MLPs) is approximated by a Kronecker product of the
# layer's input and output-gradient covariances, whose eigenvalues are then refitted to the data.
# It costs a few passes over the data instead of an iterative solve per query. This paper runs it
# (`influence.make("ekfac", ...)`, with kronfluence's defaults: the true Fisher from one sampled
# label per token, damping 0.1 x each layer's mean eigenvalue) on a character-level GPT
# (`workbench.gpt`) trained on text that ships with Python.
#
# **What you will see.** The model and a completion of a held-out prompt; the training
# sequences with the largest influence on a query, as text; how concentrated influence is; and
# each estimator's linear datamodeling score (LDS) against retraining on random halves.
#
# **What is claimed, and what must fail it.** Two of Grosse et al.'s observations:
# - *Influence is concentrated*: a few training sequences carry much of it. Claimed: the top 5%
#   of training sequences (by |score|) hold more than 15.5% of the total absolute EK-FAC
#   influence, averaged over queries (18-21% on seeds 0-2). Control: random scores hold 13.6-14.0%.
# - *A small model's most influential sequences share the query's surface form.* Claimed: the 5
#   most influential sequences share more of the query's character bigrams (Jaccard) than an
#   average training sequence, by more than 0.035 (0.062-0.102 on seeds 0-2). Control: random
#   scores (0.003-0.006).
# - The LDS is claimed on the full profile only (EK-FAC above 0.1, random scores must fail): the
#   quick profile retrains 16 models for 8 queries, where the LDS of random scores itself ranged
#   from -0.18 to 0.14 on seeds 0-2, so its quick value is shown but not claimed.
#
# Sign convention of `workbench.influence`: **score > 0 means removing the training sequence
# would raise the query's loss**: it helped the prediction.

# %% tags=["parameters"]
n_train: int = 128  # training windows drawn from the corpus's training split; in [2, 10000]
n_query: int = 8  # held-out query windows; in [1, 1000]
seq_len: int = 24  # characters per window; in [2, 256]
d_model: int = 16  # width of the GPT's residual stream (2 heads, 1 block); in [2, 512]
steps: int = 80  # full-batch Adam steps (the model and every retraining); in [1, inf)
learning_rate: float = 0.01  # Adam's step size; in (0, inf)
num_subsets: int = 16  # M, models retrained on random halves for the LDS; in [2, inf)
compared: list[str] = ["kfac", "grad_dot"]  # estimators shown next to EK-FAC (the full profile adds the costlier arnoldi, logra and trak); in {kfac, arnoldi, logra, trak, grad_dot}
arnoldi_k: int = 50  # Arnoldi: top-k eigenpairs of the Gauss-Newton matrix kept; in [1, inf)
top_k: int = 5  # influential sequences shown and used for the overlap statistic; in [1, inf)
seed: int = 0  # the windows drawn, the initialisation, the subsets, the estimators' keys; in [0, inf)
profile: str = "quick"  # quick (CI-sized) or full; in {quick, full}
interactive: bool = False  # unused: this paper has no panel yet

# %%
import jax
import matplotlib.pyplot as plt
import numpy as np

import workbench
from workbench import data, gpt, plots
from workbench.experiments import transformer_influence as ti
from workbench.experiments.influence_claims import random_scores
from workbench.influence import validation
from workbench.run import papers

jax.config.update("jax_enable_x64", True)
key_subsets, key_estimators, key_random, key_sample = jax.random.split(jax.random.key(seed), 4)

# %% [markdown]
# ## The model
# A one-block GPT (token and position embeddings, causal self-attention, MLP, layer norms) of
# width `d_model`, trained with full-batch Adam on `n_train` windows of the standard library's
# sources and docstrings (`data.load_corpus`). The queries are windows of the held-out tenth of
# every document. The unigram entropy is the best loss of a model that ignores the context.

# %%
problem = ti.char_gpt_problem(gpt.GPTConfig(1, seq_len, d_model=d_model, num_heads=2, num_layers=1), n_train,
                              n_query, seq_len, steps=steps, learning_rate=learning_rate, seed=seed)
num_params = sum(a.size for a in jax.tree.leaves(problem.params))
print(f"{num_params:,} parameters; loss {problem.train_loss:.3f} on its training windows, {problem.query_loss:.3f} "
      f"on the queries, unigram entropy {problem.unigram_entropy:.3f}")
prompt = np.asarray(problem.query.x[0][: seq_len // 2])
completion = gpt.generate(problem.model, problem.params, prompt, key_sample, seq_len // 2, temperature=0.5)
print(f"prompt {data.decode(prompt, problem.vocab)!r} -> completion {data.decode(completion, problem.vocab)!r}")
workbench.record(num_params=num_params, train_loss=problem.train_loss, query_loss=problem.query_loss,
                 unigram_entropy=problem.unigram_entropy)

# %% [markdown]
# ## EK-FAC influence, and the sequences it points at
# EK-FAC fits its factors in two passes over the training windows (the covariances, then the
# refitted eigenvalues) and scores every query against every training window. Below, one query
# and its most helpful training windows (largest positive score) and the most harmful one. Look
# for shared words, indentation and punctuation: at this size, influence follows surface form.

# %%
ekfac = ti.estimator_builders(problem, key_estimators, arnoldi_k=arnoldi_k)["ekfac"]()
print(f"layers covered: {len(ekfac.info['layers'])}; left out (as in Grosse et al.): "
      f"{', '.join(name for name, _ in ekfac.info['left_out'])}")
ekfac_scores = np.asarray(ekfac.scores(problem.query))
for line in ti.describe_top(ekfac_scores, problem, query=0, top_k=top_k):
    print(line)

# %% [markdown]
# ## How concentrated is influence?
# Per query, the training windows sorted by |score| and the cumulative share of the total;
# random scores are close to the diagonal. The overlap statistic compares the top `top_k`
# windows' character bigrams with the query's.

# %%
builders = ti.estimator_builders(problem, key_estimators, arnoldi_k=arnoldi_k)
scores = {"ekfac": ekfac_scores}
scores.update({name: np.asarray(builders[name]().scores(problem.query)) for name in compared})
scores["random"] = random_scores(key_random, n_query, n_train)
for name, s in scores.items():
    workbench.record(**{f"top_share_{name}": float(ti.top_share(s, 0.05).mean()),
                        f"overlap_gain_{name}": float(ti.bigram_overlap_gain(s, problem.query.x, problem.train.x,
                                                                              top_k).mean())})
fig = plots.influence.influence_concentration(scores)
workbench.save_figure(fig, "concentration")
plt.show()

# %% [markdown]
# ## Against retraining: the LDS
# The same training run (same initialisation, optimizer and steps) repeated on `num_subsets`
# random halves of the training windows; for each query, the halves are ranked by their summed
# scores and by the loss of the model retrained on them, and the LDS is the Spearman correlation
# of the two rankings averaged over queries. Arnoldi (top `arnoldi_k` eigenpairs of the whole
# model's Gauss-Newton matrix) costs the most here; K-FAC is EK-FAC without the refitted
# eigenvalues; LoGra (Choe et al. 2024) projects each layer's gradient to 8 x 8 dimensions and
# inverts its covariance there; TRAK works in a random projection; `grad_dot` drops the curvature.
# `compared` picks which of them run: the quick profile keeps the two cheapest, the full one all.
# On the 1M-parameter GPT (`benchmarks/bench_lds_transformer.py`, 32 retrainings, 3 seeds) the
# order was EK-FAC 0.27 > K-FAC 0.25 ~ Arnoldi 0.24 > LoGra 0.22 > grad_dot 0.18 > TRAK 0.14.

# %%
truth = ti.lds_truth(problem, num_subsets, key_subsets)
lds = {name: validation.lds(s, truth).mean for name, s in scores.items()}
print(validation.markdown_table([{"estimator": name, "LDS": value} for name, value in lds.items()]))
workbench.record(**{f"lds_{name}": value for name, value in lds.items()}, models_retrained=num_subsets)
fig = plots.influence.lds_bars(lds, title=f"LDS over {num_subsets} retrainings, {n_query} queries")
workbench.save_figure(fig, "lds")
plt.show()

# %% [markdown]
# ## At scale
# `benchmarks/bench_scaling.py` runs the same operations on the GPT family from 1M to 30M
# parameters on two CPU cores: top eigenpairs, SLQ, per-example sketching, and the EK-FAC fit
# and queries, each against its floor (see `benchmarks/results/scaling.md`).

# %%
figure = papers.repo_root() / "benchmarks" / "results" / "scaling.png"
if figure.exists():
    from IPython.display import Image, display

    display(Image(filename=str(figure)))
