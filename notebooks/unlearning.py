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
#       ascent_forgetting_settings: '>=1'
#       ascent_good_settings: <0.5
#       ascent_keeping_settings: '>=1'
#       klom_dmm_over_ascent: <1
#       klom_om_over_dmm: <1
#       ssd_forget_accuracy: <0.05
#       ssd_max_ratio_over_bound: <=1.0001
#       ssd_retain_gap: <0.01
#       ssd_selected_above_bound: <1e-12
#     controls:
#       control_ascent_retain_gap: ssd_retain_gap
#       control_diverging_keeping_settings: ascent_keeping_settings
#       control_klom_noop_over_ascent: klom_dmm_over_ascent
#       control_klom_noop_over_dmm: klom_om_over_dmm
#       control_noop_forget_accuracy: ssd_forget_accuracy
#       control_noop_forgetting_settings: ascent_forgetting_settings
#       control_retain_fisher_max_ratio_over_bound: ssd_max_ratio_over_bound
#       control_retain_fisher_selected_above_bound: ssd_selected_above_bound
#       control_ssd_good_settings: ascent_good_settings
#     full:
#       forget_kinds:
#       - random
#       - skewed
#       - class
#       methods:
#       - original
#       - retrain
#       - gradient_ascent
#       - neggrad_plus
#       - scrub
#       - ssd
#       - oracle_matching
#       - datamodel_matching
#       num_models: 64
#     quick_seconds: 100
#     title: Machine unlearning on digits - SSD, gradient ascent, SCRUB, datamodel matching,
#       judged by KLoM
# ---

# %% [markdown]
# # Machine unlearning on digits, judged against retrained oracles
#
# A model was trained on a data set; now some training examples (the *forget set*) must be
# removed, as if the model had never seen them. The gold standard is to retrain from scratch on
# the rest (the *retain set*): an **oracle**. Unlearning methods try to get there without
# retraining. We compare gradient ascent, NegGrad+, SCRUB, Selective Synaptic Dampening (SSD),
# oracle matching (fine-tune to the oracle's outputs: an upper bound, it needs the oracle) and
# datamodel matching (fine-tune to outputs *predicted* from the model itself with influence
# functions) on a 64-32-10 MLP on scikit-learn's 8x8 digits, forgetting a whole class, a random
# 5% and a class-skewed 5%.
#
# **Claims.** (1) SSD forgets a class (forget accuracy <= 0.05) with retain accuracy within 0.01
# of the retrained oracles, with |D| per-example gradients against one retraining's 300 x 128
# (`ssd_work_ratio`, reported: a count, not a finding); and its
# threshold alpha must lie below |D|/|D_f| to touch any weight (the largest Fisher ratio over the
# weights, computed, stays below that bound). (2) Gradient ascent has a cliff: over a grid of
# learning rates and step counts, some settings forget the class and others keep the retain
# accuracy, but none does both. (3) On a random forget set, the 95th percentile of KLoM on the
# forget points orders oracle matching < datamodel matching < gradient ascent / NegGrad+.
#
# **Controls.** Each claim names a broken or trivial variant that must fail it (`control_*` in
# the header): the untouched model does not forget the class; the gradient-ascent
# setting that forgets with the smallest retain damage misses SSD's retain gap; a selection
# against the retain set's Fisher instead of the full data's (a plausible bug) has no bound and
# selects weights above it; SSD's own grid, judged like the cliff, has settings that forget and
# keep (so "none does" is a finding about ascent, not about the criterion); a no-op unlearning
# forgets in no cell; ascent at learning rates that diverge keeps the retain set in no cell; and
# the untouched model put in place of oracle or datamodel matching loses the KLoM ordering.

# %% tags=["parameters"]
num_models: int = 16  # models per side (originals, oracles, unlearned) for KLoM, trained in one vmapped call; in [1, inf)
methods: list[str] = ["original", "retrain", "gradient_ascent", "neggrad_plus", "oracle_matching", "datamodel_matching"]  # rows of the KLoM table (the full profile adds scrub and ssd); in {original, retrain, gradient_ascent, neggrad_plus, scrub, ssd, oracle_matching, datamodel_matching}
forget_kinds: list[str] = ["random"]  # forget sets for the KLoM table: random, skewed (80% from classes 3 and 8), class; in {random, skewed, class}
ssd_alphas: list[float] = [1.0, 2.0, 5.0, 10.0, 20.0]  # SSD selection thresholds to sweep; in (0, inf)
ssd_lams: list[float] = [0.1, 1.0]  # SSD dampening strengths to sweep; in (0, inf)
ssd_alpha: float = 5.0  # the SSD setting the claim is checked at; in (0, inf)
ssd_lam: float = 0.1  # the SSD dampening the claim is checked at; in (0, inf)
cliff_learning_rates: list[float] = [0.01, 0.03, 0.1, 0.3, 1.0]  # gradient ascent learning rates (SGD); in (0, inf)
cliff_steps: list[int] = [10, 30, 100]  # gradient ascent step counts; in [1, inf)
cliff_control_learning_rates: list[float] = [100.0]  # learning rates too large for ascent (the cliff's diverging control); in (0, inf)
seed: int = 0  # data split, forget sets, initialisations and batch orders; in [0, inf)
profile: str = "quick"  # quick (CI-sized) or full (paper-sized); in {quick, full}
interactive: bool = False  # show the panel: method, forget set, strength -> accuracies vs oracle

