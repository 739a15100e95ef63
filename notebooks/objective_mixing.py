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
#       b_gain: '>0.05'
#       exp3s_b_cost:
#         full: <0.3
#       exp3s_late_share:
#         full: '>0.7'
#       full_b_gain:
#         full: '>0.1'
#       translation_gain_over_misaligned:
#         full: '>0.05'
#     controls:
#       control_no_translation_b_gain: b_gain
#       control_no_translation_full_b_gain: full_b_gain
#       control_target_reward_late_share: exp3s_late_share
#       control_training_batch_b_cost: exp3s_b_cost
#       control_unmasked_translation_gain_over_misaligned: translation_gain_over_misaligned
#     full:
#       bandits: true
#       batch_size: 16
#       controls: true
#       num_seeds: 2
#       static_ratios:
#       - 0.05
#       - 0.1
#       - 0.25
#       - 0.5
#       steps: 1500
#     quick_seconds: 35
#     summary: A bandit learns how much translation data to mix into language-model
#       training
#     title: Learning the mix of objectives (Schioppa, Garcia and Firat 2023; Graves
#       et al. 2017)
# ---

# %% [markdown]
# # Learning the mix of objectives: language modelling plus translation
#
# **The paper.** Schioppa, Garcia and Firat (2023), *Cross-lingual supervision improves large
# language models pre-training*: adding supervised machine translation to the self-supervised
# language-modelling mix of pre-training helps, most for under-represented languages; since a grid
# search over the mixing ratio costs a pre-training run per ratio, they **learn the ratio during
# training** with a bandit over the two objectives (automated curriculum learning, Graves et al.
# 2017), including a variant that draws objectives in proportion to a moving average of their
# rewards, so as not to lock onto one. Only the abstract and secondary summaries can be read
# here: the bandit's exact update and reward normalisation below are our reading, and we say so
# where it matters.
#
# **The miniature.** Language A is English (the docstrings of Python's standard library);
# language B is our construction: A's words through two substitution alphabets chosen by the
# previous letter, with adjacent words swapped. B is under-represented: 5% of the
# language-modelling stream. The translation objective is A -> B pairs, several packed per
# sequence, scored on the target side only. A 63k-parameter char transformer trains on one
# objective per step, drawn with a static probability or by a bandit.
#
# **Claims.** (1) A little translation in the mix lowers the held-out loss of the
# under-represented language B against language modelling alone, by more than seed-to-seed
# noise (the control: a second run without translation). (2, full profile) Aligned pairs scored
# on their targets teach translation: their held-out translation loss is lower than with
# misaligned pairs (the same B text), while the same pairs scored on every position (no target
# masking, the control) do not beat misaligned pairs. (3, full profile) What a bandit rewarded by
# learning progress learns here: Exp3.S with the self-prediction reward drifts to translation,
# far above the best static share (rewarding B's own loss instead, the control, does not drift
# as far), and rewarding the batch just trained on (the control) costs B at least 0.3 nats
# against language modelling alone, while the self-prediction reward costs less. The last
# section says what the miniature does and does not reproduce.

# %% tags=["parameters"]
steps: int = 800  # optimizer steps (Adam, warm-up then cosine to a tenth); in [1, inf)
batch_size: int = 8  # sequences per step; in [1, inf)
seq_len: int = 64  # characters per sequence; in [2, inf)
d_model: int = 48  # transformer width (2 blocks, 4 heads); in [4, inf)
peak_lr: float = 0.003  # Adam's peak learning rate; in (0, inf)
b_share: float = 0.05  # share of language B in the language-modelling stream; in [0, 1]
static_ratios: list[float] = [0.1]  # translation shares of the static mixtures; in [0, 1]
controls: bool = False  # also run the unmasked and misaligned-pair controls
bandits: bool = False  # also learn the ratio (Exp3.S and the moving-average bandit)
eta: float = 0.02  # Exp3.S step size; in (0, inf)
num_seeds: int = 1  # seeds per setting; in [1, inf)
shots: int = 2  # demonstrations in the k-shot probes; in [1, inf)
seed: int = 0  # seeds are seed * num_seeds, ..., seed * num_seeds + num_seeds - 1; in [0, inf)
profile: str = "quick"  # quick (CI-sized) or full (paper-sized); in {quick, full}
interactive: bool = False  # show the panel: static share or bandit, eta

# %%
import functools

import matplotlib.pyplot as plt
import numpy as np

import workbench
from workbench.experiments import mixing as recipes
from workbench.experiments import mixing_languages as languages
from workbench.plots import mixing as mixing_plots

seeds = [seed * num_seeds + i for i in range(num_seeds)]
data = languages.corpus(seq_len=seq_len, b_share=b_share, seed=0)
src, tgt = data.probe_pairs[0]
print(f"A (English): {src!r}\nB (its translation): {tgt!r}")
print("a translation sequence (targets scored, ^):")
x, w = data.objectives.x[1, 0], data.objectives.weights[1, 0]
print(" " + languages.decode(x)[1:])
print(" " + "".join("^" if s else " " for s in np.asarray(w)[:-1]))
run = functools.partial(recipes.run, data, seeds=seeds, steps=steps, batch_size=batch_size, peak_lr=peak_lr,
                        d_model=d_model, eta=eta)

