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
#       barrier_sgd_minus_linear: '>0.03'
#       gap_growth_with_lr: '>0.03'
#       method_joint_margin: '>0'
#       method_recovery: '>0.02'
#       several_switches_replay_gain:
#         full: '>0.2'
#       text_method_gap:
#         full: '>0.05'
#     controls:
#       control_new_task_replay_gain: several_switches_replay_gain
#       control_no_replay_joint_margin: method_joint_margin
#       control_no_rewarm_barrier_sgd_minus_linear: barrier_sgd_minus_linear
#       control_no_rewarm_joint_margin: method_joint_margin
#       control_task_end_gap_growth_with_lr: gap_growth_with_lr
#       control_task_end_recovery: method_recovery
#       control_text_task_end_gap: text_method_gap
#     full:
#       curvature_points: 13
#       num_seeds: 8
#       rehearsal_steps: 300
#       rehearsal_tasks: 6
#       replay_sweep:
#       - 0.01
#       - 0.05
#       - 0.1
#       - 0.25
#       - 0.5
#       switch_tasks: 4
#       text_steps: 300
#     quick_seconds: 40
#     summary: What a network forgets and relearns when its training task switches
#     title: What happens at a task switch (De Lange et al. 2023, Ibrahim et al. 2024,
#       Gandhi et al. 2024)
# ---

# %% [markdown]
# # What happens at a task switch
#
# **Claims.** (1) Ibrahim et al. (2024), *Simple and scalable strategies to continually pre-train
# large language models*: when training moves on to new data, **re-warming and re-decaying** the
# learning rate and **replaying a little old data** end close to training on everything at once
# (joint training); without re-warming the new data is learnt slowly, without replay the old is
# forgotten. (2) De Lange, van de Ven and Tuytelaars (2023), *Continual evaluation for lifelong
# learning: identifying the stability gap*: right after a switch, accuracy on the old task
# **dips and then partly recovers**, even with replay; the dip is only visible when the model is
# evaluated at every step, not at task ends. (3) Follow-ups (Hess et al. 2023; Kamath et al.
# 2024) read the gap as an optimisation effect: the **straight line** between the weights at the
# switch and at the end keeps the old task's loss low, while SGD's own path climbs over a barrier.
# (4) Gandhi et al. (2024): revisiting old tasks with a probability that falls as a **power of
# the time since** they were learnt, compared here with uniform and exponential rehearsal at the
# same replay budget.
#
# You will see: digits, then the same digits rotated (a second task with the same labels), an
# MLP trained through both in one compiled loop per setting and seed, scored on both test sets
# after every step; the table of schedule x replay against joint training; the dip at the
# switch; the two paths; the curvature along the run; and the rehearsal comparison.

# %% tags=["parameters"]
task_kind: str = "rotated"  # rotated (0, 90, 180, 270 degrees) or permuted (pixels) digits; in {rotated, permuted}
num_tasks: int = 2  # tasks in the stream of the main table (rotated: at most 4); in [2, inf)
steps_per_task: int = 300  # SGD steps on each task; in [1, inf)
batch_size: int = 32  # examples per step; in [1, inf)
hidden_size: int = 64  # width of the tanh MLP; in [1, inf)
peak_lr: float = 0.3  # peak learning rate of every schedule (plain SGD); in (0, inf)
replay_fraction: float = 0.25  # share of each batch replayed from earlier tasks (the method); in [0, 1]
num_seeds: int = 3  # seeds per setting (each its own initialisation and batches); in [1, inf)
tolerance: float = 0.065  # "close to joint training": final accuracy within this on old and new tasks; in [0, 1]
replay_sweep: list[float] = []  # replay fractions for the sweep (empty: skip); in [0, 1]
switch_tasks: int = 0  # rotated-digits tasks for the several-switches table (< 3: skip); in [0, 4]
text_steps: int = 0  # steps per task of the text domain shift (prose, then code; 0: skip); in [0, inf)
rehearsal_tasks: int = 3  # permuted-digits tasks for the rehearsal comparison (< 3: skip); in [0, inf)
rehearsal_steps: int = 100  # steps per task there; in [1, inf)
rehearsal_fraction: float = 0.1  # the replay budget every rehearsal rule shares; in [0, 1]
curvature_points: int = 5  # snapshots along the run where the top Hessian eigenvalue is computed; in [1, inf)
seed: int = 0  # seeds are seed * num_seeds, ..., seed * num_seeds + num_seeds - 1; in [0, inf)
profile: str = "quick"  # quick (CI-sized) or full (paper-sized); in {quick, full}
interactive: bool = False  # show the panel: peak learning rate, replay share, schedule