# %%
import matplotlib.pyplot as plt

import workbench
from workbench.experiments import unlearning as recipes
from workbench.experiments import unlearning_sweeps as sweeps
from workbench.plots import unlearning as figures
from workbench.ui import unlearning as panels

setup = recipes.digits_setup(seed=seed)
print(f"{setup.train_data.y.shape[0]} training and {setup.test_data.y.shape[0]} held-out digits; "
      f"MLP 64-32-10 trained with Adam for {setup.num_steps} steps")

# %% [markdown]
# ## 1. SSD forgets a class, if alpha is below |D| / |D_f|
# SSD computes the diagonal Fisher information of every weight on the full training data (F_D)
# and on the forget set (F_f), and dampens the weights that matter much more for the forget set:
# where F_f > alpha F_D, the weight is multiplied by min(lambda F_D / F_f, 1). No training.
#
# **Why alpha must be below |D|/|D_f|.** The full data contains the forget set, so
# F_D = (|D_f| F_f + |D_r| F_r) / |D| >= (|D_f| / |D|) F_f. Hence F_f / F_D <= |D| / |D_f| for
# every weight, with equality only for weights the retain set does not use at all. For one digit
# class (about a tenth of the data) the bound is about 10: the SSD paper's alpha = 10 selects
# nothing here, and the package refuses it rather than return the model unchanged. Look at the
# right panel: the dampened fraction falls to zero at the red line. The fractions are read off
# the Fisher ratios F_f / F_D computed once (`unlearning.fisher_ratio`), so the zero above the
# line is measured, not assumed; the largest ratio (printed below the table) stays under the
# bound, while the same ratio taken against the retain set's Fisher alone (a plausible bug, the
# control) exceeds it several times over.

# %%
sweep = sweeps.ssd_sweep("class", alphas=ssd_alphas, lams=ssd_lams, seed=seed)
fig = figures.ssd_sweep(sweep, oracle_retain=sweep.oracle.retain_accuracy)
workbench.save_figure(fig, "ssd_sweep")
plt.show()
print(figures.ssd_table(sweep))

# %% [markdown]
# Read the table honestly: on seed 0, lambda = 1 (the paper's default) leaves a fifth or more of
# the class recognised at every alpha that selects anything, while on seed 1 it forgets the class
# at alpha = 5 too; lambda = 0.1 forgets it on every seed we ran. The right (alpha, lambda)
# depends on the data set and even the model, as users of SSD report. Held-out accuracy drops by about a
# tenth for every model that forgets a class: the forgotten class is a tenth of the held-out set.

# %% [markdown]
# ## 2. Gradient ascent's cliff
# Ascend the training loss on the forget class with SGD, over learning rates and step counts.
# Left: forget accuracy (want 0); right: retain accuracy (want it to stay at the oracle's
# 0.999). The settings that forget are the ones that wreck the retain set: the transition is
# a cliff between neighbouring cells, not a slope, so a setting tuned on one model does not
# transfer.

# %%
cliff = sweeps.ascent_cliff("class", learning_rates=cliff_learning_rates, steps=cliff_steps, seed=seed,
                            control_learning_rates=cliff_control_learning_rates)
fig = figures.cliff(cliff)
workbench.save_figure(fig, "ascent_cliff")
plt.show()
counts = sweeps.cliff_counts(cliff, sweep.oracle.retain_accuracy)
print(f"of {cliff.forget_accuracy.size} settings, {counts.forgetting} forget (<= 0.05), {counts.keeping} keep the retain "
      f"accuracy within 0.02 of the oracles', {counts.both} do both")

