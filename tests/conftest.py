"""Shared fixtures: float64 for reference checks, an explicit PRNG key, strict dtype promotion."""

import os
import shutil
import tempfile

os.environ.setdefault("MPLBACKEND", "Agg")
# One fresh persistent compilation cache shared by the suite's processes (the xdist workers, the
# paper kernels and subprocesses they start, all inheriting this variable): every program still
# compiles once, as on a new CI machine, but a program one process compiled is loaded by the
# next instead of compiled again. Nothing is written to the user's ~/.cache; the controller
# removes the folder at the end. The tests of the cache itself point it at their own folders.
if "WORKBENCH_TEST_JAX_CACHE" not in os.environ:
    os.environ["WORKBENCH_TEST_JAX_CACHE"] = tempfile.mkdtemp(prefix="workbench-test-jax-cache-")
    _OWN_CACHE = True
else:
    _OWN_CACHE = False
os.environ["WORKBENCH_JAX_CACHE"] = os.environ["WORKBENCH_TEST_JAX_CACHE"]
# Only programs that took 2 s or more to compile are written to it: writing serialises the
# executable, and JAX's serialisation crashed an xdist worker (a segfault in
# compilation_cache.put_executable_and_time) about once in five suite runs when every program
# over 0.1 s was written; the programs worth sharing across processes are the slow ones.
os.environ.setdefault("WORKBENCH_JAX_CACHE_MIN_SECONDS", "2")
# WORKBENCH_TEST_XLA_FLAGS: XLA flags for the suite's processes (worker processes and the
# subprocesses they start inherit them); flags already in XLA_FLAGS are kept after it. By default
# LLVM compiles at -O0: most of the suite's time is compiling small programs, and -O0 compiled
# a sample of unit-test files a quarter faster (user CPU 64 s against 80-85 s); a program that
# trains for long runs slower at -O0, so the kernels of paper runs (tests marked `notebook`)
# are started without it (`_paper_kernels_fully_optimised`). XLA's older CPU emitters
# (--xla_cpu_use_fusion_emitters=false) were a third faster, but two fresh-clone runs in two
# lost an xdist worker to a segfault in XLA's compilation or JAX's serialisation with them on.
os.environ.setdefault("WORKBENCH_TEST_XLA_FLAGS", "--xla_backend_optimization_level=0")
if os.environ["WORKBENCH_TEST_XLA_FLAGS"] and os.environ["WORKBENCH_TEST_XLA_FLAGS"] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ['WORKBENCH_TEST_XLA_FLAGS']} {os.environ.get('XLA_FLAGS', '')}".strip()

# A paper cell still running after 20 minutes (quick-profile cells take seconds) fails its run
# instead of holding the suite until CI's own limit: a hang guard, not a timing check.
os.environ.setdefault("WORKBENCH_CELL_TIMEOUT", "1200")

import zlib

import hypothesis
import jax
import jax.numpy as jnp
import pytest

jax.config.update("jax_enable_x64", True)

COMPILE_FAST_XLA_FLAG = "--xla_backend_optimization_level=0"  # the default above


def pytest_addoption(parser):
    parser.addoption(
        "--key-seed", default=os.environ.get("WORKBENCH_KEY_SEED", "0"),
        help="seed of the PRNG keys the `key` and `keys` fixtures hand out (an int, or 'random'); "
             "each test folds in its own id, so no two tests share a key")


def pytest_configure(config):
    # resolved once here, so xdist workers (which receive the options) agree on it
    if config.option.key_seed == "random":
        config.option.key_seed = str(int.from_bytes(os.urandom(4), "little"))
    hypothesis.settings.register_profile(
        "workbench", max_examples=25, deadline=None, derandomize=True, print_blob=True,
        suppress_health_check=[hypothesis.HealthCheck.too_slow])
    hypothesis.settings.register_profile(
        "thorough", max_examples=400, deadline=None, print_blob=True,
        suppress_health_check=[hypothesis.HealthCheck.too_slow])
    hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "workbench"))


_CRASHED: set[str] = set()


