"""Multi-process JAX: real 2- and 3-process jobs on localhost (tests/distributed_worker.py) give
the one-process curvature operator, spectra, L-BFGS / OWL-QN optima and entropic-OT potentials;
the gradient store is filled by two writers and survives a killed one; bad input fails fast."""

import json
import re
import socket
import time
from pathlib import Path

import distributed_worker as W
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize as so

from workbench import curvature, spectrum
from workbench import distributed as dist
from workbench import sketch as sk
from workbench.sketch.store import open_store

WORKER = Path(__file__).with_name("distributed_worker.py")


def _launch(n, *args, devices=1, timeout=120):
    return dist.launch(WORKER, n, devices_per_process=devices, args=[str(a) for a in args], timeout=timeout)


# ----------------------------------------------------------------------------- one-process references


@pytest.fixture(scope="module")
def reference():
    """Everything the workers compute, on one process from the full data, float64."""
    x, y, w0 = W.problem()
    params = jax.tree.map(jnp.asarray, w0)
    full = (jnp.asarray(x), jnp.asarray(y))
    out = {}
    for kind in ("hessian", "ggn", "fisher"):
        op = curvature.operator(W.loss_fn, params, full, kind, predict_fn=W.predict_fn,
                                output_loss_fn=W.output_loss_fn)
        out[f"{kind}_dense"] = np.asarray(op.dense())
    op = curvature.operator(W.loss_fn, params, full, "hessian")
    eig = spectrum.top_eigenpairs(op, k=3, key=jax.random.key(0))
    out["eig_values"], out["eig_vectors"] = np.asarray(eig.values), np.asarray(eig.vectors)
    out["density"] = np.asarray(spectrum.spectral_density(op, jax.random.key(1), num_iters=10, num_probes=4,
                                                          grid_size=200).density)
    out["trace"] = np.asarray(spectrum.trace(op, jax.random.key(2), num_probes=8).estimate)
    return out


def _lbfgs_reference(x, y):
    """Multinomial logistic regression optimum by scipy's L-BFGS-B to full precision."""
    def g(theta):  # numpy gradient: an independent reference
        w, b = theta[: W.D * W.K].reshape(W.D, W.K), theta[W.D * W.K:]
        z = x @ w + b
        p = np.exp(z - z.max(1, keepdims=True))
        r = (p / p.sum(1, keepdims=True) - np.eye(W.K)[y]) / len(x)
        return np.concatenate([(x.T @ r + W.L2 * w).ravel(), r.sum(0)])

    def f(theta):
        w, b = theta[: W.D * W.K].reshape(W.D, W.K), theta[W.D * W.K:]
        z = x @ w + b
        m = z.max(1)
        lse = m + np.log(np.exp(z - m[:, None]).sum(1))
        return np.mean(lse - z[np.arange(len(x)), y]) + 0.5 * W.L2 * np.sum(w * w)

    res = so.minimize(f, np.zeros(W.D * W.K + W.K), jac=g, method="L-BFGS-B",
                      options=dict(ftol=1e-16, gtol=1e-11, maxiter=2000))
    return res.x[: W.D * W.K].reshape(W.D, W.K), res.x[W.D * W.K:]


def _owlqn_reference(x, y, l1):
    """L1 logistic regression by the split-variable bound-constrained problem theta = p - q >= ..."""
    d = W.D + 1
    t = (y == 0).astype(np.float64)
    xb = np.hstack([x, np.ones((len(x), 1))])

    def f(z):
        th = z[:d] - z[d:]
        s = xb @ th
        return np.mean(np.logaddexp(0, s) - t * s) + l1 * z.sum()

    def g(z):
        th = z[:d] - z[d:]
        r = xb.T @ (1 / (1 + np.exp(-(xb @ th))) - t) / len(x)
        return np.concatenate([r + l1, -r + l1])

    z = so.minimize(f, np.zeros(2 * d), jac=g, method="L-BFGS-B", bounds=[(0, None)] * (2 * d),
                    options=dict(ftol=1e-16, gtol=1e-12, maxiter=5000)).x
    return z[:d] - z[d:]


