"""The one-draw random stream behind the paper kinds (`workbench.sketch.kinds.randomness`): exact
distributions, determinism (also across processes and under vmap), and the compile budget it buys
(one threefry program per stream length, none in the initialisers)."""

import itertools
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench import sketch as sk
from workbench.sketch import base as core
from workbench.sketch.kinds import randomness

ROOT = Path(__file__).resolve().parents[1]
STREAM_KINDS = ("fjl", "ffd", "affd", "afjl", "qk", "dense")


def _stream(key, n):
    return randomness.Randomness(randomness.draw(key, randomness.bucket(n)))


def test_normal_and_rademacher_have_the_right_moments(key):
    r = _stream(key, 3 * 200_000)
    g = np.asarray(r.normal((200_000,)), np.float64)
    s = np.asarray(r.rademacher((200_000,)), np.float64)
    u = np.asarray(r.uniform((200_000,)), np.float64)
    se = 1 / np.sqrt(200_000)
    assert abs(g.mean()) < 5 * se and abs(g.var() - 1) < 5 * np.sqrt(2) * se
    assert abs(np.mean(g**4) - 3) < 5 * np.sqrt(96) * se  # Gaussian kurtosis, not just two moments
    assert set(np.unique(s)) == {-1.0, 1.0} and abs(s.mean()) < 5 * se
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 5 * se / np.sqrt(12)


@pytest.mark.parametrize("n", [7, 16, 1000])
def test_randint_is_uniform_over_its_range(key, n):
    draws = 60_000
    v = np.asarray(_stream(key, 2 * draws).randint((draws,), n))
    assert v.min() >= 0 and v.max() < n
    counts = np.bincount(v, minlength=n)
    chi2 = np.sum((counts - draws / n) ** 2 / (draws / n))
    assert chi2 < n - 1 + 6 * np.sqrt(2 * (n - 1))  # chi-square(n - 1) at ~6 sd


def test_mulhi_is_exact_against_python_integers():
    x = np.array([0, 1, 2**16 - 1, 2**16, 2**31 + 12345, 2**32 - 1, 987654321], np.uint32)
    for s in (1, 3, 1000, 2**16 + 7, 2**31 - 1, 2**32 - 1):
        got = np.asarray(randomness._mulhi(jnp.asarray(x), s))
        np.testing.assert_array_equal(got, [(int(v) * s) >> 32 for v in x])


def test_permutations_are_uniform(key):
    p = np.asarray(_stream(key, 2 * 4 * 24_000).permutations(24_000, 4))
    assert (np.sort(p, axis=1) == np.arange(4)).all()
    codes = [tuple(row) for row in p]
    counts = np.array([codes.count(perm) for perm in itertools.permutations(range(4))])
    chi2 = np.sum((counts - 1000) ** 2 / 1000)
    assert chi2 < 23 + 6 * np.sqrt(46)


@pytest.mark.parametrize("kind", STREAM_KINDS)
def test_same_key_same_sketch_eager_and_under_vmap(key, kind):
    x = jax.random.normal(jax.random.key(1), (3, 300))
    keys = jax.random.split(key, 2)
    eager = np.stack([np.asarray(sk.make(kind, k, 300, 32).apply(x)) for k in keys])
    again = np.stack([np.asarray(sk.make(kind, k, 300, 32).apply(x)) for k in keys])
    vmapped = np.asarray(jax.jit(jax.vmap(lambda k: sk.make(kind, k, 300, 32).apply(x)))(keys))
    np.testing.assert_array_equal(eager, again)
    np.testing.assert_allclose(vmapped, eager, rtol=1e-5, atol=1e-6)
    assert not np.allclose(eager[0], eager[1])


def test_same_key_same_numbers_in_another_process(key):
    words = np.asarray(jax.random.key_data(key)).tolist()
    code = ("import jax, numpy as np; from workbench import sketch as sk; "
            f"s = sk.make('affd', jax.random.wrap_key_data(np.asarray({words}, np.uint32)), 300, 32); "
            "print(repr(np.asarray(s.state['gauss'][:4]).tolist()), repr(np.asarray(s.state['signs'][:4]).tolist()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "WORKBENCH_JAX_CACHE": "off", "PATH": "/usr/bin:/bin"})
    s = sk.make("affd", key, 300, 32)
    here = f"{np.asarray(s.state['gauss'][:4]).tolist()!r} {np.asarray(s.state['signs'][:4]).tolist()!r}"
    assert out.stdout.strip() == here


def test_one_threefry_program_per_stream_length_and_none_in_the_initialisers(key):
    """The compile budget: every paper kind at several D of one input size draws its randomness
    through ONE `draw` program per stream length, and no initialiser contains threefry."""
    before = randomness.draw._cache_size()
    lengths = set()
    for kind, d in itertools.product(("affd", "afjl", "ffd", "fjl", "qk"), (16, 32, 64)):
        opts = {"max_factor": 16} if kind == "qk" else {}
        sk.make(kind, key, 1000, d, **opts)
        lengths.add(randomness.bucket(core._words_needed(kind, 1000, d, tuple(sorted(
            {**core.FAMILIES[kind].options, **opts}.items())))))
    assert randomness.draw._cache_size() - before <= len(lengths) <= 6
    opts = tuple(sorted(core.FAMILIES["affd"].options.items()))
    words = jnp.zeros((randomness.bucket(core._words_needed("affd", 1000, 64, opts)),), jnp.uint32)
    jaxpr = str(jax.make_jaxpr(lambda w, k: core._init_stream_jit("affd", 1000, 64, opts, w, k)[0])(words, key))
    assert "threefry" not in jaxpr and "random_bits" not in jaxpr


def test_norm_ratio_batches_divide_the_draws_and_do_not_change_the_ratios(key, monkeypatch):
    from workbench.sketch import quality

    assert [quality.even_batch(t, c) for t, c in ((2000, 32), (1210, 64), (2003, 32), (10, 32))] == [25, 55, 32, 10]
    x = quality.hadamard_row_input(4 * 16, 16, which=1, row=1)
    a = quality.norm_ratios(x, "affd", key, 16, 60)
    monkeypatch.setattr(quality, "KEY_BATCH", 7)  # 60 = 6 batches of ... 6 (largest divisor <= 7)
    np.testing.assert_allclose(quality.norm_ratios(x, "affd", key, 16, 60), a, rtol=1e-6)
