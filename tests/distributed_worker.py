"""The multi-process side of tests/test_distributed.py: run by `workbench.distributed.launch` as
every process of a job, `python distributed_worker.py MODE OUT [options]`.

Modes: `checks` (Hessian, GGN and Fisher operators, top eigenpairs, spectral density, trace,
L-BFGS (replicated and with block-sharded parameters), OWL-QN and entropic OT on data split
across the processes; every process writes OUT/p{K}.npz), `store PATH` (the multi-process gradient store; `--fail-chunk C`
makes the process owning chunk C die there), `refusals PATH` (the processes' examples differ
in shape, then their store configurations differ; each process writes the two errors to
OUT/refusals{K}.json), `die` (process 1 dies while process 0 waits in a collective).
The problems are defined here so the test computes its one-process references from the same code.
"""

import os
import sys

import numpy as np
import optax

N, D, K = 37, 4, 3  # examples, features, classes: 15 parameters
L2 = 0.05
EPS_OT, N_OT, M_OT = 0.1, 41, 29


def problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D))
    y = rng.integers(0, K, N)
    w0 = {"w": rng.normal(size=(D, K)) * 0.3, "b": rng.normal(size=(K,)) * 0.1}
    return x, y, w0


def ot_points():
    rng = np.random.default_rng(1)
    return rng.normal(size=(N_OT, 2)), rng.normal(size=(M_OT, 2)) * 0.5 + 1.0


def predict_fn(params, x):
    return x @ params["w"] + params["b"]


def output_loss_fn(logits, y):
    import jax
    import jax.numpy as jnp

    return jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[:, None], -1)[:, 0]


def loss_fn(params, batch):
    import jax.numpy as jnp

    x, y = batch
    return jnp.mean(output_loss_fn(predict_fn(params, x), y)) + 0.5 * L2 * jnp.sum(params["w"] ** 2)


def binary_loss_fn(params, batch):  # logistic regression on "class 0 or not" (for L1)
    import jax.numpy as jnp

    x, y = batch
    z = x @ params["w"][:, 0] + params["b"][0]
    t = (y == 0).astype(z.dtype)
    return jnp.mean(jnp.logaddexp(0.0, z) - t * z)


def operator_results(dist, x, y, w0, kinds=("hessian",), spectra=True):
    import jax

    from workbench import spectrum

    out = {}
    data = dist.shard_examples((x[dist.local_block(N)], y[dist.local_block(N)]))
    for kind in kinds:
        op = dist.curvature_operator(loss_fn, w0, data, kind, predict_fn=predict_fn,
                                     output_loss_fn=output_loss_fn, chunk_size=4)
        out[f"{kind}_dense"] = dist.to_host(op.dense())
    op = dist.curvature_operator(loss_fn, w0, data, "hessian", chunk_size=4)
    eig = spectrum.top_eigenpairs(op, k=3, key=jax.random.key(0))
    out["eig_values"] = dist.to_host(eig.values)
    out["eig_vectors"] = dist.to_host(eig.vectors)
    if not spectra:
        return out
    dens = spectrum.spectral_density(op, jax.random.key(1), num_iters=10, num_probes=4, grid_size=200)
    out["density"] = dist.to_host(dens.density)
    out["trace"] = dist.to_host(spectrum.trace(op, jax.random.key(2), num_probes=8).estimate)
    return out


def minimise_results(dist, x, y, w0):
    out = {}
    blk = dist.local_block(N)
    data = dist.shard_examples((x[blk], y[blk]))
    r = dist.lbfgs(loss_fn, w0, data)
    out["lbfgs_w"], out["lbfgs_b"], out["lbfgs_value"] = r.params["w"], r.params["b"], r.value
    r = dist.owlqn(binary_loss_fn, {"w": np.zeros((D, 1)), "b": np.zeros((1,))}, data, l1=0.02)
    out["owlqn_w"], out["owlqn_b"], out["owlqn_value"] = r.params["w"], r.params["b"], r.value
    return out


def ot_results(dist, xs, ys):
    px = dist.shard_examples(xs[dist.local_block(N_OT)])
    py = dist.shard_examples(ys[dist.local_block(M_OT)])
    r = dist.entropic_ot(px, py, EPS_OT, chunk_size=8)
    return {"ot_u": r.u, "ot_v": r.v, "ot_dual": r.dual, "ot_cost": r.transport_cost}


def main(argv):
    from workbench import distributed as dist

    info = dist.initialize(timeout_s=60)
    import jax

    jax.config.update("jax_enable_x64", True)
    mode, out_dir = argv[0], argv[1]
    x, y, w0 = problem()
    if mode == "checks":
        results = operator_results(dist, x, y, w0, kinds=("hessian", "ggn", "fisher"))
        results.update(minimise_results(dist, x, y, w0))
        results.update(ot_results(dist, *ot_points()))
        # parameters sharded by block over the devices (the optimizer state with them)
        blk = dist.local_block(N)
        data = dist.shard_examples((x[blk], y[blk]))
        results["lbfgs_block_w"] = dist.lbfgs(loss_fn, dist.block_params(w0, data), data).params["w"]
        # the rows each process evaluates: its block (padded over its devices), or everything
        results["rows_per_process"] = np.asarray(dist.rows_per_process(data))
        results["load"] = dist.load_over_even_share(data, N)
        results["all_data_load"] = dist.load_over_even_share(dist.shard_examples((x, y)), N)
        np.savez(os.path.join(out_dir, f"p{info.process_index}.npz"), **results)
    elif mode == "refusals":  # each refusal is raised by every process alike, so the job goes on
        import json

        import jax.numpy as jnp

        from workbench import sketch as sk

        messages = []
        cols = D + (1 if info.process_index == 1 else 0)
        try:
            dist.shard_examples((np.zeros((5, cols)), np.zeros(5, np.int64)))
        except ValueError as err:
            messages.append(str(err))
        params = jax.tree.map(jnp.asarray, w0)
        s = sk.make("srht", jax.random.key(info.process_index), optax.tree.size(params), 6)  # seeds differ
        try:
            dist.gradient_store(loss_fn, params, (jnp.asarray(x), jnp.asarray(y)), s, argv[2], chunk_size=5, timeout_s=60)
        except ValueError as err:
            messages.append(str(err))
        with open(os.path.join(out_dir, f"refusals{info.process_index}.json"), "w") as f:
            json.dump(messages, f)
    elif mode == "store":
        import jax.numpy as jnp

        from workbench import sketch as sk

        path = argv[2]
        params = jax.tree.map(jnp.asarray, w0)
        s = sk.make("srht", jax.random.key(0), optax.tree.size(params), 6)
        fail = int(argv[argv.index("--fail-chunk") + 1]) if "--fail-chunk" in argv else None

        def callback(chunk, values):
            if chunk == fail:
                print(f"process {info.process_index} dies at chunk {chunk}", flush=True)
                os._exit(17)

        dist.gradient_store(loss_fn, params, (jnp.asarray(x), jnp.asarray(y)), s, path, chunk_size=5,
                            callback=callback, timeout_s=60)
    elif mode == "die":
        if info.process_index == 1:
            print("process 1 exits on purpose", flush=True)
            os._exit(3)
        data = dist.shard_examples((x[:5], y[:5]))  # a collective: waits for process 1 forever
        print(data)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    dist.shutdown(timeout_s=60)


if __name__ == "__main__":
    main(sys.argv[1:])
