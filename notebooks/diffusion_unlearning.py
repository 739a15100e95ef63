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
#       remap_integrity_ratio: '>1.15'
#       remap_retain_accuracy_gap: <0.03
#     full:
#       denoiser_hidden: 256
#       denoiser_steps: 6000
#       samples_per_class: 100
#     quick_seconds: 90
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
# <= 0.05) and look the same to a digits classifier (retain-class accuracy within 0.03) and to a
# Frechet distance in the classifier's features (ratio within [0.6, 1.6]), yet the integrity
# distance of remap is at least 15% larger: fine-tuning on data moves the samples of the classes
# it should keep, distillation much less. Distances are read against the **noise floor** (the
# original model, two independent noises).

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
# accuracy and the Frechet distance (to real digits, in classifier features) are computed on
# samples of the other nine classes; integrity compares each method's retain-class samples with
# the original model's, drawn from the same noise.

# %%
comparison = recipes.diffusion_methods(ds, forget_class, num_steps=unlearn_steps,
                                       samples_per_class=samples_per_class, sample_steps=sample_steps, seed=seed)
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