def _local_data(dtype=np.float64):
    x, y, w0 = W.problem()
    return dist.shard_examples((x.astype(dtype), y)), jax.tree.map(lambda a: a.astype(dtype), w0), x, y


@pytest.fixture(scope="module")
def one_process():
    """The workers' minimisations and OT on this one process (one device, no padding)."""
    data, w0, _, _ = _local_data()
    xs, ys = W.ot_points()
    return {
        "lbfgs": dist.lbfgs(W.loss_fn, w0, data),
        "owlqn": dist.owlqn(W.binary_loss_fn, {"w": np.zeros((W.D, 1)), "b": np.zeros((1,))}, data, l1=0.02),
        "ot": dist.entropic_ot(dist.shard_examples(xs), dist.shard_examples(ys), W.EPS_OT, chunk_size=8),
    }


# ----------------------------------------------------------------------------- one process


def test_one_process_operator_equals_curvature_operator(reference):
    data, w0, _, _ = _local_data()
    for kind in ("hessian", "ggn", "fisher"):
        op = dist.curvature_operator(W.loss_fn, w0, data, kind, predict_fn=W.predict_fn,
                                     output_loss_fn=W.output_loss_fn, chunk_size=4)  # 37 = 9 * 4 + 1
        np.testing.assert_allclose(np.asarray(op.dense()), reference[f"{kind}_dense"], rtol=0, atol=1e-12)


def test_lbfgs_and_owlqn_reach_the_reference_optima(one_process):
    x, y, _ = W.problem()
    r = one_process["lbfgs"]
    assert r.converged and r.finite and r.grad_norm <= 1e-9
    w_ref, b_ref = _lbfgs_reference(x, y)
    np.testing.assert_allclose(r.params["w"], w_ref, atol=1e-7)
    # softmax is unchanged by b + c and b carries no L2: b is unique up to that shift
    np.testing.assert_allclose(r.params["b"] - r.params["b"].mean(), b_ref - b_ref.mean(), atol=1e-7)
    r = one_process["owlqn"]
    assert r.converged
    theta = np.concatenate([r.params["w"][:, 0], r.params["b"]])
    ref = _owlqn_reference(x, y, 0.02)
    np.testing.assert_allclose(theta, ref, atol=1e-7)
    assert np.array_equal(theta == 0, np.abs(ref) < 1e-9), "OWL-QN must zero exactly the features L1 removes"
    assert np.any(theta == 0) and np.any(theta != 0)


def test_float32_operator_close_to_float64(reference):
    data, w0, _, _ = _local_data(np.float32)
    op = dist.curvature_operator(W.loss_fn, w0, data, "hessian", chunk_size=4)
    v = np.linspace(-1, 1, op.dim).astype(np.float32)
    got = np.asarray(op.matvec(v))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, reference["hessian_dense"] @ v, rtol=0, atol=2e-6)


def test_pseudo_gradient_is_the_minimum_norm_subgradient():
    g = jnp.array([0.5, -0.5, 0.05, 0.3, -0.3])
    x = jnp.array([0.0, 0.0, 0.0, 1.0, -2.0])
    pg = dist.pseudo_gradient(g, x, 0.1)
    np.testing.assert_allclose(pg, [0.4, -0.4, 0.0, 0.4, -0.4])


@pytest.mark.slow  # ott-jax's Sinkhorn compiles for ~10 s
@pytest.mark.standard_promotion  # ott-jax is not strict-promotion safe
def test_entropic_ot_matches_ott_sinkhorn(one_process):
    ott = pytest.importorskip("ott", reason="ott-jax is not installed: pip install -e '.[ot]' to compare with its Sinkhorn")
    from ott.geometry import pointcloud
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn

    xs, ys = W.ot_points()
    r = one_process["ot"]
    geom = pointcloud.PointCloud(jnp.asarray(xs), jnp.asarray(ys), epsilon=W.EPS_OT)
    out = sinkhorn.Sinkhorn(threshold=1e-9, max_iterations=100_000)(linear_problem.LinearProblem(geom))
    assert bool(out.converged), ott.__version__
    assert abs(r.dual - float(out.reg_ot_cost)) <= 1e-3 * abs(float(out.reg_ot_cost))
    cost = float(out.transport_cost_at_geom(geom))
    assert abs(r.transport_cost - cost) <= 1e-3 * abs(cost)
    assert r.marginal_error < 1e-6
    # the plans agree entrywise (potentials are defined up to u + c, v - c)
    np.testing.assert_allclose(dist.plan(xs, ys, r.u, r.v, W.EPS_OT), np.asarray(out.matrix), atol=1e-8)


