"""Scaling of the workbench's big operations over the char GPT family (1M, 3M, 10M, 30M params):
top-k GGN eigenpairs, SLQ spectral density, per-example gradient sketching into a zarr store,
the EK-FAC capture, fit and an EK-FAC influence query; warm time, first-call time and peak RSS.

Protocol (the project's timing rule: alternating fresh processes, medians):
- every (size, method) runs in a fresh child process (OMP_NUM_THREADS=1, one child at a time;
  peak RSS = VmHWM of that child). `--reps R` runs R rounds; each round runs every method once,
  the order rotated between rounds, so a load drift hits all methods alike. The tables report the
  median and the min-max over a (size, method)'s runs, and each floor ratio is taken within a
  round (a sketch run over the `pe_grads` run of the same round, `round` in the json; the floor's
  median where that round has none) before its median is taken.
- the parent polls each child's RSS and kills it above `--max-rss-gb` (8) or at `--timeout`.
- per-example work runs in chunks chosen by a memory rule (`--chunk 0`, the default): the largest
  power of two <= 32 with chunk x params x 4 B x 4 <= 6 GiB (4 = the measured peak RSS over one
  chunk's gradient bytes at 10M and chunk 32: 5.2 GB over 1.27 GB). 1M-10M: 32; 30M: 8.
- per-example rows first run one chunk (compile + one chunk, reported as `first`), then time the
  full run once; eigs/slq run a first full call, then the timed second call, except at the sizes in
  `--single-call-sizes` (30M), where the one call (compile included) is the time, an upper bound.
- rows carry `code`, a hash of `workbench/sketch/kinds/*.py`, so runs made before and after a
  sketch change are told apart (AFFD/AFJL rows before the mode cut are labelled `(before cut)`).

Params are the random init (`nnx.Rngs(0)`), float32: these are timings, not accuracy. Data
(`data.load_corpus`):
- curvature products (eigenpairs, SLQ): the first `--curv-seqs` training windows of
  `--curv-len` characters (default 8 x 128); the operator is the dataset-averaged GGN
  (`curvature.operator(fn, params, data, "ggn")`);
- per-example work (sketch store, EK-FAC): the first `--pe-seqs` windows of `--pe-len`
  characters (default 128 x 64) (the model is built with seq_len = pe-len, so its positional
  table is smaller: params are recorded per row).

Floor ratios (the method's warm time over the cost of the work it cannot avoid):
- eigenpairs / SLQ: time / (operator products made x one product `op.mv` timed alone, warm
  median of 3); target <= 1.3 (SLQ pushes its probes through the operator together, so a
  batched product can cost less per vector than one alone: a ratio below 1 is possible);
- sketch store: `write_gradient_store` time / per-example gradients alone (vmap(grad) over the
  same chunks, jitted, nothing written); target <= 1.5 for the paper's kinds (affd, afjl, qk);
  srht is our baseline kind; and the store time / one read of the per-example gradient bytes
  (jnp.sum over one [chunk, params] block x the number of chunks), target <= 5 for the best;
- EK-FAC fit (empirical Fisher, two passes + eigendecompositions) / one pass of
  `kfac.capture` over the same chunks (no target: a fit is at least two passes);
- influence query: `influence.make("ekfac", ..., factors=...)` + `.scores` of `--test-seqs`
  validation windows against the pe training set (time only; the factors are keyed to the
  training data, so both of its calls are full).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_scaling.py --sizes 1M,3M --reps 3 [--append]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_scaling.py --sizes 30M --timeout 600 --append

Writes benchmarks/results/scaling.{md,json,png} after every child (`--rewrite`: only the md/png).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent
METHODS = ("eigs", "slq", "pe_grads", "sketch_affd", "sketch_afjl", "sketch_qk", "sketch_srht", "sketch_dense",
           "ekfac_capture", "ekfac_fit", "ekfac_query")
TARGETS = {"eigs": 1.3, "slq": 1.3, "sketch_affd": 1.5, "sketch_afjl": 1.5, "sketch_qk": 1.5}

NOTES = """
Notes (this file's numbers):
- Recorded 2026-12-06 04:39-06:17 UTC on the 2-core box while a test-suite run (pytest -n 2), two
  other helpers' benchmarks and (niced) sketch tests of ours shared it: 1-minute load 8-16 at most new
  rows, 2-5 at the last ones (30M round 2, the 10M round), 3.7-7 at the rows of the earlier invocation
  (column `load`). Most new absolute times are therefore ~1.5-3x the earlier ones; read every time as
  +-2x and compare ratios within a round. The
  extreme case: the 30M EK-FAC fit took 348 s in the ekfac_fit row (load 11.1) and 57 s inside the
  30M ekfac_query child (`fit_s`, load 5.4, the same call), a factor 6 from the load alone.
- Runs: rows of the earlier invocation (same code, first full call then the timed full call, chunk
  32 = what the memory rule gives below 30M) count as one run each (`rep` 0 in the json) for every
  method whose code did not change; AFFD/AFJL rows measured before the mode cut (commit 0d9d631) are
  listed apart as `(before cut)`. New runs: 1M: 3 rounds of every method; 3M: 2 rounds of the
  per-example methods, a third of pe_grads/afjl/affd and one new eigs/slq run; 10M: one new round
  (06:06-06:17 UTC, load ~2-5; its slq child was stopped by the session's deadline after 96 s, so
  10M slq has the earlier run only); 30M: round 1
  (04:40-05:10, load 8-14: pe_grads, AFJL before the cut, QK, capture, fit; eigs timed out), eigs and
  slq on 2 windows (load ~10), the query (load 5), and round 2 (06:00-06:06, load 2-3: pe_grads, AFJL
  after the cut, AFFD, SRHT). The load fell from ~13 to ~2 between the two 30M rounds: pe_grads took
  83 s in round 1 and 13 s in round 2, so 30M medians over those two runs mean little; the ratios are
  taken within each round.
- 30M: the memory rule gives chunks of 8 (8 x 28.5M x 4 B = 0.9 GB of gradients): pe_grads peaked at
  3.5 GB, the EK-FAC fit at 5.3 GB, afjl/qk at 2.5-2.8 GB. eigs/slq on 8 windows of 128 ran past their
  600 s timeout at load 13.6 (row `failed`); rerun on 2 windows (`2 windows`) as a single call
  (compile included): eigs peaked at 7.1 GB, mostly the depth-40 Krylov basis (40 x 114 MB = 4.6 GB).
  At 30M the full reorthogonalisation (every step reads the whole basis) is no longer small next to a
  product on 2 windows (1.6-2.1 s), and the single call includes the compile: eigs' 30M ratio is an
  upper bound, not a like-for-like point of the curve.
- eigs/slq floor ratios below 1: the product "alone" (a jitted `op.mv`, median of 3) costs more per
  call than a product inside the solver's compiled loop at some sizes; the chained-loop floor (line
  below the table) is the fairer floor. The eigs rows converged all 5 pairs in the first 40-product
  pass (no restart ran).
