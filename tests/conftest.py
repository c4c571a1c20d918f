"""Shared fixtures: tiny hand-built networks and the small `oakland` scenario; one compilation cache per session, compiled at -O0."""

import os
import shutil
import tempfile

import numpy as np
import pytest

from sim.network import SignalConfig, build_network

CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"


def pytest_configure(config):
    """One JAX persistent compilation cache for the whole session: its xdist workers and the training
    subprocesses of tests inherit it, so a program compiled once (the same training configuration in several
    tests, a resumed run) is read back instead of compiled again. The key is the compiled program's hash, so
    a hit is the same executable and results cannot change. A cache set from outside (mutation runs) is kept."""
    import jax

    # LLVM at -O0: tests run tiny programs, so compiling is most of their time; -O0 compiles ~25 % faster and
    # gives the same results to float rounding (measured: 1e-7 relative on a training run's metrics).
    # Set before any JAX backend exists; subprocesses of tests inherit it. A level set from outside is kept.
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_optimization_level=0".strip()
    if CACHE_ENV not in os.environ:
        os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="reled-jax-test-jit-")
        config._reled_owns_jit_cache = True
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
    jax.config.update("jax_compilation_cache_dir", os.environ[CACHE_ENV])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


def pytest_unconfigure(config):
    if getattr(config, "_reled_owns_jit_cache", False):
        shutil.rmtree(os.environ.pop(CACHE_ENV), ignore_errors=True)


@pytest.fixture
def line_network():
    """A -> B -> C -> D, with the reverse direction too (so it is strongly connected).

    Lengths 100, 150, 80 m at 10, 15, 8 m/s: 10 s per edge at free flow.
    No junction has three legs, so no signal is derived.
    """
    xy = np.array([[0.0, 0.0], [100.0, 0.0], [100.0, 150.0], [180.0, 150.0]])
    fwd = [(0, 1, 100.0, 10.0, 1), (1, 2, 150.0, 15.0, 1), (2, 3, 80.0, 8.0, 1)]
    back = [(v, u, length, speed, lanes) for u, v, length, speed, lanes in fwd]
    return build_network("line", xy, fwd + back)


@pytest.fixture
def cross_network():
    """A four-way crossing: centre junction 0 with arms 1 (east), 2 (north), 3 (west), 4 (south)."""
    xy = np.array([[0.0, 0.0], [200.0, 0.0], [0.0, 200.0], [-200.0, 0.0], [0.0, -200.0]])
    edges = []
    for arm in (1, 2, 3, 4):
        edges += [(0, arm, 200.0, 10.0, 1), (arm, 0, 200.0, 10.0, 1)]
    return build_network("cross", xy, edges, signals=SignalConfig(green_s=20, clearance_s=5, offset_seed=3))


@pytest.fixture
def diamond_network():
    """0 -> {1 (north), 2 (south)} -> 3, both ways, no signals.

    The north branch is shorter (2 x 141 m) than the south (2 x 150 m), so the
    static shortest path goes north; congestion decides the live shortest time.
    """
    xy = np.array([[0.0, 0.0], [100.0, 100.0], [100.0, -110.0], [200.0, 0.0]])
    fwd = [(0, 1, 141.0, 10.0, 1), (1, 3, 141.0, 10.0, 1), (0, 2, 150.0, 10.0, 1), (2, 3, 150.0, 10.0, 1)]
    back = [(v, u, length, speed, lanes) for u, v, length, speed, lanes in fwd]
    return build_network("diamond", xy, fwd + back, signals=SignalConfig(enabled=False))
