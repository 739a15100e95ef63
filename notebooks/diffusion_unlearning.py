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
#       distill_integrity_over_floor: <0.5
#       remap_distill_forget_accuracy: <0.05
#       remap_forget_accuracy: <0.05
#       remap_frechet_ratio:
#       - 0.6
#       - 1.6
#       remap_integrity_ratio: '>1.25'
#       remap_retain_margin_ratio:
#       - 0.9
#       - 1.1
#     controls:
#       control_ascent_frechet_ratio: remap_frechet_ratio
#       control_ascent_integrity_over_floor: distill_integrity_over_floor
#       control_ascent_retain_margin_ratio: remap_retain_margin_ratio
#       control_noop_distill_forget_accuracy: remap_distill_forget_accuracy
#       control_noop_forget_accuracy: remap_forget_accuracy
#       control_rerun_integrity_ratio: remap_integrity_ratio
#     full:
#       denoiser_hidden: 256
#       denoiser_steps: 6000
#       samples_per_class: 100
#     quick_seconds: 90
#     summary: Make a tiny diffusion model forget a digit, and measure what else it
#       lost
#     title: Model integrity when unlearning a class from a tiny digits diffusion model
# ---

# %% [markdown]
# # Model integrity when unlearning from a diffusion model
#
# Schioppa, Hoogeboom & Heek (2024) argue that the usual scores of unlearning in text-to-image
# models (FID, CLIPScore) miss the damage unlearning does to everything the model should keep,
# and propose an **integrity** metric: draw a sample from the original and from the unlearned
# model for the same prompt *and the same initial noise*, and measure how different the two
# images are. We reproduce the argument at toy scale: a class-conditional diffusion model on 8x8
# digits (an MLP that predicts the clean image, deterministic DDIM sampling), from which we
# unlearn the digit 0 by three methods:
#
# - **ascent**: gradient ascent on the 0s' denoising loss while descending on the other digits;
# - **remap**: fine-tune so that "draw a 0" draws a 1, while fine-tuning on the other digits' data;
# - **remap + distill**: the same remapping, but on the other digits the targets are the original
#   model's own predictions (distillation) instead of the data.
#
# **Claim.** Remap and remap + distill both forget the 0s (classifier accuracy on "0" samples
# <= 0.05) and look the same to a digits classifier (mean correct-class margin on retain-class
# samples within 10%) and to a Frechet distance in the classifier's features (ratio within
# [0.6, 1.6]), yet the integrity distance of remap is at least 25% larger: fine-tuning on
# data moves the samples of the classes it should keep, distillation much less. Distances are
# read against the **noise floor** (the original model, two independent noises).
#
# **Controls.** Each claim names a broken or trivial variant that must fail it: the untouched
# model does not forget; ascent (which breaks the model) differs from remap + distill in margin,
# Frechet distance and integrity; and a second run of remap + distill from another minibatch key
# is not 25% further from the original than the first, so the integrity gap is not run-to-run
# noise. That control set the threshold: at 15% (our first claim) a second run of remap +
# distill on seed 2 was 17% further than the first, so a 15% gap could be noise; measured over
# seeds 0-2, remap's ratio is 1.29-1.41 and a rerun's 1.00-1.17, so the margins either side of
# 1.25 are narrow (0.04 and 0.08), and the quick profile's finding is a modest one. The retain-class *accuracy* is reported but not claimed: every model but ascent reads
# 1.0 there, so it cannot tell a remapping that damaged the kept classes from one that did not;
# the margin is continuous where the accuracy saturates.

# %% tags=["parameters"]
denoiser_hidden: int = 256  # width of the denoiser's hidden layers; in [1, inf)
denoiser_steps: int = 2000  # training steps of the denoiser (Adam, batch 128); in [1, inf)
forget_class: int = 0  # the digit to unlearn; in [0, 9]
unlearn_steps: int = 300  # fine-tuning steps of each forgetting method; in [1, inf)
samples_per_class: int = 30  # DDIM samples per retain class for the metrics; in [1, inf)
sample_steps: int = 25  # DDIM steps; in [1, inf)
seed: int = 0  # initialisation, batches, noise; in [0, inf)
profile: str = "quick"  # quick (CI-sized) or full (paper-sized); in {quick, full}
interactive: bool = False  # show the panel: method, class, strength -> samples and integrity

# %%
import functools

import matplotlib.pyplot as plt

import workbench
from workbench.experiments import diffusion_unlearning as recipes
from workbench.plots import unlearning as figures
from workbench.ui import unlearning as panels

# %% [markdown]
# ## Train the diffusion model
# All 1797 digits, pixels scaled to [-1, 1]; a small MLP classifier (64-64-10) is trained beside
# it: its hidden layer is our offline "perceptual" feature space, its predictions our accuracy.

# %%
ds = recipes.diffusion_setup(hidden=denoiser_hidden, num_steps=denoiser_steps, seed=seed)
print(f"denoiser trained in {ds.seconds:.1f} s; loss {ds.losses[:50].mean():.2f} -> {ds.losses[-200:].mean():.2f}")

# %% [markdown]
# ## Unlearn the class by each method and judge it
# Forget accuracy: fraction of "draw a 0" samples the classifier still reads as 0. Retain
# accuracy, the classifier's mean correct-class margin and the Frechet distance (to real digits, in classifier features) are computed on
# samples of the other nine classes; integrity compares each method's retain-class samples with
# the original model's, drawn from the same noise.

# %%
comparison = recipes.diffusion_methods(ds, forget_class, num_steps=unlearn_steps,
                                       samples_per_class=samples_per_class, sample_steps=sample_steps, seed=seed,
                                       reruns=["remap_distill"])
print(figures.diffusion_table(comparison.rows))
fig = figures.integrity_bars(comparison.rows)
workbench.save_figure(fig, "integrity")
plt.show()

# %% [markdown]
# Ascent (at this strength) forgets the 0s by breaking the model: every sample turns into noise,
# which accuracy and Frechet distance see too. The two remapping methods are the interesting
# pair: by accuracy and Frechet distance they are the same, while their integrity distances differ.
# The original model's own row is zero integrity by construction, and its Frechet distance is the
# floor a perfect model would reach with this many samples.

# %% [markdown]
# ## Samples before and after
# One column per shared noise (two per class, classes 0 to 9); rows are models. The remapped
# models draw 1s where 0s were asked for; look for small changes in the other columns.

# %%
grid = recipes.sample_grid(ds, comparison.params, per_class=2, seed=seed, sample_steps=sample_steps)
fig = figures.sample_grid(grid.images, grid.names, title="same noise down each column")
workbench.save_figure(fig, "samples")
plt.show()

# %% [markdown]
# ## Explore
# With `interactive=True`: choose the method, the class, the strength of the forget term and the
# number of steps, and compare integrity, accuracy and the samples.

# %%
if interactive:
    panel = panels.diffusion_panel(functools.partial(recipes.explore_diffusion, ds))
    display(panel.widget)  # noqa: F821 (IPython builtin)

# %% [markdown]
# ## Headline numbers

# %%
headline = recipes.diffusion_headline(comparison.rows)
workbench.record(**headline._asdict(), denoiser_seconds=ds.seconds, table=[r._asdict() for r in comparison.rows])