- AFFD, where the time goes (profile, 3M, a [8, 3.08M] block, load ~12; `jax.jit(...).lower().compile()`
  HLO read): padding to N = 2^22 and the signs ~0.40 s (one fresh [8, N] buffer), the full first
  transform H^{pi1} ~1.76 s (73%), the second transform ~0.44 s, against 0.02-0.05 s to read the
  block. H^{pi1} cannot be cut (G_v needs all N coordinates before H^{pi2}): it is log_16 N = 6
  Kronecker modes, each lowered by XLA to a transpose copy that brings the mode's axis last plus a
  [b N / 16, 16] x [16, 16] matrix product (XNNPACK fusion): one middle mode 0.59 s against 0.25 s
  for the same product on an axis that is already last. Per example that is ~170-200 flops per padded
  coordinate (0.7 GFlop at 3M, 6.6 GFlop at 30M) in small-K matrix products, next to ~6 x params x 64
  tokens (1.2 / 11 GFlop) in the gradient's large ones, so AFFD stays at ~2-5x pe_grads here; 1.5x would
  need a cache-blocked in-place Hadamard kernel (a custom call), not a re-layout in jnp.
- What changed (commit 0d9d631): AFFD's H^{pi2} and AFJL's H^{pi1} keep only the rows of EVERY
  Kronecker mode that the first D outputs touch (was: the leading mode only, the other modes computed
  in full and cropped). Results are bit-for-bit identical (one-row modes are computed as two rows:
  XLA sums a matrix-vector product in another order; test_affd_afjl_cut_every_kronecker_mode_bit_for_bit,
  float32 and float64). Same process, alternating, 3M, [8, 3.08M] block, load ~12: AFJL's transform
  0.88 -> 0.55 s (0.63x), AFFD's 2.33 -> 2.16 s (0.93x: its full first transform is untouched). Fused
  with the gradients as the store runs them (one jit of vmap(grad) + ravel + apply, 3M, one chunk of
  32, same process, alternating, medians of 3, load ~7-10, outputs bit-identical): gradients alone
  0.85 s, +AFJL 1.59 -> 1.42 s (0.89x), +AFFD 3.53 -> 3.33 s (0.94x). At the store level that change is
  smaller than the load noise between rounds: the `(before cut)` rows (load 5-7) and the new ones
  (load 8-16) are not a before/after comparison.