def test_entropic_ot_without_ott_matches_dense_sinkhorn(one_process):
    """An independent dense reference (log-domain Sinkhorn in numpy), so the check runs without ott."""
    from scipy.special import logsumexp

    xs, ys = W.ot_points()
    r = one_process["ot"]
    assert r.converged and r.marginal_error < 1e-6
    c = ((xs[:, None] - ys[None]) ** 2).sum(-1)
    n, m, eps = len(xs), len(ys), W.EPS_OT
    f, g = np.zeros(n), np.zeros(m)
    for _ in range(5000):
        f = -eps * logsumexp((g[None] - c) / eps, axis=1, b=1 / m)
        g = -eps * logsumexp((f[:, None] - c) / eps, axis=0, b=1 / n)
    p = np.exp((f[:, None] + g[None] - c) / eps) / (n * m)
    np.testing.assert_allclose(r.transport_cost, (p * c).sum(), rtol=1e-8)
    np.testing.assert_allclose(r.dual, f.mean() + g.mean(), rtol=1e-8)


def test_entropic_ot_with_sharded_potentials_equals_replicated(one_process):
    xs, ys = W.ot_points()
    r = dist.entropic_ot(dist.shard_examples(xs), dist.shard_examples(ys), W.EPS_OT, chunk_size=8,
                         shard_potentials=True)
    np.testing.assert_allclose(r.dual, one_process["ot"].dual, rtol=1e-10)
    np.testing.assert_allclose(r.transport_cost, one_process["ot"].transport_cost, rtol=1e-8)


# ----------------------------------------------------------------------------- errors (no launch)


def test_boundary_errors():
    data, w0, _, _ = _local_data()
    with pytest.raises(TypeError, match="ShardedData"):
        dist.curvature_operator(W.loss_fn, w0, (np.zeros((3, 2)), np.zeros(3)))
    with pytest.raises(ValueError, match="kind must be"):
        dist.curvature_operator(W.loss_fn, w0, data, "hess")
    with pytest.raises(ValueError, match="needs predict_fn"):
        dist.curvature_operator(W.loss_fn, w0, data, "ggn")
    with pytest.raises(ValueError, match="l1 must be"):
        dist.owlqn(W.binary_loss_fn, w0, data, l1=-1.0)
    with pytest.raises(RuntimeError, match="not converged after 500 steps: gradient norm"):
        dist.lbfgs(W.loss_fn, w0, data, tol=1e-300)  # same compiled loop as the other runs
    with pytest.raises(FloatingPointError, match="NaN or inf"):
        dist.lbfgs(W.loss_fn, jax.tree.map(lambda a: a * np.nan, w0), data)
    with pytest.raises(ValueError, match="epsilon must be"):
        dist.entropic_ot(dist.shard_examples(np.zeros((3, 2))), dist.shard_examples(np.ones((3, 2))), 0.0)
    with pytest.raises(ValueError, match="same point dimension"):
        dist.entropic_ot(dist.shard_examples(np.zeros((3, 2))), dist.shard_examples(np.ones((3, 3))), 0.1)
    with pytest.raises(ValueError, match="disagree on the number of examples"):
        dist.shard_examples((np.zeros((3, 2)), np.zeros(4)))


