"""The char GPT family on this machine's CPU: parameters, time per training step, peak memory, and
how far the 1M model gets in a few minutes.

Each size runs in a fresh process (peak RSS, VmHWM, is per process): `workbench.train.train` on
`data.load_corpus(seq_len=128)` at batch 16 x 128 characters, float32, Adam; a first call of
`warm_steps` steps compiles, a second call of the same length is timed (the compiled chunk is
reused). The 1M run trains for `--seconds` of wall time after its first (compiling) chunk of
50 steps, stopped by a callback, then evaluates the validation loss
over the whole held-out split, compares it with the held-out unigram entropy (the best loss
without context), and prints a sampled continuation. Writes --out PATH.{json,md}
(benchmarks/results/gpt.{json,md} by default).

    WORKBENCH_JAX_CACHE=off .venv/bin/python benchmarks/bench_gpt.py --seconds 0 --out benchmarks/results/gpt_steps
    WORKBENCH_JAX_CACHE=off .venv/bin/python benchmarks/bench_gpt.py --sizes "" --out benchmarks/results/gpt_train
"""

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"

STEP_SCRIPT = r'''
import json, sys, time
import jax, optax
from flax import nnx
from workbench import data, gpt, models, train

def status_mb(field):  # VmHWM: the peak resident set; VmRSS: the current one
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

size, warm_steps = sys.argv[1], int(sys.argv[2])
corpus = data.load_corpus(seq_len=128)
config = gpt.gpt_config(size, len(corpus.vocab), 128)
fn = models.functional(gpt.GPT(config, rngs=nnx.Rngs(0)))
built_mb = status_mb("VmRSS")  # JAX, the corpus and the model's params, before any compilation
kwargs = dict(optimizer=optax.adam(1e-3), num_steps=warm_steps, batch_size=16, steps_per_chunk=warm_steps,
              progress=False)
start = time.perf_counter()
first = train.train(fn, fn.params, corpus.train, jax.random.key(0), **kwargs)
jax.block_until_ready(first.params)
first_s = time.perf_counter() - start
start = time.perf_counter()
second = train.train(fn, first.params, corpus.train, jax.random.key(1), **kwargs)
jax.block_until_ready(second.params)
step_s = (time.perf_counter() - start) / warm_steps
print(json.dumps({"size": size, "num_params": gpt.count_params(config), "d_model": config.d_model,
                  "num_heads": config.num_heads, "num_layers": config.num_layers,
                  "first_call_s": first_s, "step_s": step_s, "tokens_per_s": 16 * 128 / step_s,
                  "rss_built_mb": built_mb, "peak_rss_mb": status_mb("VmHWM"), "loss_after": float(second.history["loss"][-1])}))
'''

TRAIN_SCRIPT = r'''
import json, sys, time
import jax, jax.numpy as jnp, numpy as np, optax
from flax import nnx
from workbench import data, gpt, models, train

seconds, size = float(sys.argv[1]), sys.argv[2]
corpus = data.load_corpus(seq_len=128)
config = gpt.gpt_config(size, len(corpus.vocab), 128)
fn = models.functional(gpt.GPT(config, rngs=nnx.Rngs(0)))
batch_loss = jax.jit(lambda params, batch: jnp.sum(fn.per_example_loss_fn(params, batch)))

def validation_loss(params, chunk=64):  # every held-out window, 64 at a time
    n = len(corpus.validation)
    total = sum(float(batch_loss(params, corpus.validation.take(slice(s, s + chunk)))) for s in range(0, n - chunk + 1, chunk))
    rest = n % chunk
    if rest:
        total += float(jnp.sum(fn.per_example_loss_fn(params, corpus.validation.take(slice(n - rest, n)))))
    return total / n

chunk_steps, peak_lr = 50, 1e-3
horizon = 5000  # the schedule's length, longer than a few minutes' run: warm up, then a slow cosine
schedule = optax.warmup_cosine_decay_schedule(0.0, peak_lr, 100, horizon, peak_lr / 10)
optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.1))
key = jax.random.key(0)


class TimeUp(Exception):
    """Raised by the callback once the budget is spent: train.train has no wall-clock stop."""


run = {}

def callback(step, params):  # the host wakes every chunk_steps steps
    now = time.perf_counter()
    if step == chunk_steps:  # the first chunk is done: compilation is behind us
        run["t0"], run["s0"] = now, step
    run["params"], run["step"], run["t"] = params, step, now
    if "t0" in run and now - run["t0"] >= seconds:
        raise TimeUp


start = time.perf_counter()
try:
    train.train(fn, fn.params, corpus.train, key, optimizer=optimizer, num_steps=horizon, batch_size=16,
                steps_per_chunk=chunk_steps, callback=callback, callback_every=chunk_steps, progress=False)
except TimeUp:
    pass
num_steps = run["step"]
train_s = run["t"] - run["t0"]  # the steps after the first chunk
step_s = train_s / (num_steps - run["s0"])
first_chunk_s = run["t0"] - start
params = run["params"]
val = validation_loss(params)
val_init = validation_loss(fn.params)
unigram = data.unigram_entropy(corpus.validation.y)
prompt = "def __init__(self"
ids = gpt.generate(fn, params, data.encode(prompt, corpus.vocab), jax.random.key(7), 200, temperature=0.8)
greedy = gpt.generate(fn, params, data.encode(prompt, corpus.vocab), None, 120, temperature=0)
print(json.dumps({"size": size, "num_steps": num_steps, "train_s": train_s, "first_chunk_s": first_chunk_s,
                  "step_s": step_s,
                  "tokens_seen": num_steps * 16 * 128, "epochs": num_steps * 16 / len(corpus.train),
                  "validation_loss": val,
                  "validation_loss_at_init": val_init, "validation_unigram_entropy": unigram,
                  "below_unigram": unigram - val, "prompt": prompt,
                  "sampled_t0.8": data.decode(ids, corpus.vocab), "greedy": data.decode(greedy, corpus.vocab)}))
'''