# %% [markdown]
# ## 3. KLoM against oracles, on random forget sets
# For each forget set we train `num_models` originals on all data and `num_models` oracles on the
# retain set, each from its own seed (one vmapped call each), unlearn every original with each
# method (one vmapped call per method) and compute, at every forget, retain and held-out point,
# the KL divergence between the unlearned models' and the oracles' distributions of the
# correct-class margin (KLoM; with tens of models we fit a normal to each side rather than
# histogramming, see `workbench.unlearning.metrics.klom_values`). "retrain" is a second,
# independent set of oracles: the value an exact method reaches with this many models. The
# datamodel scale of datamodel matching is fitted once on a *different* random forget set.
# MIA: AUC of telling forget from held-out points by their loss (0.5 = indistinguishable).

# %%
tables = {}
for kind in forget_kinds:
    tables[kind] = bench = recipes.benchmark(kind, num_models=num_models, methods=methods, seed=seed)
    print(figures.method_table(bench, kind), end="\n\n")
    fig = figures.method_bars(bench.rows, title=f"forget set: {kind}")
    workbench.save_figure(fig, f"methods_{kind}")
    plt.show()

# %% [markdown]
# What to look at: on the random forget set the original model is already close to the oracles
# on the retain and held-out points (the 5% changes little there) but not on the forget points,
# where it is more confident than a model that never saw them. Oracle matching comes closest to
# the oracles; datamodel matching, which predicts the oracle's outputs from the model alone, is
# next; gradient ascent and NegGrad+ either barely move the forget points or, with a larger
# step, damage everything (KLoM on retain and held-out points explodes). In the full profile's
# table, SSD, tuned for class forgetting, damages a random forget set's model (KLoM95 on retain
# points 88 on seed 0) and SCRUB barely moves it. Times (reported, never claimed) are per model,
# from one warm vmapped call after the call that compiled; datamodel matching's includes its
# influence estimator (Arnoldi, k=30) and its matching step: at this toy scale retraining a
# 2.4k-parameter MLP takes tens of milliseconds, so the influence estimator, not retraining, is
# the expensive part.
#
# **Two numbers that look off, and why.** (a) On some seeds datamodel matching leaves the
# *retain* points further from the oracles than the untouched model (KLoM95 2.9 against 1.07 on
# seed 0; 0.56 against 0.56 on seed 1). Oracle matching does so too, less (1.12 and 0.87): the
# matching fine-tunes every weight to outputs at the forget set and only 256 of the ~1300 retain
# points, and the other retain points drift. Datamodel matching's retain targets are the model's
# own outputs plus the predicted change times the calibrated scale (6.2 on seed 0, 3.2 on seed 1):
# the scale is fitted on the forget points' change, the largest one, and multiplies the Arnoldi
# estimate's error at the retain points too; its retain KLoM follows the scale. The claims are on
# the forget points, the quantity the paper's KLoM ordering is about. (b) NegGrad+ barely moves
# the forget KLoM (3.2 against the untouched 4.0 on seed 0): its retain weight 0.9 and 100 steps
# keep it where it does not break the model, and a random 5% looks like the retain set, so the
# retain term re-fits much of what the ascent term removes; stronger settings wreck the model
# (gradient ascent's row, and the cliff). The ratio claim is against the better of the two.
#
# **What the quick profile does not show.** The quick table leaves out SCRUB and SSD (no claim
# rests on them; they cost a tenth of the run). The full profile adds them, a class-skewed 5% (80% of it
# from digits 3 and 8) and a whole class. In our run with 16 models per side, on the
# class-skewed set NegGrad+ (KLoM95 on forget points 1.5) beat datamodel matching (2.0): the
# ordering claimed above is for random forget sets, where the datamodel scale is calibrated (on
# another random set). SCRUB at these settings barely moves a random forget set (its max steps
# are too weak for examples that look like the retain set), and gradient ascent at one setting
# either does nothing or breaks the model, as the cliff shows.

# %% [markdown]
# ## Explore
# With `interactive=True`: choose a method, a forget set and a strength (learning rate, or alpha
# for SSD) and compare the accuracies with the oracles'.

# %%
if interactive:
    panel = panels.unlearning_panel(sweeps.explore)
    display(panel.widget)  # noqa: F821 (IPython builtin)

# %% [markdown]
# ## Headline numbers

# %%
headline = sweeps.headline(sweep, cliff, tables["random"], ssd_alpha, ssd_lam)
workbench.record(
    **headline._asdict(),
    tables={kind: [r._asdict() for r in b.rows] for kind, b in tables.items()},
    datamodel_scale={kind: b.datamodel_scale for kind, b in tables.items()},
)