def test_launcher_refuses_a_port_in_use_and_a_missing_script(monkeypatch):
    import subprocess

    started = []
    real_popen = subprocess.Popen

    def popen(*args, **kwargs):
        started.append(args)
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", popen)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(dist.LaunchError, match=f"port {s.getsockname()[1]} .* is in use"):
            dist.launch(WORKER, 2, args=["checks", "/nonexistent"], port=s.getsockname()[1])
        assert started == [], "refused before starting any process"
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError, match="no script"):
        dist.launch("no_such_script.py", 2)
    with pytest.raises(ValueError, match="num_processes"):
        dist.launch(WORKER, 0)


# ----------------------------------------------------------------------------- real multi-process jobs


def _compare(got, reference, keys):
    worst = {}
    for k in keys:
        a, b = got[k], reference[k]
        if k == "eig_vectors":  # eigenvectors up to sign
            a = a * np.sign(np.sum(a * b, axis=1, keepdims=True))
        worst[k] = float(np.max(np.abs(a - b)))
        assert worst[k] <= 1e-10, f"{k}: max difference {worst[k]:.2e} from one process"
    return worst


def test_three_processes_equal_one_process(reference, one_process, tmp_path):
    """3 processes x 2 devices (one launch: each launch starts and compiles in every process),
    examples split 13 / 12 / 12 over the processes and padded over their devices: Hessian, GGN
    and Fisher operators, eigenpairs, spectral density, trace, L-BFGS (replicated and
    block-sharded), OWL-QN and OT."""
    _launch(3, "checks", tmp_path, devices=2, timeout=240)
    got = [dict(np.load(tmp_path / f"p{i}.npz")) for i in range(3)]
    for other in got[1:]:  # SPMD: every process holds the same numbers
        for k in got[0]:
            np.testing.assert_array_equal(got[0][k], other[k], err_msg=k)
    p0 = got[0]
    _compare(p0, reference, ["hessian_dense", "ggn_dense", "fisher_dense", "eig_values", "eig_vectors",
                             "density", "trace"])
    one = one_process["lbfgs"]
    for w in ("lbfgs_w", "lbfgs_block_w"):
        np.testing.assert_allclose(p0[w], one.params["w"], atol=1e-8, err_msg=w)
    np.testing.assert_allclose(p0["lbfgs_b"] - p0["lbfgs_b"].mean(), one.params["b"] - one.params["b"].mean(), atol=1e-8)
    l1 = one_process["owlqn"]
    np.testing.assert_allclose(p0["owlqn_w"], l1.params["w"], atol=1e-8)
    assert np.array_equal(p0["owlqn_w"] == 0, l1.params["w"] == 0)
    # work per process: 13 / 12 / 12 examples padded to 14 rows on each process (7 per device);
    # every process holding all 37 examples pads them to 38 rows, about 3 x an even share
    assert p0["rows_per_process"].tolist() == [14, 14, 14]
    assert p0["load"] == pytest.approx(14 * 3 / W.N) and p0["all_data_load"] == pytest.approx(38 * 3 / W.N)
    ot = one_process["ot"]
    np.testing.assert_allclose(p0["ot_dual"], ot.dual, rtol=1e-10)
    np.testing.assert_allclose(p0["ot_cost"], ot.transport_cost, rtol=1e-8)
    np.testing.assert_allclose(p0["ot_u"] - p0["ot_u"].mean(), ot.u - ot.u.mean(), atol=1e-6)


def test_gradient_store_two_writers_killed_and_resumed(tmp_path):
    x, y, w0 = W.problem()
    params = jax.tree.map(jnp.asarray, w0)
    s = sk.make("srht", jax.random.key(0), optax.tree.size(params), 6)
    single = sk.write_gradient_store(W.loss_fn, params, (jnp.asarray(x), jnp.asarray(y)), s,
                                     tmp_path / "single.zarr", chunk_size=5)
    path = tmp_path / "multi.zarr"
    # chunk 3 belongs to process 1 (chunks alternate): it dies there, process 0 is stopped
    with pytest.raises(dist.LaunchError, match=r"process 1: exit status 17"):
        _launch(2, "store", tmp_path, path, "--fail-chunk", 3)
    partial = open_store(path)
    assert not partial.complete and partial.metadata == single.metadata
    _launch(2, "store", tmp_path, path)  # resumes: only the missing chunks are computed
    multi = open_store(path)
    assert multi.complete
    np.testing.assert_array_equal(np.asarray(multi.sketches[:]), np.asarray(single.sketches[:]))