- Tried and dropped: every mode as a product on the last axis plus swapaxes (1.4x slower, and not bit-
  identical); einsum 'ij,bjr->bri' (same program, same time); the first mode as a fused multiply-
  reduce instead of a matrix product (7x slower).
- `x read` (sketch store / one read of the per-example gradient bytes; target <= 5 for the best
  structured sketch) is not reachable as defined: the per-example gradients alone cost 35-80x one read
  (pe_grads' own `x read`), because a transformer's per-example backward pass is compute-bound, and a
  store can only add to them. The bracketed number (store minus pe_grads, over the read) is what the
  sketch itself adds; qk and afjl add the least. Even that increment cannot reach a few reads here:
  writing one fresh [8, 3.08M] float32 buffer (x * 2) took 0.38 s against 0.05 s to read it (load 14),
  and every sketch writes at least the padded, sign-flipped copy of its input.
- pe_grads' peak RSS includes a flat copy of one chunk's gradients made for the read measurement.
  ekfac_query's peak includes the fit (done once in that child, `fit_s` in the json) and the estimator's
  cached training features. The EK-FAC fit is 4.5-8x one capture pass (a fit is two passes, the second
  forming per-example layer gradients in the eigenbasis, plus eigendecompositions).
"""

CHILD = r'''
import json, os, sys, tempfile, time, shutil
load = os.getloadavg()
import numpy as np, jax, jax.numpy as jnp
from flax import nnx
from workbench import curvature, data, gpt, models, spectrum, influence
from workbench import sketch as sk
from workbench.core.per_example import per_example_grads, mean_loss
from workbench.curvature import kfac

MEM_FACTOR, MEM_BUDGET = 4, 6 * 2**30

def vmhwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

def timed(f, warmup=None):
    # first: `warmup` (compile + one chunk for per-example work) or the full call; then the timed full call.
    # a["single_call"]: the full call once, compile included (an upper bound on the warm time)
    t0 = time.perf_counter(); out = jax.block_until_ready((warmup or f)()); first = time.perf_counter() - t0
    if a.get("single_call") and warmup is None:
        return out, first, first
    t0 = time.perf_counter(); out = jax.block_until_ready(f()); warm = time.perf_counter() - t0
    return out, first, warm

a = json.loads(sys.argv[1])
size, method = a["size"], a["method"]
curv = method in ("eigs", "slq")
seq_len = a["curv_len"] if curv else a["pe_len"]
corpus = data.load_corpus(seq_len=seq_len)
config = gpt.gpt_config(size, len(corpus.vocab), seq_len)
fn = models.functional(gpt.GPT(config, rngs=nnx.Rngs(0)))
params = fn.params
n_params = int(sum(x.size for x in jax.tree.leaves(params)))
row = dict(size=size, method=method, num_params=n_params, load_at_start=load, seq_len=seq_len,
           single_call=bool(a.get("single_call")) and (curv or method == "ekfac_query"))
key = jax.random.key(0)

if curv:
    ds = corpus.train.take(np.arange(a["curv_seqs"]))
    row["examples"] = a["curv_seqs"]
    op = curvature.operator(fn, params, ds, "ggn")
    if method == "eigs":
        f = lambda: spectrum.top_eigenpairs(op, key, a["k"], max_restarts=a["max_restarts"], unconverged="return")
        res, first, warm = timed(f)
        row.update(products=int(res.num_matvecs), converged=int(np.sum(np.asarray(res.converged))),
                   values=[float(v) for v in np.asarray(res.values)], k=a["k"])
    else:
        f = lambda: spectrum.spectral_density(op, key, a["slq_iters"], a["slq_probes"])
        res, first, warm = timed(f)
        row.update(products=a["slq_iters"] * a["slq_probes"], slq_iters=a["slq_iters"], slq_probes=a["slq_probes"])
    row.update(first_s=first, time_s=warm, peak_rss_mb=vmhwm())
    mv = jax.jit(lambda o, v: o.mv(v))
    v = jax.random.normal(jax.random.key(1), (op.dim,), op.dtype)
    jax.block_until_ready(mv(op, v))
    ts = []
    for _ in range(3):
        t0 = time.perf_counter(); jax.block_until_ready(mv(op, v)); ts.append(time.perf_counter() - t0)
    row["product_s"] = float(np.median(ts))
    row["floor_s"] = row["products"] * row["product_s"]
    row["floor_ratio"] = warm / row["floor_s"]
    # the same products chained in one compiled loop (as the solvers run them): XLA may hoist the
    # loop-invariant forward pass out of the loop, so a product there can cost less than one alone
    reps = 4 if a.get("single_call") else 8
    chain = jax.jit(lambda o, v: jax.lax.fori_loop(0, reps, lambda i, u: (lambda w: w / jnp.linalg.norm(w))(o.mv(u)), v))
    jax.block_until_ready(chain(op, v))
    t0 = time.perf_counter(); jax.block_until_ready(chain(op, v)); row["product_in_loop_s"] = (time.perf_counter() - t0) / reps
    row["loop_floor_ratio"] = warm / (row["products"] * row["product_in_loop_s"])
else:
    train = corpus.train.take(np.arange(a["pe_seqs"]))
    row["examples"] = a["pe_seqs"]
    chunk = a["chunk"]
    if chunk <= 0:  # the memory rule: the largest power of two <= 32 whose gradients x 4 fit in 6 GiB
        chunk = 32
        while chunk > 1 and chunk * n_params * 4 * MEM_FACTOR > MEM_BUDGET:
            chunk //= 2
    nchunks = -(-a["pe_seqs"] // chunk)
    chunks = [train.take(np.minimum(np.arange(lo, lo + chunk), a["pe_seqs"] - 1)) for lo in range(0, a["pe_seqs"], chunk)]
    loss = mean_loss(fn.per_example_loss_fn)
    row["chunk"] = chunk
    if method == "pe_grads":
        g = jax.jit(lambda p, b: per_example_grads(loss, p, b))
        def run(cs=chunks):
            out = None
            for b in cs:
                out = jax.block_until_ready(g(params, b))
            return out
        out, first, warm = timed(run, lambda: run(chunks[:1]))
        row.update(first_s=first, time_s=warm, products=nchunks, peak_rss_mb=vmhwm())
        flat = jnp.concatenate([x.reshape(chunk, -1) for x in jax.tree.leaves(out)], axis=1)
        del out
        read = jax.jit(jnp.sum)
        jax.block_until_ready(read(flat))
        ts = []
        for _ in range(5):
            t0 = time.perf_counter(); jax.block_until_ready(read(flat)); ts.append(time.perf_counter() - t0)
        row["read_chunk_s"] = float(np.median(ts))
        row["read_s"] = row["read_chunk_s"] * nchunks
        row["grad_bytes_mb"] = flat.size * 4 * nchunks / 2**20
    elif method.startswith("sketch_"):
        kind = method[len("sketch_"):]
        opts = {"materialize_max": 0} if kind == "dense" else {}
        s = sk.make(kind, jax.random.key(2), n_params, a["sketch_dim"], **opts)
        tmp = tempfile.mkdtemp(prefix="scaling_store_")
        paths = iter([os.path.join(tmp, "s1.zarr"), os.path.join(tmp, "s2.zarr")])
        f = lambda d=train: sk.write_gradient_store(fn, params, d, s, next(paths), chunk_size=chunk)
        _, first, warm = timed(lambda: 0 if f() is None else 0, lambda: 0 if f(train.take(np.arange(chunk))) is None else 0)
        shutil.rmtree(tmp, ignore_errors=True)
        row.update(first_s=first, time_s=warm, products=nchunks, peak_rss_mb=vmhwm(), sketch_dim=a["sketch_dim"])
    elif method == "ekfac_capture":
        cap = jax.jit(lambda p, b: kfac.capture(fn, p, b, fisher="empirical"))
        def run(cs=chunks):
            for b in cs:
                jax.block_until_ready(cap(params, b))
            return 0
        _, first, warm = timed(run, lambda: run(chunks[:1]))
        row.update(first_s=first, time_s=warm, products=nchunks, peak_rss_mb=vmhwm())
    elif method in ("ekfac_fit", "ekfac_query"):
        fit = lambda d=train: kfac.fit(fn, params, d, fisher="empirical", chunk_size=chunk)
        if method == "ekfac_fit":
            factors, first, warm = timed(lambda: fit(), lambda: fit(train.take(np.arange(chunk))))
            row.update(first_s=first, time_s=warm, products=2 * nchunks, peak_rss_mb=vmhwm())
        else:
            t0 = time.perf_counter(); factors = jax.block_until_ready(fit()); warm = time.perf_counter() - t0
            test = corpus.validation.take(np.arange(a["test_seqs"]))
            def q():  # the factors are keyed to the training data: both calls are full
                est = influence.make("ekfac", fn, params, train, factors=factors, fisher="empirical", chunk_size=chunk)
                return est.scores(test)
            scores, qf, qw = timed(q)
            row.update(first_s=qf, time_s=qw, products=nchunks, peak_rss_mb=vmhwm(), test_seqs=a["test_seqs"],
                       scores_shape=list(np.shape(scores)), fit_s=warm)
print("ROW " + json.dumps(row), flush=True)
'''


def machine_line():
    import jax

    return (f"{platform.machine()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}, JAX {jax.__version__} "
            f"({jax.default_backend()}), float32")


def _code_tag():
    """Short hash of the sketch kinds' sources: which code a row measured (the runs span a change)."""
    import hashlib

    src = b"".join(p.read_bytes() for p in sorted((ROOT / "workbench" / "sketch" / "kinds").glob("*.py")))
    return hashlib.sha1(src).hexdigest()[:8]


CODE_TAG = _code_tag()


def run_child(args, size, method, timeout):
    """One (size, method) in a fresh process; killed when its RSS passes `--max-rss-gb` or at `timeout`."""
    payload = dict(size=size, method=method, curv_seqs=args.curv_seqs, curv_len=args.curv_len, pe_seqs=args.pe_seqs,
                   pe_len=args.pe_len, chunk=args.chunk, k=args.k, max_restarts=args.max_restarts,
                   slq_iters=args.slq_iters, slq_probes=args.slq_probes, sketch_dim=args.sketch_dim,
                   test_seqs=args.test_seqs, single_call=size in args.single_call_sizes.split(","))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), WORKBENCH_JAX_CACHE="off")
    start = time.time()
    load = os.getloadavg()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(payload)], stdout=out, stderr=err, text=True,
                             env=env, cwd=ROOT)
        why, rss_seen = None, 0.0
        while p.poll() is None:
            rss_seen = max(rss_seen, _rss_gb(p.pid))
            if rss_seen > args.max_rss_gb:
                why = f"killed by the benchmark: RSS {rss_seen:.1f} GB > {args.max_rss_gb} GB"
            elif time.time() - start > timeout:
                why = f"timeout after {timeout:.0f} s"
            if why:
                p.kill()
                p.wait()
                return dict(size=size, method=method, skipped=why, load_at_start=load)
            time.sleep(0.2)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    for line in stdout.splitlines():
        if line.startswith("ROW "):
            row = json.loads(line[4:])
            row["child_wall_s"] = time.time() - start
            row["code"] = CODE_TAG
            return row
    last = (stderr.strip().splitlines() or ["no output"])[-1][:300]
    return dict(size=size, method=method, skipped=f"failed (rc {p.returncode}): {last}", load_at_start=load)