# %%
import functools

import jax
import matplotlib.pyplot as plt
import numpy as np

import workbench
from workbench import continual
from workbench.experiments import continual as recipes
from workbench.plots import continual as continual_plots

seeds = [seed * num_seeds + i for i in range(num_seeds)]
stream = recipes.digits_stream(task_kind, num_tasks)
fn, params = recipes.mlp_params(seeds, hidden_size)
print(f"{num_tasks} tasks: {', '.join(stream.names)}; {stream.train_x.shape[1]} training and "
      f"{stream.test_x.shape[1]} test images each; seeds {seeds}")

# %% [markdown]
# ## Schedule x replay, against joint training
# Every setting runs `continual.train_stream`: plain SGD, batches of `batch_size`, a learning rate
# per step from `continual.task_schedule`, and a `replay_fraction` share of each batch drawn
# from earlier tasks. The settings:
# - **re-warm + replay** (the method): each task warms up to `peak_lr` over 10% of its steps and
#   decays (cosine) to a tenth of it; a quarter of each batch replays the old task;
# - **no re-warm + replay** (control): after the first task the rate stays at its minimum;
# - **re-warm, no replay** (control): the same schedule, no old data;
# - **joint**: every batch draws from all tasks, one warm-up and cosine over the whole run; the
#   reference;
# - **re-warm + replay** at half and twice the peak rate, for the gap's dependence on it.

# %%
settings = {
    "re-warm + replay": recipes.Setting("rewarm", replay_fraction),
    "no re-warm + replay": recipes.Setting("no_rewarm", replay_fraction),
    "re-warm, no replay": recipes.Setting("rewarm", 0.0),
    "joint": recipes.Setting("single", joint=True),
    "re-warm + replay, lr / 2": recipes.Setting("rewarm", replay_fraction, peak_scale=0.5),
    "re-warm + replay, lr x 2": recipes.Setting("rewarm", replay_fraction, peak_scale=2.0),
}
total = steps_per_task * num_tasks
warmup_steps = round(0.1 * steps_per_task)  # task_schedule's default warm-up: the peak rate after each switch
snapshot_steps = sorted({int(s) for s in np.linspace(0, total, curvature_points)}
                        | {k * steps_per_task + d for k in range(1, num_tasks) for d in (0, warmup_steps, 2 * warmup_steps)}
                        | {steps_per_task, 2 * steps_per_task})
results = recipes.compare(fn, params, stream, settings, seeds, peak_lr=peak_lr, steps_per_task=steps_per_task,
                          batch_size=batch_size, snapshot_steps=snapshot_steps)
lrs = {name: continual.task_schedule(s.schedule, peak_lr * s.peak_scale, steps_per_task, num_tasks)
       for name, s in settings.items()}
rows = {name: recipes.summarise(r, steps_per_task) for name, r in results.items()}
margins = {name: recipes.joint_margin(row, rows["joint"], tolerance) for name, row in rows.items()}
print(f"{'setting':28s} {'old':>6s} {'new':>6s} {'gap':>6s} {'recov':>6s} {'min-acc':>7s} {'wc-acc':>7s} "
      f"{'margin':>7s}")
