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
#       auc_logistic_exact: '>0.95'
#       auc_mlp_exact: '>0.95'
#       lds_logistic_arnoldi: '>0.85'
#       lds_logistic_exact: '>0.85'
#       lds_logistic_grad_dot: <0.8
#       lds_mlp_exact: '>0.75'
#     full:
#       hidden: 32
#       n_test: 200
#       n_train: 1347
#       num_subsets: 100
#     quick_seconds: 90
#     title: Which influence estimator to trust - LDS and mislabel detection
# ---

# %% [markdown]
# # Which influence estimator to trust?
#
# Two standard tests of training data attribution, each against real retraining:
#
# - **Linear datamodeling score** (LDS, Park et al. 2023, TRAK): train M models on random halves
#   of the training set; for each test point, rank the models by the summed attribution scores of
#   their training halves and by their actual test loss; the Spearman correlation of the two
#   rankings, averaged over test points, is the LDS (1 = perfect).
# - **Mislabel detection** (Koh & Liang 2017): flip the labels of 10% of the training set, train,
#   and rank training examples by self-influence; flipped examples should come first (ROC AUC).
#
# **What you will see.** Both tables for each estimator on L2-regularised logistic regression
# (convex: the exact influence function should be nearly perfect) and on a small MLP (non-convex:
# everything degrades, and the damping matters).

# %% tags=["parameters"]
n_train: int = 240  # training examples (a subset of digits); in [2, 1347]
n_test: int = 30  # test points; in [1, 450]
num_subsets: int = 12  # M, the number of models trained on random halves; in [2, inf)
l2: float = 0.01  # L2 regularisation (both models); in [0, inf)
hidden: int = 16  # hidden width of the MLP; in [1, inf)
mlp_steps: int = 200  # full-batch Adam steps for every MLP (full data and each half); in [1, inf)
mlp_lr: float = 0.01  # Adam step size; in (0, inf)
cg_num_iters: int = 100  # conjugate-gradient iterations per solve; in [1, inf)
lissa_num_iters: int = 150  # LiSSA: terms of the Neumann series; in [1, inf)
arnoldi_k: int = 50  # Arnoldi: top-k eigenpairs kept; in [1, inf)
trak_dim: int = 256  # TRAK: sketch dimension D (one model); in [1, inf)
trak_damping: float = 0.01  # TRAK: damping of the sketched Gauss-Newton matrix; in (0, inf)
flip_fraction: float = 0.1  # fraction of training labels flipped for mislabel detection; in (0, 1)
damping_margin: float = 0.01  # MLP: damping above -lambda_min of the Hessian; in (0, inf)
seed: int = 0  # data split, subsets, flips; in [0, inf)
profile: str = "quick"  # quick (CI-sized) or full (paper-sized); in {quick, full}
interactive: bool = False  # show the panel: estimator and model -> LDS per test point

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import optax
from flax import nnx

import workbench
from workbench import models, plots
from workbench.experiments.influence import (
    digits_subsets,
    estimator_builders,
    train_for_attribution,
)
from workbench.influence import validation

jax.config.update("jax_enable_x64", True)
train_set, test_set = digits_subsets(n_train, n_test, seed)
key_lds, key_flip = jax.random.split(jax.random.key(seed))
budgets = dict(cg_num_iters=cg_num_iters, lissa_num_iters=lissa_num_iters, arnoldi_k=arnoldi_k, trak_dim=trak_dim,
               trak_damping=trak_damping)  # shared by every call of `estimator_builders` below


# %% [markdown]
# ## Logistic regression
# The optimum by Newton's method; each half-data model is retrained (warm-started, inexact
# Newton) to a gradient norm below 1e-10. TracIn reads 10 checkpoints of a full-batch SGD run.
# The inverse-curvature estimators share the damping: `cg` (conjugate gradients, `cg_num_iters` per
# solve) and `lissa` (`lissa_num_iters` Neumann terms; short of convergence it acts like extra damping)
# approximate the exact solve; `arnoldi` keeps the top `arnoldi_k` curvature directions exactly and
# treats the rest as flat at the first discarded eigenvalue (its default), while `arnoldi_top_k`
# (the paper's estimator, `tail="none"`) drops them, and with them the flat directions where
# 1/lambda is largest: compare the two rows; `trak` works in a `trak_dim`-dimensional
# random sketch with a Gauss-Newton matrix of the classification margin.