def run(script, *args):
    out = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


NOTES = """Timings come from a shared 2-core machine (other jobs running: a load average of 3 to 7
during the recorded runs; later runs record it in the machine line): step times of one size varied by up to 2x
between runs of this script (1M 0.24-0.39 s, 3M 0.78-1.5 s, 10M 1.8-3.8 s, 30M 5.0-8.7 s), so read
them as orders of magnitude, roughly 0.25 s per million parameters per 2048-token step. "RSS
built" is the resident set after importing JAX, loading the corpus and building the model;
the peak adds compilation, the optimizer state and the activations of a step."""


def write(out: Path, report: dict) -> None:
    """Write `report` as out.json and a readable out.md."""
    machine, rows, trained = report["machine"], report["steps"], report["trained"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    lines = ["# Char GPT sizes on CPU", "", f"{machine}", "", NOTES, ""]
    if rows:
        lines += ["| size | params | d_model | heads | layers | first call (s) | step (s) | tokens/s "
                  "| RSS built (MB) | peak RSS (MB) |",
                  "|------|--------|---------|-------|--------|----------------|----------|----------"
                  "|----------------|---------------|"]
        lines += [f"| {r['size']} | {r['num_params']:,} | {r['d_model']} | {r['num_heads']} | {r['num_layers']} | "
                  f"{r['first_call_s']:.1f} | {r['step_s']:.3f} | {r['tokens_per_s']:.0f} | {r['rss_built_mb']:.0f} | "
                  f"{r['peak_rss_mb']:.0f} |" for r in rows]
    if trained:
        lines += ["", f"1M for {trained['num_steps']} steps of 16 x 128 characters ({trained['first_chunk_s']:.0f} s "
                  f"for the first 50 with compilation, then {trained['train_s']:.0f} s; {trained['epochs']:.2f} "
                  f"epochs): validation loss {trained['validation_loss']:.3f} nats (at init "
                  f"{trained['validation_loss_at_init']:.3f}), held-out unigram entropy "
                  f"{trained['validation_unigram_entropy']:.3f}: {trained['below_unigram']:.3f} below it.", "",
                  "Sampled at temperature 0.8 after the prompt `" + trained["prompt"] + "`:", "", "```",
                  trained["prompt"] + trained["sampled_t0.8"], "```"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1M,3M,10M,30M")
    parser.add_argument("--warm-steps", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=180.0, help="the 1M training run's wall-time budget (0: skip)")
    parser.add_argument("--out", default=str(RESULTS / "gpt"))
    parser.add_argument("--render", action="store_true", help="only rewrite --out's .md from its .json")
    args = parser.parse_args()
    out = Path(args.out)
    if args.render:
        report = json.loads(out.with_suffix(".json").read_text())
        report.setdefault("trained", None)
        write(out, report)
        return
    machine = {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
               "cache": os.environ.get("WORKBENCH_JAX_CACHE", "on"), "load_at_start": os.getloadavg()[0]}
    rows = []
    for size in filter(None, args.sizes.split(",")):
        rows.append(run(STEP_SCRIPT, size, args.warm_steps))
        print(json.dumps(rows[-1]), flush=True)
    trained = run(TRAIN_SCRIPT, args.seconds, "1M") if args.seconds > 0 else None
    if trained:
        print(json.dumps(trained), flush=True)
    machine["load_at_end"] = os.getloadavg()[0]
    write(out, {"machine": machine, "steps": rows, "trained": trained})


if __name__ == "__main__":
    main()
