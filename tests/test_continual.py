"""Continual learning: replay draws, the compiled stream loop against a plain Python loop in
float64, schedules, the stability-gap metrics on hand-made curves, the linear path, task streams,
and the paper's recipes."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench import continual
from workbench.continual import replay

# ----------------------------------------------------------------------------- replay


def test_task_weights_follow_the_recency_rules():
    np.testing.assert_allclose(continual.task_weights(3, 5, "uniform"), [1 / 3, 1 / 3, 1 / 3, 0, 0], atol=1e-15)
    w = np.array([1 / 9, 1 / 4, 1.0])  # ages 3, 2, 1 with exponent 2
    np.testing.assert_allclose(continual.task_weights(3, 5, "power_law", 2.0), [*(w / w.sum()), 0, 0], atol=1e-15)
    e = np.exp(-0.5 * np.array([2.0, 1.0, 0.0]))
    np.testing.assert_allclose(continual.task_weights(3, 5, "exponential", 0.5), [*(e / e.sum()), 0, 0], atol=1e-15)
    np.testing.assert_array_equal(continual.task_weights(0, 4, "power_law"), np.zeros(4))
    np.testing.assert_allclose(continual.task_weights(2, 3, "power_law", 0.0), [0.5, 0.5, 0.0])  # exponent 0: uniform
    with pytest.raises(ValueError, match="recency must be one of"):
        continual.task_weights(1, 2, "power")
    with pytest.raises(ValueError, match="or its index 0..2"):
        continual.task_weights(1, 2, 3)
    by_index = jax.jit(jax.vmap(lambda r: continual.task_weights(3, 5, r, 2.0)))(jnp.arange(3))  # traced rule
    for r, name in enumerate(continual.RECENCIES):
        np.testing.assert_allclose(by_index[r], continual.task_weights(3, 5, name, 2.0), rtol=1e-15)


def test_plan_batch_replays_exactly_the_share_asked_with_the_recency_weights(key):
    B, T, n = 40, 4, 50
    plans = jax.vmap(lambda k: continual.plan_batch(k, 3, num_tasks=T, num_examples=n, batch_size=B, fraction=0.3,
                                                    recency="power_law", exponent=1.5))(jax.random.split(key, 2000))
    assert np.all(np.asarray(plans.replayed).sum(axis=1) == 12)  # 0.3 * 40, every step
    tasks = np.asarray(plans.tasks)
    assert np.all(tasks[~np.asarray(plans.replayed)] == 3)
    old = tasks[np.asarray(plans.replayed)]
    freq = np.bincount(old, minlength=T) / old.size
    np.testing.assert_allclose(freq, continual.task_weights(3, T, "power_law", 1.5), atol=0.01)  # 24,000 draws
    assert np.asarray(plans.examples).min() == 0 and np.asarray(plans.examples).max() == n - 1
    first = continual.plan_batch(key, 0, num_tasks=T, num_examples=n, batch_size=B, fraction=0.3)
    assert not np.any(first.replayed) and np.all(np.asarray(first.tasks) == 0)  # nothing to replay in task 0


def test_a_share_below_one_slot_is_replayed_on_average_not_rounded_away(key):
    plans = jax.vmap(lambda k: continual.plan_batch(k, 1, num_tasks=2, num_examples=50, batch_size=32,
                                                    fraction=0.01))(jax.random.split(key, 4000))
    counts = np.asarray(plans.replayed).sum(axis=1)
    assert set(np.unique(counts)) == {0, 1}  # within one slot of 0.32 at every step
    assert abs(counts.mean() - 0.32) < 0.03  # 4000 steps: standard error 0.0074


def test_plan_batch_buffer_and_joint(key):
    keys = jax.random.split(key, 500)
    plans = jax.vmap(lambda k: continual.plan_batch(k, 1, num_tasks=2, num_examples=100, batch_size=20, fraction=0.5,
                                                    buffer_size=7))(keys)
    replayed = np.asarray(plans.replayed)
    assert np.asarray(plans.examples)[replayed].max() == 6 and np.asarray(plans.examples)[~replayed].max() > 50
    joint = jax.vmap(lambda k: continual.plan_batch(k, 0, num_tasks=3, num_examples=10, batch_size=20,
                                                    joint=True))(keys)
    np.testing.assert_allclose(np.bincount(np.asarray(joint.tasks).ravel(), minlength=3) / 10_000, 1 / 3, atol=0.02)


# ----------------------------------------------------------------------------- the stream loop


def _softmax_model(d, c):
    def predict(p, x):
        return x @ p["w"] + p["b"]

    def loss(p, batch):
        x, y = batch
        return jnp.mean(jax.nn.logsumexp(predict(p, x), axis=-1) - jnp.take_along_axis(predict(p, x), y[:, None], 1)[:, 0])

    return predict, loss


def _small_stream(key, T=3, n=30, m=12, d=5, c=3, dtype=jnp.float64):
    ks = jax.random.split(key, 2 * T)
    train = [(jax.random.normal(ks[2 * t], (n, d), dtype), jax.random.randint(ks[2 * t], (n,), 0, c)) for t in range(T)]
    test = [(jax.random.normal(ks[2 * t + 1], (m, d), dtype), jax.random.randint(ks[2 * t + 1], (m,), 0, c))
            for t in range(T)]
    return continual.stack_tasks([f"t{t}" for t in range(T)], train, test)


def _reference(loss, predict, params, stream, key, lrs, steps_per_task, batch_size, eval_every, snapshot_steps, **opts):
    """The same run as a plain Python loop: plain SGD, evaluation by hand."""
    T, n = stream.num_tasks, stream.train_x.shape[1]

    def evaluate(p):
        acc = [float(np.mean(np.argmax(np.asarray(predict(p, stream.test_x[t])), -1) == np.asarray(stream.test_y[t])))
               for t in range(T)]
        return acc, [float(loss(p, stream.task(t, "test"))) for t in range(T)]

    accs, losses, train_losses, snaps = [evaluate(params)[0]], [evaluate(params)[1]], [], {}
    if 0 in snapshot_steps:
        snaps[0] = params
    draw = jax.jit(lambda k, task: replay.plan_batch(k, task, num_tasks=T, num_examples=n, batch_size=batch_size,
                                                      **opts))
    value_and_grad = jax.jit(jax.value_and_grad(loss))
    for s in range(T * steps_per_task):
        plan = draw(jax.random.fold_in(key, s), s // steps_per_task)
        batch = (stream.train_x[plan.tasks, plan.examples], stream.train_y[plan.tasks, plan.examples])
        value, grads = value_and_grad(params, batch)
        train_losses.append(float(value))
        params = jax.tree.map(lambda p, g, s=s: p - lrs[s] * g, params, grads)
        if s + 1 in snapshot_steps:
            snaps[s + 1] = params
        if (s + 1) % eval_every == 0:
            a, lo = evaluate(params)
            accs.append(a)
            losses.append(lo)
    return params, np.array(accs), np.array(losses), np.array(train_losses), snaps


@pytest.mark.parametrize("opts", [dict(fraction=0.5, recency="power_law", exponent=1.0),
                                  dict(fraction=0.0), dict(joint=True),
                                  dict(fraction=0.25, recency="exponential", exponent=2.0, buffer_size=5)])
def test_train_stream_matches_a_python_loop_in_float64(keys, opts):
    predict, loss = _softmax_model(5, 3)
    for key in (keys[0], keys[-1]):  # key(0) and one of this test's own
        stream = _small_stream(jax.random.fold_in(key, 1))
        params = {"w": 0.1 * jax.random.normal(key, (5, 3), jnp.float64), "b": jnp.zeros(3, jnp.float64)}
        lrs = jnp.asarray(continual.task_schedule("rewarm", 0.5, 6, 3, warmup_fraction=0.2))
        snapshot_steps = (0, 6, 11, 18)
        out = continual.train_stream(loss, params, stream, key, lrs=lrs, steps_per_task=6, batch_size=8,
                                     predict_fn=predict, eval_every=2, snapshot_steps=snapshot_steps,
                                     replay_fraction=opts.get("fraction", 0.0), recency=opts.get("recency", "uniform"),
                                     recency_exponent=opts.get("exponent", 1.0), buffer_size=opts.get("buffer_size"),
                                     joint=opts.get("joint", False))
        ref_params, accs, losses, train_losses, snaps = _reference(loss, predict, params, stream, key, lrs, 6, 8, 2,
                                                                   snapshot_steps, **opts)
        np.testing.assert_allclose(out.params["w"], ref_params["w"], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(out.accuracy, accs, atol=1e-15)  # counts of 12: any mistake is >= 1/12
        np.testing.assert_allclose(out.loss, losses, rtol=1e-12)
        np.testing.assert_allclose(out.train_loss, train_losses, rtol=1e-12)
        np.testing.assert_array_equal(out.eval_steps, np.arange(0, 19, 2))
        np.testing.assert_array_equal(out.snapshot_steps, snapshot_steps)
        for i, s in enumerate(snapshot_steps):
            np.testing.assert_allclose(out.snapshots["w"][i], snaps[s]["w"], rtol=1e-12, atol=1e-14)
        expected_share = 0.0 if opts.get("joint") else round(opts.get("fraction", 0.0) * 8) / 8
        np.testing.assert_allclose(out.replayed, np.r_[np.zeros(6), np.full(12, expected_share)])


def test_train_stream_with_zero_learning_rate_changes_nothing_and_runs_in_float32(key):
    predict, loss = _softmax_model(5, 3)
    stream = _small_stream(key, dtype=jnp.float32)
    params = {"w": jax.random.normal(key, (5, 3), jnp.float32), "b": jnp.zeros(3, jnp.float32)}
    out = continual.train_stream(loss, params, stream, key, lrs=np.zeros(12), steps_per_task=4, batch_size=8,
                                 predict_fn=predict, replay_fraction=0.5)
    np.testing.assert_array_equal(out.params["w"], params["w"])
    assert out.accuracy.dtype == jnp.float32 and np.all(out.accuracy == out.accuracy[0])
    moved = continual.train_stream(loss, params, stream, key, lrs=np.full(12, 0.5), steps_per_task=4, batch_size=8,
                                   predict_fn=predict, replay_fraction=0.5)
    assert moved.params["w"].dtype == jnp.float32 and not np.allclose(moved.params["w"], params["w"])


def test_a_diverged_run_has_no_accuracy_and_its_gaps_are_refused(key):
    predict, data_loss = _softmax_model(5, 3)

    def loss(p, batch):  # with an L2 term, a step of size lr scales the weights by (1 - lr)
        return data_loss(p, batch) + 0.5 * jnp.sum(p["w"] ** 2)

    stream = _small_stream(key)
    params = {"w": jnp.ones((5, 3)), "b": jnp.zeros(3)}
    lrs = np.r_[np.full(4, 0.1), np.full(4, 1e200), np.full(4, 0.1)]  # overflows to inf, then NaN, in task 1
    out = continual.train_stream(loss, params, stream, key, lrs=lrs, steps_per_task=4, batch_size=8,
                                 predict_fn=predict, eval_every=2)
    acc = np.asarray(out.accuracy)
    assert np.all(np.isfinite(acc[:3])) and np.all(np.isnan(acc[-1]))
    with pytest.raises(ValueError, match="NaN or inf"):
        continual.switch_gaps(acc, out.eval_steps, 4)


def test_train_stream_uses_the_optimizer_given(key):
    import functools

    import optax

    predict, loss = _softmax_model(5, 3)
    stream = _small_stream(key)
    params = {"w": jnp.zeros((5, 3)), "b": jnp.zeros(3)}
    lrs = np.full(12, 0.1)
    kwargs = dict(lrs=lrs, steps_per_task=4, batch_size=8, predict_fn=predict)
    plain = continual.train_stream(loss, params, stream, key, **kwargs)
    same = continual.train_stream(loss, params, stream, key, optimizer_fn=optax.sgd, **kwargs)
    heavy = continual.train_stream(loss, params, stream, key, optimizer_fn=functools.partial(optax.sgd, momentum=0.9),
                                   **kwargs)
    np.testing.assert_array_equal(plain.params["w"], same.params["w"])
    assert not np.allclose(plain.params["w"], heavy.params["w"])


def test_train_stream_vmapped_over_replay_fractions_equals_separate_runs(key):
    predict, loss = _softmax_model(5, 3)
    stream = _small_stream(key)
    params = {"w": jnp.zeros((5, 3)), "b": jnp.zeros(3)}
    lrs = jnp.full(12, 0.3)

    def run(f):
        return continual.train_stream(loss, params, stream, key, lrs=lrs, steps_per_task=4, batch_size=8,
                                      predict_fn=predict, replay_fraction=f).accuracy

    both = jax.jit(jax.vmap(run))(jnp.array([0.0, 0.75]))
    np.testing.assert_array_equal(both[0], run(0.0))
    np.testing.assert_array_equal(both[1], run(0.75))
    assert not np.array_equal(both[0], both[1])


def test_train_stream_refuses_bad_options(key):
    predict, loss = _softmax_model(5, 3)
    stream = _small_stream(key)
    params = {"w": jnp.zeros((5, 3)), "b": jnp.zeros(3)}
    ok = dict(lrs=np.full(12, 0.1), steps_per_task=4, batch_size=4, predict_fn=predict)
    cases = [(dict(lrs=np.full(11, 0.1)), "one learning rate per step: 3 tasks x 4 steps = 12"),
             (dict(eval_every=3), "must divide steps_per_task=4"),
             (dict(replay_fraction=1.5), r"replay_fraction must lie in \[0, 1\]"),
             (dict(recency="power"), "recency must be one of"),
             (dict(snapshot_steps=(13,)), r"snapshot_steps must lie in \[0, 12\]"),
             (dict(lrs=np.r_[np.full(11, 0.1), np.nan]), "NaN or inf"),
             (dict(predict_fn=None), "pass predict_fn"),
             (dict(recency_exponent=-1.0), "recency_exponent must be >= 0"),
             (dict(buffer_size=0), "buffer_size")]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            continual.train_stream(loss, params, stream, key, **{**ok, **change})
    with pytest.raises(TypeError, match="TaskStream"):
        continual.train_stream(loss, params, (stream.train_x, stream.train_y), key, **ok)


# ----------------------------------------------------------------------------- schedules


def test_task_schedules():
    peak, S, T = 0.4, 10, 3
    rewarm = continual.task_schedule("rewarm", peak, S, T, warmup_fraction=0.2)
    assert rewarm.shape == (30,)
    for t in range(T):  # each task: from 0, to peak after its warm-up, down to the minimum
        assert rewarm[t * S] == 0.0 and math.isclose(rewarm[t * S + 2], peak)
        assert math.isclose(rewarm[t * S + S - 1], 0.04 + (peak - 0.04) * 0.5 * (1 + math.cos(math.pi * 7 / 8)))
    wsd = continual.task_schedule("rewarm_wsd", peak, S, T, warmup_fraction=0.2, cooldown_fraction=0.3)
    for t in range(T):  # warm up over 2 steps, hold, cool down linearly towards the minimum (reached at step S)
        np.testing.assert_allclose(wsd[t * S:(t + 1) * S], [0, 0.2, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4,
                                                            0.04 + 0.36 * 2 / 3, 0.04 + 0.36 / 3], atol=1e-12)
    no = continual.task_schedule("no_rewarm", peak, S, T, warmup_fraction=0.2)
    np.testing.assert_array_equal(no[:S], rewarm[:S])
    np.testing.assert_allclose(no[S:], 0.04)
    np.testing.assert_allclose(continual.task_schedule("constant", peak, S, T), peak)
    single = continual.task_schedule("single", peak, S, T, warmup_fraction=0.2)
    assert math.isclose(single[2], peak) and np.all(np.diff(single[2:]) <= 0)
    inf = continual.task_schedule("infinite", peak, S, T, warmup_fraction=0.2, constant_fraction=0.5,
                                  cooldown_fraction=0.3)
    np.testing.assert_allclose(inf[S:-3], 0.2)
    np.testing.assert_allclose(inf[-3:], [0.2 + (0.04 - 0.2) * k / 3 for k in (1, 2, 3)])
    with pytest.raises(ValueError, match="kind must be one of"):
        continual.task_schedule("cosine", peak, S, T)
    with pytest.raises(ValueError, match=r"warmup_fraction must lie in \[0, 1\)"):
        continual.task_schedule("rewarm", peak, S, T, warmup_fraction=1.0)
    with pytest.raises(ValueError, match="peak must be a positive"):
        continual.task_schedule("rewarm", -1.0, S, T)


# ----------------------------------------------------------------------------- metrics


def test_switch_gaps_minimum_and_worst_case_accuracy_on_hand_made_curves():
    steps = np.array([0, 2, 3, 4, 5, 6])  # tasks of 2 steps: switches after steps 2 and 4
    acc = np.array([[0.1, 0.1, 0.1],
                    [0.9, 0.2, 0.1],   # end of task 0
                    [0.5, 0.6, 0.2],   # dip of task 0
                    [0.7, 0.95, 0.3],  # end of task 1
                    [0.6, 0.4, 0.5],   # dip of task 1, task 0 at its lowest after the dip? no: 0.5 is lower
                    [0.65, 0.8, 0.9]])
    gaps = continual.switch_gaps(acc, steps, 2)
    assert [g.task for g in gaps] == [0, 1]
    assert gaps[0].at_switch == 0.9 and gaps[0].lowest == 0.5 and gaps[0].lowest_step == 3
    assert math.isclose(gaps[0].gap, 0.4) and math.isclose(gaps[0].recovery, 0.2) and gaps[0].at_next_end == 0.7
    assert gaps[1].lowest == 0.4 and math.isclose(gaps[1].gap, 0.55) and math.isclose(gaps[1].recovery, 0.4)
    np.testing.assert_allclose(continual.minimum_accuracy(acc, steps, 2), [0.5, 0.4])
    assert math.isclose(continual.average_minimum_accuracy(acc, steps, 2), 0.45)
    assert math.isclose(continual.worst_case_accuracy(acc, steps, 2), 0.9 / 3 + 2 / 3 * 0.45)
    ends, end_steps = continual.at_task_ends(acc, steps, 2)
    np.testing.assert_array_equal(end_steps, [0, 2, 4, 6])
    seen = continual.switch_gaps(ends, end_steps, 2)  # evaluated only at task ends, the dips vanish
    assert math.isclose(seen[0].gap, 0.2) and seen[0].recovery == 0.0 and seen[1].recovery == 0.0


def test_metrics_refuse_curves_they_cannot_read():
    steps = np.array([0, 2, 4])
    with pytest.raises(ValueError, match="NaN or inf"):
        continual.switch_gaps(np.array([[0.1, 0.1], [np.nan, 0.2], [0.5, 0.5]]), steps, 2)
    with pytest.raises(ValueError, match=r"task ends \[4\] were not evaluated"):
        continual.switch_gaps(np.ones((3, 2)), np.array([0, 2, 3]), 2)
    with pytest.raises(ValueError, match="one eval step per row"):
        continual.switch_gaps(np.ones((3, 2)), np.array([0, 2]), 2)


def test_linear_path_on_a_quadratic_is_exact(key):
    a = {"w": jax.random.normal(key, (4,)), "b": jnp.array(1.0)}
    b = {"w": jax.random.normal(jax.random.fold_in(key, 1), (4,)), "b": jnp.array(-2.0)}

    def loss(p, c):
        return jnp.sum((p["w"] - c) ** 2) + p["b"] ** 2

    c = jnp.arange(4.0)
    alphas, losses = continual.linear_path(loss, a, b, c, 5)
    np.testing.assert_allclose(alphas, [0, 0.25, 0.5, 0.75, 1])
    expected = [float(loss(jax.tree.map(lambda x, y, t=t: (1 - t) * x + t * y, a, b), c)) for t in alphas]
    np.testing.assert_allclose(losses, expected, rtol=1e-13)
    with pytest.raises(ValueError, match="num_points"):
        continual.linear_path(loss, a, b, c, 1)


# ----------------------------------------------------------------------------- task streams


def test_rotated_and_permuted_streams(key):
    x = jax.random.uniform(key, (6, 16))
    y = jnp.arange(6) % 3
    s = continual.rotated((x, y), (x[:3], y[:3]), [0, 90, 180, 270], 4)
    assert s.names == ("original", "rotated 90", "rotated 180", "rotated 270")
    np.testing.assert_array_equal(s.train_x[0], x)
    np.testing.assert_array_equal(s.train_x[1].reshape(6, 4, 4), np.rot90(np.asarray(x).reshape(6, 4, 4), 1, (1, 2)))
    np.testing.assert_array_equal(s.test_x[2][0].reshape(4, 4), np.asarray(x[0]).reshape(4, 4)[::-1, ::-1])
    np.testing.assert_array_equal(s.train_y[3], y)
    assert s.union()[0].shape == (24, 16)
    with pytest.raises(ValueError, match="multiples of 90"):
        continual.rotated((x, y), (x, y), [45], 4)
    with pytest.raises(ValueError, match="4\\^2 = 16 pixels"):
        continual.rotated((x[:, :15], y), (x[:, :15], y), [0], 4)
    p = continual.permuted((x, y), (x[:3], y[:3]), key, 3)
    np.testing.assert_array_equal(p.train_x[0], x)
    for t in (1, 2):  # one permutation per task, the same on its training and test inputs
        perm = [int(np.flatnonzero(np.asarray(x[0]) == v)[0]) for v in np.asarray(p.train_x[t][0])]
        np.testing.assert_array_equal(p.train_x[t], np.asarray(x)[:, perm])
        np.testing.assert_array_equal(p.test_x[t], np.asarray(x[:3])[:, perm])
    assert not np.array_equal(p.train_x[1], p.train_x[2])


def test_stack_tasks_names_the_task_that_does_not_fit():
    a = (jnp.zeros((4, 3)), jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match="task 'b' has x \\(5, 3\\)"):
        continual.stack_tasks(["a", "b"], [a, (jnp.zeros((5, 3)), jnp.zeros(5, jnp.int32))], [a, a])
    with pytest.raises(ValueError, match="distinct"):
        continual.stack_tasks(["a", "a"], [a, a], [a, a])
    with pytest.raises(ValueError, match="one training and one test set per task"):
        continual.stack_tasks(["a", "b"], [a], [a, a])


# ----------------------------------------------------------------------------- the paper's recipes


def test_compare_runs_each_setting_as_train_stream_would():
    from workbench.experiments import continual as recipes

    stream = recipes.digits_stream("permuted", 2)
    stream = continual.stack_tasks(stream.names, [(stream.train_x[t][:64], stream.train_y[t][:64]) for t in range(2)],
                                   [(stream.test_x[t][:32], stream.test_y[t][:32]) for t in range(2)])
    fn, params = recipes.mlp_params([3, 4], 8)
    settings = {"replay": recipes.Setting("rewarm", 0.5), "joint": recipes.Setting("single", joint=True),
                "power": recipes.Setting("no_rewarm", 0.25, recency="power_law", peak_scale=2.0)}
    out = recipes.compare(fn, params, stream, settings, [3, 4], peak_lr=0.2, steps_per_task=10, batch_size=8,
                          eval_every=5, snapshot_steps=(10, 20))
    for name in ("power", "joint"):  # one per compiled group; the second seed shows a mix-up of seeds
        s = settings[name]
        for i, seed in [(1, 4)]:
            direct = continual.train_stream(
                fn, jax.tree.map(lambda a, i=i: a[i], params), stream, jax.random.key(seed),
                lrs=jnp.asarray(continual.task_schedule(s.schedule, 0.2 * s.peak_scale, 10, 2), jnp.float32),
                steps_per_task=10, batch_size=8, replay_fraction=s.replay_fraction, recency=s.recency,
                joint=s.joint, eval_every=5, snapshot_steps=(10, 20))
            np.testing.assert_allclose(out[name].accuracy[i], direct.accuracy, atol=1e-6)
            np.testing.assert_allclose(out[name].loss[i], direct.loss, rtol=1e-5)
    row = recipes.summarise(out["replay"], 10)
    joint = recipes.summarise(out["joint"], 10)
    assert math.isclose(recipes.joint_margin(row, joint, 0.05),
                        0.05 - max(joint.old_final - row.old_final, joint.new_final - row.new_final))
    path = recipes.linear_path_vs_sgd(fn, recipes.stack_seed(out["replay"], 0), stream, steps_per_task=10, num_points=3)
    assert path.sgd_steps.tolist() == [10, 15, 20] and path.linear_loss.shape == (3,)
    np.testing.assert_allclose(path.linear_loss[[0, -1]], path.sgd_loss[[0, -1]], rtol=1e-5)  # same two end points
    with pytest.raises(ValueError, match="kept no params at steps \\[20\\]"):
        recipes.linear_path_vs_sgd(fn, recipes.stack_seed(out["replay"], 0)._replace(
            snapshot_steps=jnp.array([10, 19])), stream, steps_per_task=10)


def test_text_domain_shift_stream_trains_a_transformer(key):
    from workbench.experiments import continual as recipes

    stream, vocab = recipes.text_stream(seq_len=16, num_examples=32, num_test=8)
    assert stream.names == ("prose", "code") and stream.train_x.shape == (2, 32, 16)
    assert int(stream.train_x.max()) < len(vocab)
    np.testing.assert_array_equal(stream.train_x[:, :, 1:], stream.train_y[:, :, :-1])  # next-character targets
    fn = recipes.tiny_text_model(len(vocab), 16, d_model=16)
    out = continual.train_stream(fn, fn.params, stream, key, lrs=np.full(8, 0.05), steps_per_task=4, batch_size=4,
                                 replay_fraction=0.25, eval_every=2)
    assert out.accuracy.shape == (5, 2) and np.all((out.accuracy >= 0) & (out.accuracy <= 1))
    assert np.all(np.isfinite(out.loss)) and out.loss[-1, 0] < out.loss[0, 0]
    with pytest.raises(ValueError, match="characters; .* are needed"):
        recipes.text_stream(seq_len=64, num_examples=100_000)