# %% [markdown]
# ## Static mixtures against language modelling alone
# Each setting trains from the same initialisation per seed; a static mixture draws translation
# with a fixed probability at every step. "no translation (2nd seed)" is language modelling
# alone from another seed: the noise a gain must exceed.

# %%
settings = {"language modelling only": recipes.Setting("static", 0.0)}
settings |= {f"static {r:g}": recipes.Setting("static", r) for r in static_ratios}
settings["no translation (2nd seed)"] = recipes.Setting("static", 0.0, seed_offset=1000)
results = run(settings)
rows = {name: recipes.summarise(r, data, shots) for name, r in results.items()}


def show_table(rows):
    print(f"{'setting':26s} {'share':>6s} {'loss A':>7s} {'loss B':>7s} {'transl.':>7s} {'0-shot':>6s} "
          f"{'k-shot':>6s} {'unseen 0':>8s} {'unseen k':>8s} {'induct.':>7s}")
    for name, row in rows.items():
        p = row.probes
        print(f"{name:26s} {row.share:6.2f} {row.loss_a:7.3f} {row.loss_b:7.3f} {row.loss_mt:7.3f} {p.zero_shot:6.3f} "
              f"{p.k_shot:6.3f} {p.unseen_zero_shot:8.3f} {p.unseen_k_shot:8.3f} {p.induction:7.3f}")


show_table(rows)
fig = mixing_plots.loss_curves({n: r for n, r in results.items() if "2nd seed" not in n}, data.eval_names)
workbench.save_figure(fig, "static_losses")
plt.show()
base = rows["language modelling only"]
best_static = min(static_ratios, key=lambda r: rows[f"static {r:g}"].loss_b)
best = rows[f"static {best_static:g}"]
b_gain = base.loss_b - best.loss_b
print(f"best static share {best_static:g}: B's loss {best.loss_b:.3f} against {base.loss_b:.3f} alone "
      f"(gain {b_gain:.3f}); without translation, another seed: {base.loss_b - rows['no translation (2nd seed)'].loss_b:+.3f}")

# %% [markdown]
# Read the columns as: the share of steps spent on translation; the held-out loss (nats per
# character) of language modelling on A and on B and of translation on its targets; next-character
# accuracy on held-out translations with no demonstration and with `shots` demonstrations, in the
# trained format ("src=tgt|") and in one never trained on ("src:tgt;"); and an induction score
# (accuracy on the second copy of a repeated random string minus the first). The translation
# share trades A for B: A's loss rises with it, while B's falls at small shares and rises again
# once translation crowds out language modelling.

# %% [markdown]
# ## Is it the supervision, or just more of B's text?
# Translation targets are B text, so a mix also shows the model more B. Two controls at the best
# static share: **unmasked**, the same pairs with the loss on every position (the model also
# models the English source), and **misaligned**, each source paired with the translation of
# another chunk (the same B text, no supervision).

# %%
control_rows = {}
if controls:
    for name, kw in {"unmasked": dict(target_only=False), "misaligned pairs": dict(aligned=False)}.items():
        variant = languages.corpus(seq_len=seq_len, b_share=b_share, seed=0, **kw)
        r = recipes.run(variant, {name: recipes.Setting("static", best_static)}, seeds, steps=steps,
                        batch_size=batch_size, peak_lr=peak_lr, d_model=d_model)[name]
        control_rows[name] = recipes.summarise(r, data, shots)
    show_table({f"static {best_static:g}": best, **control_rows})

# %% [markdown]
# ## Learning the ratio during training
# A bandit draws each step's objective and is rewarded by the loss reduction the step brought on
# a fresh batch of the same objective (Graves et al.'s self-prediction gain), rescaled by the
# 20th and 80th percentiles of recent rewards. **Exp3.S** is Graves et al.'s algorithm; the
# **moving average** is our reading of the variant the paper describes. Controls: Exp3.S
# rewarded on the batch it just trained on (it also rewards memorising that batch), and Exp3.S
# without importance weights.

# %%
bandit_results, bandit_rows = {}, {}
if bandits:
    bandit_settings = {
        "Exp3.S": recipes.Setting("exp3s", per_task=False),
        "moving average": recipes.Setting("moving_average", per_task=False),
        "Exp3.S, per-task rescaling": recipes.Setting("exp3s", per_task=True),
        "Exp3.S, training-batch reward": recipes.Setting("exp3s", reward="training_batch", per_task=False),
        "Exp3.S, no importance weights": recipes.Setting("exp3s", importance_weighted=False, per_task=False),
        "Exp3.S, rewarded by B's loss": recipes.Setting("exp3s", reward="target", per_task=False),
    }
    bandit_results = run(bandit_settings)
    bandit_rows = {name: recipes.summarise(r, data, shots) for name, r in bandit_results.items()}
    show_table({f"static {best_static:g}": best, **bandit_rows})
    fig = mixing_plots.learned_ratio({n: bandit_results[n] for n in ("Exp3.S", "moving average")}, static_ratios,
                                     best_static)
    workbench.save_figure(fig, "learned_ratio")
    plt.show()