def test_mismatched_shapes_and_store_configurations_are_refused(tmp_path):
    """Both refusals in one job (each is raised by every process alike, so the job goes on): the
    processes' examples differ in shape, then their sketches differ (seed)."""
    path = tmp_path / "bad.zarr"
    _launch(2, "refusals", tmp_path, path)
    for i in range(2):
        shapes, store = json.loads((tmp_path / f"refusals{i}.json").read_text())
        assert re.search(r"process 1 has .*\(n, 5\).* where process 0 has .*\(n, 4\)", shapes), shapes
        assert "different configurations (fields seed" in store, store
    assert not path.exists(), "nothing written before the processes agree"


def test_a_dying_process_fails_the_job_fast(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(dist.LaunchError) as err:
        _launch(2, "die", tmp_path, timeout=60)
    message = str(err.value)
    assert "process 1 of 2 failed" in message and "process 1 exits on purpose" in message
    assert "process 0:" in message  # every process is reported
    assert time.perf_counter() - t0 < 30, "the survivor must be stopped, not waited for"


def test_cli_launch_runs_a_script(tmp_path, capsys):
    from workbench.distributed.__main__ import main

    script = tmp_path / "hello.py"
    script.write_text("from workbench import distributed as d\ninfo = d.initialize()\n"
                      "print('hello from', info.process_index, 'of', info.process_count)\nd.shutdown()\n")
    assert main(["launch", "-n", "2", str(script)]) == 0
    out = capsys.readouterr().out
    assert "[p0] hello from 0 of 2" in out and "[p1] hello from 1 of 2" in out
    assert main(["launch", "-n", "2", str(tmp_path / "missing.py")]) == 1


def test_ot_panel_runs_a_job_and_keeps_a_history():
    from workbench.experiments.distributed import JobConfig, JobResult
    from workbench.ui.distributed import ot_job_panel

    xs, ys = W.ot_points()
    calls = []

    def fake_run_job(out_dir, num_processes, config):  # the panel's contract with run_job
        calls.append((num_processes, config.ot_points, config.epsilon))
        results = {"ot_x": xs, "ot_y": ys, "ot_u": np.zeros(len(xs)), "ot_v": np.zeros(len(ys)),
                   "ot_dual": np.asarray(1.0), "ot_steps": np.asarray(10), "ot_seconds": np.asarray(0.1)}
        return JobResult(num_processes, 1, results, 1.0)

    panel = ot_job_panel(fake_run_job, JobConfig(), num_processes=2)
    panel.controls["epsilon"].value = 0.2
    job, epsilon = panel.run()
    assert calls == [(2, 300, 0.2)] and epsilon == 0.2
    assert not any(c.disabled for c in panel.controls.values())

    def failing(out_dir, num_processes, config):
        raise dist.LaunchError("process 1 of 2 failed")

    failed = ot_job_panel(failing, JobConfig())
    assert failed.run() is None and isinstance(failed.last_error, dist.LaunchError)  # shown, not raised
    assert "process 1 of 2 failed" in failed.status.value


def test_fisher_and_ggn_add_l2_identity():
    """The package convention (curvature.operator): data curvature + l2 I for GGN and Fisher."""
    data, w0, _, _ = _local_data()
    for kind in ("ggn", "fisher"):
        kw = dict(predict_fn=W.predict_fn, output_loss_fn=W.output_loss_fn, chunk_size=4)
        plain = np.asarray(dist.curvature_operator(W.loss_fn, w0, data, kind, **kw).dense())
        with_l2 = np.asarray(dist.curvature_operator(W.loss_fn, w0, data, kind, l2=0.3, **kw).dense())
        np.testing.assert_allclose(with_l2 - plain, 0.3 * np.eye(plain.shape[0]), atol=1e-12)