def _rss_gb(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def _round(r):
    """The round a row ran in (its invocation's start and round number; older rows: `rep`)."""
    return str(r.get("round", r.get("rep", 1)))


def derive(rows):
    """Fill the ratios that need a second row of the same size: each run is divided by the floor row of
    the same size and round (`rep`), or by that row's median when its round did not run."""
    ok = [r for r in rows if "skipped" not in r]
    by = {(r["size"], r["method"], _round(r)): r for r in ok}

    def base(size, method, rep):
        if (size, method, rep) in by:
            return by[size, method, rep]
        same = [r for r in ok if (r["size"], r["method"]) == (size, method)]
        if not same:
            return None
        return {k: float(np.median([r[k] for r in same])) for k in ("time_s", "read_s") if k in same[0]}

    for r in ok:
        m, s, rep = r["method"], r["size"], _round(r)
        pe = base(s, "pe_grads", rep)
        if m.startswith("sketch_") and pe:
            r["floor_ratio"] = r["time_s"] / pe["time_s"]
            r["over_read"] = r["time_s"] / pe["read_s"]
            r["increment_over_read"] = (r["time_s"] - pe["time_s"]) / pe["read_s"]
        if m == "ekfac_fit" and (cap := base(s, "ekfac_capture", rep)):
            r["floor_ratio"] = r["time_s"] / cap["time_s"]
        if m == "ekfac_capture" and pe:
            r["over_pe_grads"] = r["time_s"] / pe["time_s"]
        if m == "pe_grads":
            r["over_read"] = r["time_s"] / r["read_s"]


BEFORE_CUT = "95ce07e9"  # `code` of the sketch kinds before AFFD/AFJL cut every Kronecker mode (commit 0d9d631)
SIZES = ("1M", "3M", "10M", "30M")


def label(r):
    """The row's method, with AFFD/AFJL rows measured before the mode cut told apart."""
    if r["method"] in ("sketch_affd", "sketch_afjl") and r.get("code") == BEFORE_CUT:
        return r["method"] + " (before cut)"
    return r["method"]


def _order(key):
    size, lab = key
    m = lab.split(" ")[0]
    return (SIZES.index(size) if size in SIZES else 99, METHODS.index(m) if m in METHODS else 99, lab != m)


def summarize(rows):
    """One line per (size, method): medians and min-max over its fresh-process runs."""
    out = []
    keys = sorted(dict.fromkeys((r["size"], label(r)) for r in rows), key=_order)
    for size, method in keys:
        runs = [r for r in rows if (r["size"], label(r)) == (size, method)]
        good = [r for r in runs if "skipped" not in r]
        line = dict(size=size, method=method, runs=len(good), failed=[r["skipped"] for r in runs if "skipped" in r])
        if good:
            line["num_params"] = good[0]["num_params"]
            line["chunk"] = good[0].get("chunk")
            for k in ("time_s", "first_s", "floor_ratio", "loop_floor_ratio", "over_read", "increment_over_read",
                      "over_pe_grads", "read_s", "product_s", "product_in_loop_s", "peak_rss_mb"):
                vals = [r[k] for r in good if k in r]
                if vals:
                    line[k] = dict(median=float(np.median(vals)), min=float(min(vals)), max=float(max(vals)))
            line["load"] = [float(np.median([r["load_at_start"][0] for r in good])),
                            min(r["load_at_start"][0] for r in good), max(r["load_at_start"][0] for r in good)]
            line["single_call"] = any(r.get("single_call") for r in good)
            if method == "eigs":
                line["converged"] = f"{min(r['converged'] for r in good)}/{good[0]['k']}"
            line["products"] = good[0]["products"]
            line["examples"] = good[0].get("examples")
        out.append(line)
    return out


def write(rows, args, machine, started, command=None):
    derive(rows)
    RESULTS.mkdir(exist_ok=True)
    command = command or " ".join(["benchmarks/bench_scaling.py"] + sys.argv[1:])
    out = dict(machine=machine, command=command, settings=vars(args), started=started,
               updated=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), rows=rows)
    summary = summarize(rows)
    out["summary"] = summary
    (RESULTS / "scaling.json").write_text(json.dumps(out, indent=1))

    def spread(line, k, fmt="{:.2f}"):
        if k not in line:
            return ""
        v = line[k]
        if line["runs"] == 1:
            return fmt.format(v["median"])
        return f"{fmt.format(v['median'])} [{fmt.format(v['min'])}-{fmt.format(v['max'])}]"

    lines = [
        "# Scaling of the big operations over the char GPT family (CPU)", "",
        f"Machine: {machine}. Shared 2-core machine: a test-suite run and two other helpers' jobs ran beside "
        "these children; `load` is `os.getloadavg()` (1-minute) at the start of each child (median [min-max] over "
        "its runs). Each (size, method) ran in `runs` fresh processes, the methods alternating within each "
        "round so that load drifts hit all of them alike; times are the median [min-max] over those runs.", "",
        f"Command: `{out['command']}`. Random-init params (nnx.Rngs(0)), float32, OMP_NUM_THREADS=1, one child at a "
        f"time, each killed above {args.max_rss_gb} GB RSS or after its timeout.", "",
        f"Curvature products: GGN of the first {args.curv_seqs} training windows of {args.curv_len} chars; "
        f"top-{args.k} eigenpairs by thick-restart Lanczos (depth 40, at most {args.max_restarts} restarts, "
        f"`unconverged='return'`), SLQ {args.slq_iters} steps x {args.slq_probes} probes. Per-example work: "
        f"{args.pe_seqs} windows of {args.pe_len} chars in chunks chosen by the memory rule (column `chunk`): the "
        "largest power of two <= 32 with chunk x params x 4 B x 4 <= 6 GiB (4 = the measured peak over one "
        "chunk's gradient bytes at 10M, chunk 32: 5.2 GB over 1.27 GB); "
        f"sketches to D = {args.sketch_dim} written to a zarr store; EK-FAC with the empirical Fisher; the query "
        f"scores {args.test_seqs} validation windows against the same training windows.", "",
        "`time`: the warm call. Per-example rows: the child first runs one chunk (compile + one chunk: `first`), "
        "then times the full run. eigs/slq: a first full call (compile included), then a second timed one; rows "
        "marked `single call` ran once only (compile included, an upper bound; 30M, for time).", "",
        "Floor ratio: eigs/slq: time / (products x one product alone); sketch_*: store time / per-example "
        "gradients alone (`pe_grads`, the run of the same round); ekfac_fit: fit / one pass of `kfac.capture`. "
        "`x read`: time / one read (jnp.sum) of the per-example gradient bytes (pe_grads: the gradients "
        "themselves over that read); in brackets the store's time beyond the gradients, over that read.", "",
        "| size | params | method | chunk | runs | time s median [min-max] | first s | floor ratio median [min-max] "
        "| target | x read | peak RSS MB (max) | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for ln in summary:
        m = ln["method"]
        tgt = TARGETS.get(m.split(" ")[0])
        if not ln["runs"]:
            lines.append(f"| {ln['size']} | | {m} | | 0 | not run: {'; '.join(ln['failed'])} | | | "
                         f"{'' if tgt is None else '<= ' + str(tgt)} | | | |")
            continue
        met = ""
        if tgt is not None and "floor_ratio" in ln:
            met = " met" if ln["floor_ratio"]["median"] <= tgt else " MISSED"
        extra = ""
        if m == "eigs":
            extra = f" ({ln['converged']} converged)"
        if ln.get("single_call"):
            extra += " (single call)"
        if m in ("eigs", "slq") and ln.get("examples") != args.curv_seqs:
            extra += f" ({ln['examples']} windows)"
        if m == "pe_grads":
            extra = f" (read {ln['read_s']['median']:.3f} s)"
        if m == "ekfac_capture" and "over_pe_grads" in ln:
            extra = f" ({ln['over_pe_grads']['median']:.2f}x pe_grads)"
        if ln["failed"]:
            extra += f" ({len(ln['failed'])} more failed: {ln['failed'][0]})"
        xread = ""
        if "over_read" in ln:
            xread = f"{ln['over_read']['median']:.0f}"
            if "increment_over_read" in ln:
                xread += f" ({ln['increment_over_read']['median']:.0f})"
        load = ln["load"]
        lines.append(f"| {ln['size']} | {ln['num_params']:,} | {m}{extra} | {ln['chunk'] or ''} | {ln['runs']} | "
                     f"{spread(ln, 'time_s')} | {ln['first_s']['median']:.1f} | {spread(ln, 'floor_ratio')} | "
                     f"{'' if tgt is None else '<= ' + str(tgt)}{met} | {xread} | {ln['peak_rss_mb']['max']:.0f} | "
                     f"{load[0]:.1f} [{load[1]:.1f}-{load[2]:.1f}] |")
    rows_curv = [ln for ln in summary if "product_in_loop_s" in ln]
    lines += ["", "Products chained in one compiled loop (fori_loop, as the solvers run them) and the ratio against "
              "that floor (medians): " + ", ".join(
                  f"{ln['size']} {ln['method']} {ln['product_in_loop_s']['median'] * 1e3:.0f} ms/product, ratio "
                  f"{ln['loop_floor_ratio']['median']:.2f}" for ln in rows_curv) + "."]
    lines += ["", "One product alone (warm median of 3 in each child; median over children): " + ", ".join(
        f"{ln['size']} {ln['method']} {ln['product_s']['median'] * 1e3:.0f} ms" for ln in summary
        if "product_s" in ln) + "."]
    lines += ["", NOTES.strip()]
    (RESULTS / "scaling.md").write_text("\n".join(lines) + "\n")
    try:
        plot(summary)
    except Exception as e:  # noqa: BLE001  (the figure is optional)
        print("plot failed:", e, flush=True)


def plot(summary):
    """Median warm time, floor ratio and sketch time over one read vs params (log axes; bars: min-max
    over the fresh-process runs), with the targets drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, LogLocator

    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(18, 6))
    methods = list(dict.fromkeys(ln["method"] for ln in summary if ln["runs"]))
    methods.sort(key=lambda m: (METHODS.index(m.split(" ")[0]), m))
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
               "#17becf", "#000000"]
    for m in methods:
        color = palette[METHODS.index(m.split(" ")[0]) % len(palette)]
        for axis, key in ((ax, "time_s"), (bx, "floor_ratio"), (cx, "over_read")):
            pts = sorted((ln["num_params"], ln[key]) for ln in summary if ln["method"] == m and key in ln)
            if not pts:
                continue
            xs = [p for p, _ in pts]
            med = [v["median"] for _, v in pts]
            err = [[v["median"] - v["min"] for _, v in pts], [v["max"] - v["median"] for _, v in pts]]
            axis.errorbar(xs, med, yerr=err, marker="o", ms=4, capsize=3, color=color, label=m,
                          ls=":" if "before" in m else "--" if m.startswith("ekfac") else "-",
                          alpha=0.55 if "before" in m else 1.0)
    bx.axhline(1.3, color="k", ls=":", lw=1)
    bx.annotate("target 1.3 (eigs, slq: x products)", (0.02, 1.22), xycoords=("axes fraction", "data"), fontsize=8)
    bx.axhline(1.5, color="r", ls=":", lw=1)
    bx.annotate("target 1.5 (affd, afjl, qk: x pe_grads)", (0.02, 1.56), xycoords=("axes fraction", "data"),
                fontsize=8, color="r")
    bx.axhline(1.0, color="gray", lw=0.5)
    cx.axhline(5, color="r", ls=":", lw=1)
    cx.annotate("target 5 (best sketch: x one read)", (0.02, 5.4), xycoords=("axes fraction", "data"), fontsize=8,
                color="r")
    for axis in (ax, bx, cx):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("parameters")
        axis.grid(True, which="both", alpha=0.3)
        axis.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
        axis.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        axis.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_ylabel("warm time (s): median over fresh processes, bars min-max")
    ax.set_title("time vs params (char GPT, shared 2-core CPU)")
    bx.set_ylabel("time / floor: median, bars min-max")
    bx.set_title("floor ratios (ekfac_fit: x one capture pass, no target)")
    cx.set_ylabel("time / one read of the per-example gradient bytes")
    cx.set_title("sketch stores and pe_grads over one read")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(RESULTS / "scaling.png", dpi=100)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1M,3M,10M,30M")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--reps", type=int, default=1, help="rounds: every method once per round, in a fresh process")
    ap.add_argument("--curv-seqs", type=int, default=8)
    ap.add_argument("--curv-len", type=int, default=128)
    ap.add_argument("--pe-seqs", type=int, default=128)
    ap.add_argument("--pe-len", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=0, help="examples per chunk; 0 = the memory rule")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--max-restarts", type=int, default=2)
    ap.add_argument("--slq-iters", type=int, default=20)
    ap.add_argument("--slq-probes", type=int, default=2)
    ap.add_argument("--sketch-dim", type=int, default=4096)
    ap.add_argument("--test-seqs", type=int, default=4)
    ap.add_argument("--single-call-sizes", default="30M", help="sizes whose eigs/slq run once (compile included)")
    ap.add_argument("--max-rss-gb", type=float, default=8.0)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--deadline-s", type=float, default=2400, help="start no child after this many seconds")
    ap.add_argument("--append", action="store_true", help="keep the rows already in scaling.json (new runs add reps)")
    ap.add_argument("--rewrite", action="store_true", help="only rewrite the md and png from scaling.json")
    args = ap.parse_args()
    if args.rewrite:
        old = json.loads((RESULTS / "scaling.json").read_text())
        settings = {**vars(args), **old["settings"]}
        write(old["rows"], argparse.Namespace(**settings), old["machine"], old["started"], old["command"])
        return
    t0 = time.time()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    machine = machine_line()
    rows = []
    if args.append and (RESULTS / "scaling.json").exists():
        rows = json.loads((RESULTS / "scaling.json").read_text())["rows"]
    methods = args.methods.split(",")
    for rnd in range(args.reps):
        order = methods[rnd % len(methods):] + methods[:rnd % len(methods)]  # rotate: alternate the order too
        for size in args.sizes.split(","):
            for method in order:
                left = args.deadline_s - (time.time() - t0)
                rep = 1 + sum((r["size"], r["method"]) == (size, method) and r.get("rep", 1) >= 1 for r in rows)
                if method == "sketch_dense":
                    if rep > 1:
                        continue
                    row = dict(size=size, method=method,
                               skipped="dense Gaussian D=4096 x params: stored >= 16 GB, on the fly O(params x D) "
                                       "per example (hours); srht is the unstructured-cost baseline")
                elif left < 30:
                    print(f"deadline: {size} {method} round {rnd + 1} not started", flush=True)
                    continue
                else:
                    row = run_child(args, size, method, min(args.timeout, left))
                row["rep"] = rep
                row["round"] = f"{started} {rnd + 1}"
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "values"}), flush=True)
                write(rows, args, machine, started)


if __name__ == "__main__":
    main()