# %%
lr_model = models.functional(models.LogisticRegression(64, 10, rngs=nnx.Rngs(seed), param_dtype=jnp.float64), l2=l2)
lr = train_for_attribution(lr_model, train_set, jax.random.key(seed), optimizer_name="sgd", learning_rate=1.0,
                           num_steps=200, fit_to_optimum=True)
lr_truth = validation.lds_ground_truth(lr_model.loss_fn, lr.params, train_set, key_lds, test_set, num_subsets=num_subsets)
lr_builders = estimator_builders(lr_model, lr, train_set, jax.random.key(seed), **budgets)
lr_rows, _ = validation.compare(lr_builders, test_set, lds_truth=lr_truth)

# %% [markdown]
# ## MLP
# Non-convex: each model (the full-data one and every half) is trained the same way from the
# same initialisation, `mlp_steps` full-batch Adam steps; the exact influence function uses the
# Hessian at the full-data model plus a damping just above -lambda_min.

# %%
mlp_model = models.functional(models.MLP(64, [hidden], 10, rngs=nnx.Rngs(seed), param_dtype=jnp.float64), l2=l2)
mlp = train_for_attribution(mlp_model, train_set, jax.random.key(seed), optimizer_name="adam", learning_rate=mlp_lr,
                            num_steps=mlp_steps, damping_margin=damping_margin)
print(f"MLP Hessian lambda_min {mlp.lambda_min:.2e}; damping {mlp.damping:.3g}")
mlp_truth = validation.lds_ground_truth(mlp_model.loss_fn, mlp_model.params, train_set, key_lds, test_set,
                                        num_subsets=num_subsets, method="optax", optimizer=optax.adam(mlp_lr),
                                        num_steps=mlp_steps)
mlp_builders = estimator_builders(mlp_model, mlp, train_set, jax.random.key(seed), **budgets)
mlp_rows, _ = validation.compare(mlp_builders, test_set, lds_truth=mlp_truth)

# %% [markdown]
# ## Mislabel detection
# Flip `flip_fraction` of the training labels, refit both models on the noisy labels, and score
# every training example by its self-influence.

# %%
noisy, flipped = validation.flip_labels(train_set, key_flip, flip_fraction, 10)
lr_noisy = train_for_attribution(lr_model, noisy, jax.random.key(seed), optimizer_name="sgd", learning_rate=1.0,
                                 num_steps=200, fit_to_optimum=True)
lr_auc = validation.mislabel_aucs(estimator_builders(lr_model, lr_noisy, noisy, jax.random.key(seed), cosine=False,
                                                     **budgets), flipped)
mlp_noisy = train_for_attribution(mlp_model, noisy, jax.random.key(seed), optimizer_name="adam",
                                  learning_rate=mlp_lr, num_steps=mlp_steps, damping_margin=damping_margin)
mlp_auc = validation.mislabel_aucs(estimator_builders(mlp_model, mlp_noisy, noisy, jax.random.key(seed), cosine=False,
                                                      **budgets), flipped)

# %% [markdown]
# ## The table
# LDS (higher is better; random scores give about 0) and mislabel AUC (0.5 = chance) per
# estimator and model, with the wall time of building the estimator and scoring (compile
# included, so only a rough guide; `benchmarks/bench_influence.py` separates compile and warm time).

# %%
table = validation.evaluation_table({"logistic": (lr_rows, lr_auc), "mlp": (mlp_rows, mlp_auc)})
print(validation.markdown_table(table))
workbench.record(**{f"lds_{t.model}_{t.estimator}": t.lds for t in table},
                 **{f"auc_{t.model}_{t.estimator}": t.mislabel_auc for t in table if t.estimator != "grad_cos"})

# %%
fig = plots.influence.lds_and_auc(table)
workbench.save_figure(fig, "lds_auc")
plt.show()

# %% [markdown]
# ## Explore
# With `interactive=True`: the LDS per test point of one estimator on either model, to see whether
# a low mean comes from a few test points or from all of them.

# %%
if interactive:
    from IPython.display import display

    from workbench.ui import influence as influence_ui

    panel = influence_ui.lds_panel({"logistic": (lr_builders, lr_truth), "mlp": (mlp_builders, mlp_truth)}, test_set)
    display(panel.widget)