for name, row in rows.items():
    print(f"{name:28s} {row.old_final:6.3f} {row.new_final:6.3f} {row.gap:6.3f} {row.recovery:6.3f} "
          f"{row.minimum_accuracy:7.3f} {row.worst_case_accuracy:7.3f} {margins[name]:7.3f}")

# %% [markdown]
# Read the columns as: final test accuracy on the old tasks (mean) and on the last task; the
# stability gap (accuracy at the switch minus the lowest point during the next task) and its
# recovery (end of the next task minus that lowest point); De Lange et al.'s minimum and
# worst-case accuracy; and the margin: `tolerance` minus the larger shortfall against joint
# training, positive when a setting ends within `tolerance` of joint training on both old and
# new tasks. The default tolerance, 6.5 points, lies halfway between the method's largest
# shortfall (4.2 points) and the no-re-warm control's smallest (8.6 points) over quick-profile
# seeds 0-5 (`benchmarks/results/claims_task_switch.md`). Among the settings at the common peak rate, re-warming with replay is the only
# sequential one with a positive margin: without re-warming the new task is learnt too slowly,
# without replay the old one is lost. At twice the peak rate it does better still (the new task
# is learnt further and the replayed old one recovers more), although its dip right after the
# switch is the deepest: the final numbers and the worst moment tell different stories, which is
# De Lange et al.'s point.

# %%
main = ["re-warm + replay", "no re-warm + replay", "re-warm, no replay", "joint"]
fig = continual_plots.stream_curves({n: results[n] for n in main}, lrs, steps_per_task, stream.names)
workbench.save_figure(fig, "accuracy_every_step")
plt.show()

# %% [markdown]
# ## The stability gap, and why evaluating at task ends misses it
# The old task's accuracy around the first switch: with replay it falls within a few dozen
# steps of the switch, while the re-warmed rate is high, and climbs back as the rate decays.
# The dashed points are what an evaluation only at task ends records: one point before the
# switch and one at the end, so the dip is invisible and the recovery is zero.

# %%
zoom = ["re-warm + replay, lr / 2", "re-warm + replay", "re-warm + replay, lr x 2"]
fig = continual_plots.zoom_on_switch({n: results[n] for n in zoom}, steps_per_task)
workbench.save_figure(fig, "gap_at_switch")
plt.show()
gap_growth = rows["re-warm + replay, lr x 2"].gap - rows["re-warm + replay, lr / 2"].gap
task_end_growth = rows["re-warm + replay, lr x 2"].task_end_gap - rows["re-warm + replay, lr / 2"].task_end_gap
print("gap at peak x 0.5, 1, 2: " + ", ".join(f"{rows[n].gap:.3f}" for n in zoom)
      + "; seen only at task ends: " + ", ".join(f"{rows[n].task_end_gap:.3f}" for n in zoom))

# %% [markdown]
# ## SGD's path against the straight line
# For the first seed of the method: the old task's test loss along SGD's path from the switch to
# the end of the next task, and along the straight line between the same two weights
# (`continual.linear_path`). The barrier is how far a path climbs above the higher of its two
# ends. The control is the same comparison on the run without the re-warm: if the barrier is an
# effect of the re-warmed rate, a run whose rate stays at its minimum climbs no higher along SGD's
# path than along the line.

# %%
path = recipes.linear_path_vs_sgd(fn, recipes.stack_seed(results["re-warm + replay"], 0), stream,
                                  steps_per_task=steps_per_task)
fig = continual_plots.paths(path)
workbench.save_figure(fig, "paths")
plt.show()
print(f"barrier along SGD's path {path.sgd_barrier:.3f}, along the straight line {path.linear_barrier:.3f}")
no_rewarm_path = recipes.linear_path_vs_sgd(fn, recipes.stack_seed(results["no re-warm + replay"], 0), stream,
                                            steps_per_task=steps_per_task)
