"""Devices and hosts: the seed axis on a device mesh, and several processes joined as one (`jax.distributed`).

Every process of a cluster runs the same training program; `seed_placement` splits each array's leading
seed axis over all devices the processes see, and `to_host` gathers them back (process 0 writes the run).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.experimental import multihost_utils


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """Several processes (hosts) as one device mesh via `jax.distributed.initialize`.

    Leave the three fields empty on a cluster JAX detects (SLURM, Open MPI, MPICH, Cloud
    TPU, ...); set them to run several processes by hand, e.g. two on one machine.
    """

    enabled: bool = False
    coordinator_address: str | None = None  # host:port of process 0
    num_processes: int | None = None
    process_id: int | None = None


def join_cluster(cluster: ClusterConfig) -> None:
    """Connect this process to the others before any JAX computation (no-op when not enabled)."""
    if not cluster.enabled:
        return
    # CPU processes exchange arrays through gloo; GPU processes use NCCL whatever this says.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=cluster.coordinator_address, num_processes=cluster.num_processes, process_id=cluster.process_id)
    except (RuntimeError, ValueError) as err:
        raise SystemExit(f"could not join the cluster ({err}); on a cluster JAX does not detect, pass "
                         "--cluster.coordinator-address HOST:PORT --cluster.num-processes N --cluster.process-id I") from None


def seed_placement(n_seeds: int):
    """Put the leading seed axis of every array on a 1-D device mesh (`jax.sharding`).

    With D visible devices dividing the seed count, each device runs n_seeds / D seeds of
    the same jitted program (XLA partitions the vmapped seed axis); otherwise everything
    stays on the default device. The same code serves 1 CPU, 8 GPUs, or a cluster after
    `jax.distributed.initialize()` (then jax.devices() lists every host's devices).
    tests/test_train.py checks that the sharded run equals the unsharded one.
    """
    devices = jax.devices()
    if len(devices) < 2 or n_seeds % len(devices):
        return lambda tree: tree
    mesh = jax.sharding.Mesh(np.array(devices), ("seed",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("seed"))
    # From host memory: with several processes each holds the same whole array and keeps its own shards.
    return lambda tree: jax.device_put(to_host(tree), sharding)


def to_host(tree):
    """NumPy copies of a tree's arrays on this process; arrays spread over several hosts are
    gathered first (a collective: every process must call it at the same point)."""
    def fetch(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(fetch, tree)