# %%
fig = mixing_plots.probes({name: row.probes for name, row in {**rows, **bandit_rows}.items()})
workbench.save_figure(fig, "probes")
plt.show()

# %% [markdown]
# ## What the miniature reproduces, and what it does not
# Measured on the full profile, twice (seeds 0, 1 and seeds 2, 3;
# `benchmarks/results/claims_objective_mixing.md` has both tables and the quick seeds):
# - **Reproduced: translation in the mix helps the under-represented language.** At a static
#   share of 0.05-0.1, B's held-out loss falls by 0.13-0.20 nats against language modelling
#   alone (seed-to-seed noise: at most 0.02), while A's rises a little; at 0.5 the gain is gone.
# - **Not reproduced: that it is the supervision.** Misaligned pairs, the same B text without
#   the translation signal, lower B's loss as much: at this scale B gains from seeing more B, not
#   from the alignment with A. Aligned, target-scored pairs do teach translation (held-out
#   translation loss about 0.1 nats lower than misaligned; without target masking that advantage
#   disappears), but that skill does not transfer into B's language modelling here.
# - **Not reproduced: in-context learning.** Two demonstrations do not raise next-character
#   accuracy on a held-out translation in an unseen format (0.12 with and without at share 0.1),
#   and the induction score stays at zero: a 63k-parameter model trained for 1,500 steps forms no
#   induction heads, so the paper's in-context gains cannot show. In the trained format
#   demonstrations even lower accuracy once translation is learnt (0.66 to 0.56 for Exp3.S): the
#   query then sits at the end of the 64-character window, where packed training pairs, never
#   split across sequences, rarely put a target.
# - **The learned ratio drifts.** Every bandit rewarded by learning progress over-allocates
#   translation (0.67-0.90 of the last quarter's steps against a best static share of 0.1),
#   because translation is the objective whose loss falls fastest, and B's loss ends above
#   language modelling alone. The moving-average variant drifts less than Exp3.S (0.67 against
#   0.79-0.81), as the paper intends, but not enough; rescaling rewards per task makes it worse
#   (0.86-0.90), because a task's falling progress then looks like a negative reward; rewarding
#   B's own loss (Graves et al.'s target prediction gain) stays near one half (0.53-0.58), its
#   rewards too noisy to learn from in 1,500 steps. Dropping the importance weights drifts a
#   little less (0.68-0.71), which is not a virtue: the played task's rewards are simply not
#   amplified.

# %% [markdown]
# ## Headline numbers

# %%
workbench.record(
    seeds=seeds,
    best_static_share=best_static,
    table={name: {**row._replace(probes=None)._asdict(), "probes": row.probes._asdict()}
           for name, row in {**rows, **control_rows, **bandit_rows}.items()},
    b_gain=b_gain,
    control_no_translation_b_gain=base.loss_b - rows["no translation (2nd seed)"].loss_b,
    full_b_gain=b_gain if controls else None,
    control_no_translation_full_b_gain=(base.loss_b - rows["no translation (2nd seed)"].loss_b) if controls else None,
    unmasked_b_gain=base.loss_b - control_rows["unmasked"].loss_b if controls else None,
    masking_b_gain_per_seed=([u - m for u, m in zip(control_rows["unmasked"].loss_b_seeds, best.loss_b_seeds)]
                             if controls else None),
    translation_gain_over_misaligned=control_rows["misaligned pairs"].loss_mt - best.loss_mt if controls else None,
    control_unmasked_translation_gain_over_misaligned=(control_rows["misaligned pairs"].loss_mt
                                                       - control_rows["unmasked"].loss_mt) if controls else None,
    b_gain_over_misaligned=control_rows["misaligned pairs"].loss_b - best.loss_b if controls else None,
    exp3s_late_share=bandit_rows["Exp3.S"].late_share if bandits else None,
    control_target_reward_late_share=bandit_rows["Exp3.S, rewarded by B's loss"].late_share if bandits else None,
    exp3s_b_cost=bandit_rows["Exp3.S"].loss_b - base.loss_b if bandits else None,
    control_training_batch_b_cost=bandit_rows["Exp3.S, training-batch reward"].loss_b - base.loss_b if bandits else None,
    late_shares={name: row.late_share for name, row in bandit_rows.items()},
)

# %% [markdown]
# ## Explore
# With `interactive=True`: choose a static translation share or a bandit and train again on the
# first seed.

# %%
if interactive:
    from IPython.display import display

    from workbench.ui.mixing import mixing_panel

    explore = functools.partial(recipes.explore, data, seeds[:1], steps=steps, batch_size=batch_size,
                                peak_lr=peak_lr, d_model=d_model)
    panel = mixing_panel(explore, data.eval_names, ratio=best_static, eta=eta)
    display(panel.widget)