print(f"without the re-warm (the control): SGD's path {no_rewarm_path.sgd_barrier:.3f}, "
      f"the straight line {no_rewarm_path.linear_barrier:.3f}")

# %% [markdown]
# ## Curvature along the run
# The top Hessian eigenvalue of the loss of the task being learnt (`spectrum.sharpness`, on 512
# of its training images) at `curvature_points` evenly spaced snapshots plus each switch and the
# end of its re-warm-up (where the rate peaks and the dip happens), and the learning rate times it. For
# gradient descent on a quadratic, a product above 2 diverges along the top direction; if the
# dip were an edge-of-stability effect, the product would sit near 2 at the dip. Here the
# sharpness of the new task is highest at the switch (the old task's solution sits on a steep
# part of the new loss), and the product peaks at the end of the re-warm-up: below 2 at the
# default peak rate, so that dip happens without crossing the threshold, and above 2 at twice
# the rate, whose dip is the deepest.

# %%
curves = {name: recipes.curvature_along_run(fn, recipes.stack_seed(results[name], 0), stream, lrs[name],
                                            jax.random.key(seed), steps_per_task=steps_per_task)
          for name in ("re-warm + replay", "re-warm + replay, lr x 2")}
fig = continual_plots.curvature(curves, steps_per_task, num_tasks)
workbench.save_figure(fig, "curvature")
plt.show()
for name, c in curves.items():
    print(f"{name}: lr x top eigenvalue at most {c.lr_times_top.max():.2f} (steps {c.steps.tolist()})")

# %% [markdown]
# ## Several switches
# With `switch_tasks` set (the full profile: the digits at 0, 90, 180 and 270 degrees): the same
# comparison over three switches, with Ibrahim et al.'s **infinite** schedule (warm up, cool down
# to half the peak during the first task, hold it through every later task, anneal at the very
# end) and re-warming with a warm-up-stable-decay shape next to cosine re-warming, and a larger
# replay share. The old-task column averages the old tasks. The claim: replay keeps the old tasks
# (`several_switches_replay_gain`, their accuracy with replay minus without, above 0.2); its
# control is the same difference on the newest task, which both runs have just trained on: replay
# must not help there, or the gain would be a longer or luckier run and not remembering.

# %%
switch_rows = {}
if switch_tasks >= 3:
    long_rotations = recipes.digits_stream("rotated", switch_tasks)
    switch_settings = {"re-warm + replay": recipes.Setting("rewarm", replay_fraction),
                       "re-warm + replay 50%": recipes.Setting("rewarm", 0.5),
                       "re-warm (WSD) + replay": recipes.Setting("rewarm_wsd", replay_fraction),
                       "infinite + replay": recipes.Setting("infinite", replay_fraction),
                       "no re-warm + replay": recipes.Setting("no_rewarm", replay_fraction),
                       "re-warm, no replay": recipes.Setting("rewarm", 0.0),
                       "joint": recipes.Setting("single", joint=True)}
    switch_results = recipes.compare(fn, params, long_rotations, switch_settings, seeds, peak_lr=peak_lr,
                                     steps_per_task=steps_per_task, batch_size=batch_size)
    switch_rows = {name: recipes.summarise(r, steps_per_task) for name, r in switch_results.items()}
    print(f"{switch_tasks} tasks: {'setting':22s} {'old':>6s} {'new':>6s} {'gap':>6s} {'recov':>6s} {'min-acc':>7s}")
    for name, row in switch_rows.items():
        print(f"{'':9s}{name:22s} {row.old_final:6.3f} {row.new_final:6.3f} {row.gap:6.3f} {row.recovery:6.3f} "
              f"{row.minimum_accuracy:7.3f}")
    switch_lrs = {name: continual.task_schedule(s.schedule, peak_lr, steps_per_task, switch_tasks)
                  for name, s in switch_settings.items()}
    shown = ["re-warm + replay", "infinite + replay", "re-warm, no replay", "joint"]
    fig = continual_plots.stream_curves({n: switch_results[n] for n in shown}, switch_lrs, steps_per_task,
                                        long_rotations.names, title=f"{switch_tasks} tasks: accuracy at every step")
    workbench.save_figure(fig, "several_switches")
    plt.show()