@pytest.hookimpl(trylast=True, optionalhook=True)
def pytest_handlecrashitem(crashitem, report, sched):
    """A test whose xdist worker died (a native crash inside XLA, about one fresh-clone run in
    three on JAX 0.10.2) runs once more: loadfile scheduling puts its file back in the queue, so
    the new worker runs it again; its first crash is reported as a rerun, a second as a failure.
    (pytest-rerunfailures cannot reschedule under loadfile, `make test` runs its flags anyway.)"""
    if report.outcome == "failed" and crashitem not in _CRASHED and hasattr(sched, "workqueue"):
        _CRASHED.add(crashitem)
        report.outcome = "rerun"


# The longest test files (a fresh suite run's durations, summed per file) go to the workers first:
# with `--no-loadscope-reorder` (the Makefile's) `--dist loadfile` hands out files in collection
# order, and a long file handed out last keeps one worker busy while the other idles (xdist's own
# order, by test count, sent the few-test paper-run files last).
LONGEST_FILES_FIRST = (
    "test_notebooks_fourth.py", "test_notebooks_second.py", "test_notebooks.py", "test_notebooks_third.py",
    "test_notebooks_fifth.py", "test_ui.py", "test_continual.py", "test_sketch.py", "test_papers.py",
    "test_transport.py", "test_unlearning.py", "test_icl.py", "test_distributed.py", "test_spectrum_compile.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def pytest_unconfigure(config):
    if _OWN_CACHE:  # the process that made the shared cache folder (the xdist controller) removes it
        shutil.rmtree(os.environ["WORKBENCH_TEST_JAX_CACHE"], ignore_errors=True)


def pytest_report_header(config):
    return (f"workbench: test keys from --key-seed={config.option.key_seed} (rerun with another seed, or "
            f"'random', to try other keys); hypothesis profile {hypothesis.settings().max_examples} examples")


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """After each test file, drop JAX's in-memory compiled programs and traces: a worker that
    runs half the suite otherwise ends near 6 GB, and an XLA compile that cannot allocate
    aborts its worker. (Programs compiling for 2 s or more come back from the shared disk
    cache.)"""
    yield
    jax.clear_caches()


def _test_key(request, salt: int = 0):
    seed = int(request.config.option.key_seed)
    return jax.random.fold_in(jax.random.key(seed), zlib.crc32(request.node.nodeid.encode()) ^ salt)


@pytest.fixture
def key(request):
    """A key of this test's own: the session's --key-seed folded with the test's id (key(0) is
    one of the adversarial `keys`, never everyone's default)."""
    return _test_key(request)


# keys whose words are all zero or all ones: where a hash or fold of the key degenerates
ADVERSARIAL_KEYS = ((0, 0), (0xFFFFFFFF, 0xFFFFFFFF), (0, 1), (1, 0))


@pytest.fixture
def keys(request):
    """Several keys for a test that must hold for any: the adversarial ones (key(0) first) and
    three of this test's own."""
    fixed = [jax.random.wrap_key_data(jnp.asarray(words, jnp.uint32)) for words in ADVERSARIAL_KEYS]
    return fixed + [_test_key(request, salt) for salt in (1, 2, 3)]


@pytest.fixture(autouse=True)
def _paper_kernels_fully_optimised(request, monkeypatch):
    """Paper runs train models in their kernels, where -O0 code is slower (objective_mixing's
    quick run took 58 s instead of 34): the kernels a `notebook` test starts inherit XLA flags
    without `COMPILE_FAST_XLA_FLAG`."""
    flags = os.environ.get("XLA_FLAGS", "")
    if request.node.get_closest_marker("notebook") and COMPILE_FAST_XLA_FLAG in flags:
        monkeypatch.setenv("XLA_FLAGS", " ".join(f for f in flags.split() if f != COMPILE_FAST_XLA_FLAG))
    yield


@pytest.fixture(autouse=True)
def strict_promotion(request):
    # Strict promotion catches silent float32/float64 mixing in our code. Third-party code that
    # is not strict-safe (optax's Adam bias correction) opts out with @pytest.mark.standard_promotion.
    mode = "standard" if request.node.get_closest_marker("standard_promotion") else "strict"
    with jax.numpy_dtype_promotion(mode):
        yield
