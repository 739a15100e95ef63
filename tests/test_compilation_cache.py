"""JAX's persistent compilation cache as `import workbench` sets it up: where it goes, how to turn
it off, that a user's own JAX setting wins, and that a second process loads what the first one
compiled (and computes the same numbers). The tests' own processes run with it off (conftest)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from workbench.run import compilation_cache as cc

# Compiles one program big enough to pass MIN_COMPILE_SECONDS on any machine and prints what the
# cache did: the folder in use, whether the program came from the cache, and the result's bytes.
PROBE = r"""
import json, jax, jax.numpy as jnp
hits = []
jax.monitoring.register_event_listener(lambda event, **kw: hits.append(event) if event == "/jax/compilation_cache/cache_hits" else None)
import workbench
from workbench.run import compilation_cache as cc
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # this probe may compile fast

@jax.jit
def f(x):
    for i in range(30):
        x = jnp.tanh(x @ x.T / x.shape[0] + i) + jnp.sin(x)
    return x.sum()

value = f(jnp.arange(64.0 * 64).reshape(64, 64) / 4096)
info = cc.info()
print(json.dumps({"path": str(info.path), "source": info.source, "entries": info.entries,
                  "hits": len(hits), "value": float(value).hex()}))
"""


def probe(tmp_path, **env):
    base = {k: v for k, v in os.environ.items() if k not in (cc.ENV, "JAX_COMPILATION_CACHE_DIR")}
    base["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300,
                         env={**base, **env})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_folder_from_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(cc.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cc.requested_dir() == tmp_path / "workbench" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cc.requested_dir() == Path.home() / ".cache" / "workbench" / "jax"
    monkeypatch.setenv(cc.ENV, str(tmp_path / "mine"))
    assert cc.requested_dir() == tmp_path / "mine"
    for off in ("off", "0", "False", " none "):
        monkeypatch.setenv(cc.ENV, off)
        assert cc.requested_dir() is None


def test_tests_share_one_fresh_cache_and_never_the_users():
    info = cc.info()
    assert info.source == "workbench" and info.path == Path(os.environ["WORKBENCH_TEST_JAX_CACHE"])
    assert info.path != cc.default_dir() and not str(info.path).startswith(str(Path.home() / ".cache"))


def test_second_process_loads_from_cache_with_identical_result(tmp_path):
    first = probe(tmp_path)
    assert first["path"] == str(tmp_path / "xdg" / "workbench" / "jax") and first["source"] == "workbench"
    assert first["entries"] >= 1 and first["hits"] == 0
    second = probe(tmp_path)
    assert second["hits"] >= 1, "the second process compiled again instead of loading the cache"
    assert second["entries"] == first["entries"] and second["value"] == first["value"]


def test_off_and_users_own_jax_setting(tmp_path):
    off = probe(tmp_path, WORKBENCH_JAX_CACHE="off")
    assert off["source"] == "off" and not (tmp_path / "xdg").exists()
    own = probe(tmp_path, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "own"))
    assert own["source"] == "jax" and own["path"] == str(tmp_path / "own") and own["entries"] >= 1
    assert not (tmp_path / "xdg").exists()