# %% [markdown]
# ## A text domain shift
# With `text_steps` set (the full profile): a one-block character-level transformer learns the
# docstrings of a few standard-library modules (prose), then their source code, next-character
# accuracy on both scored every 10 steps; re-warm + replay against no replay and joint training,
# peak rate 1 (plain SGD), two seeds. The same questions on a language-modelling shift.

# %%
text_rows = {}
if text_steps:
    text, vocab = recipes.text_stream(seq_len=32, num_examples=1024, num_test=128)
    text_fns = [recipes.tiny_text_model(len(vocab), 32, seed=s) for s in seeds[:2]]
    text_params = jax.tree.map(lambda *a: np.stack(a), *[f.params for f in text_fns])
    text_settings = {"re-warm + replay": recipes.Setting("rewarm", replay_fraction),
                     "re-warm, no replay": recipes.Setting("rewarm", 0.0),
                     "joint": recipes.Setting("single", joint=True)}
    text_results = recipes.compare(text_fns[0], text_params, text, text_settings, seeds[:2], peak_lr=1.0,
                                   steps_per_task=text_steps, batch_size=batch_size, eval_every=10)
    text_rows = {name: recipes.summarise(r, text_steps) for name, r in text_results.items()}
    print(f"prose -> code, {len(vocab)} characters: {'setting':20s} {'prose':>6s} {'code':>6s} {'gap':>6s} "
          f"{'recov':>6s} {'gap at task ends':>16s}")
    for name, row in text_rows.items():
        print(f"{'':34s}{name:20s} {row.old_final:6.3f} {row.new_final:6.3f} {row.gap:6.3f} {row.recovery:6.3f} "
              f"{row.task_end_gap:16.3f}")
    text_lrs = {name: continual.task_schedule(s.schedule, 1.0, text_steps, 2) for name, s in text_settings.items()}
    fig = continual_plots.stream_curves(text_results, text_lrs, text_steps, text.names,
                                        title="Prose, then code: next-character accuracy every 10 steps")
    workbench.save_figure(fig, "text_shift")
    plt.show()

# %% [markdown]
# ## How much replay
# With `replay_sweep` set (the full profile sweeps 1% to 50%): the final accuracies of re-warm +
# replay against the replayed share, joint training's as dotted lines.

# %%
sweep_rows = {}
if replay_sweep:
    sweep = recipes.compare(fn, params, stream, {f"{f:g}": recipes.Setting("rewarm", f) for f in replay_sweep},
                            seeds, peak_lr=peak_lr, steps_per_task=steps_per_task, batch_size=batch_size)
    sweep_rows = {name: recipes.summarise(r, steps_per_task) for name, r in sweep.items()}
    fig = continual_plots.final_accuracies([f"{f:.0%}" for f in replay_sweep],
                                           [r.old_final for r in sweep_rows.values()],
                                           [r.new_final for r in sweep_rows.values()], rows["joint"].old_final,
                                           rows["joint"].new_final, "replayed share of each batch",
                                           "Re-warm + replay: final accuracy against the replay share")
    workbench.save_figure(fig, "replay_sweep")
    plt.show()

# %% [markdown]
# ## Rehearsal by recency at one budget
# A longer stream of permuted-digits tasks (`rehearsal_tasks` of them, `rehearsal_steps` steps
# each), `rehearsal_fraction` of each batch replayed, the old task of each replayed example drawn
# uniformly, by a power law of its age (exponent 1) or exponentially (rate 1). Age counts tasks
# since the old task was learnt: our reading of Gandhi et al.'s power-law environments, whose
# exact protocol we could not read here.

# %%
rehearsal_rows = {}
if rehearsal_tasks >= 3:
    long_stream = recipes.digits_stream("permuted", rehearsal_tasks)
    rules = {"uniform": recipes.Setting("rewarm", rehearsal_fraction),
             "power law": recipes.Setting("rewarm", rehearsal_fraction, recency="power_law"),
             "exponential": recipes.Setting("rewarm", rehearsal_fraction, recency="exponential"),
             "no replay": recipes.Setting("rewarm", 0.0)}
    rehearsal = recipes.compare(fn, params, long_stream, rules, seeds, peak_lr=peak_lr, steps_per_task=rehearsal_steps,
                                batch_size=batch_size, eval_every=rehearsal_steps // 10 or 1)
    rehearsal_rows = {name: recipes.summarise(r, rehearsal_steps) for name, r in rehearsal.items()}
    print(f"{rehearsal_tasks} tasks, {rehearsal_fraction:.0%} replayed: final accuracy on the old tasks / the last")
    for name, row in rehearsal_rows.items():
        oldest = float(np.mean(np.asarray(rehearsal[name].accuracy)[:, -1, 0]))
        print(f"  {name:12s} {row.old_final:.3f} / {row.new_final:.3f}  (first task {oldest:.3f})")

# %% [markdown]
# ## Headline numbers

# %%
method, joint_row = rows["re-warm + replay"], rows["joint"]
workbench.record(
    seeds=seeds,
    table={name: row._asdict() for name, row in rows.items()},
    joint_margins=margins,
    method_joint_margin=margins["re-warm + replay"],
    control_no_rewarm_joint_margin=margins["no re-warm + replay"],
    control_no_replay_joint_margin=margins["re-warm, no replay"],
    method_recovery=method.recovery,
    control_task_end_recovery=method.task_end_recovery,
    gap_growth_with_lr=gap_growth,
    control_task_end_gap_growth_with_lr=task_end_growth,
    sgd_barrier=path.sgd_barrier,
    linear_barrier=path.linear_barrier,
    barrier_sgd_minus_linear=path.sgd_barrier - path.linear_barrier,
    control_no_rewarm_barrier_sgd_minus_linear=no_rewarm_path.sgd_barrier - no_rewarm_path.linear_barrier,
    max_lr_times_top_eigenvalue={name: float(c.lr_times_top.max()) for name, c in curves.items()},
    replay_sweep={name: row._asdict() for name, row in sweep_rows.items()},
    rehearsal={name: row._asdict() for name, row in rehearsal_rows.items()},
    several_switches={name: row._asdict() for name, row in switch_rows.items()},
    text_shift={name: row._asdict() for name, row in text_rows.items()},
    text_method_gap=text_rows["re-warm + replay"].gap if text_rows else None,
    control_text_task_end_gap=text_rows["re-warm + replay"].task_end_gap if text_rows else None,
    several_switches_replay_gain=(switch_rows["re-warm + replay"].old_final
                                  - switch_rows["re-warm, no replay"].old_final) if switch_rows else None,
    # an outcome replay should not move: the newest task, which both settings just trained on
    control_new_task_replay_gain=(switch_rows["re-warm + replay"].new_final
                                  - switch_rows["re-warm, no replay"].new_final) if switch_rows else None,
)

# %% [markdown]
# ## Explore
# With `interactive=True`: pick the peak learning rate, the replayed share and the schedule, train
# the stream again over the first seed, and read both tasks' accuracy at every step.

# %%
if interactive:
    from IPython.display import display

    from workbench.ui.continual import stream_panel

    one_fn, one_params = recipes.mlp_params(seeds[:1], hidden_size)
    explore = functools.partial(recipes.explore, one_fn, one_params, stream, seeds[:1],
                                steps_per_task=steps_per_task, batch_size=batch_size)
    panel = stream_panel(explore, steps_per_task, stream.names, peak_lr=peak_lr, replay_fraction=replay_fraction)
    display(panel.widget)
