"""Training checkpoints as data only: one `.npz` of named arrays plus a JSON document. Nothing is unpickled.

A checkpoint someone shares must not be able to run code when it is evaluated, exported or resumed, so
the format holds nothing but numbers and text:

* every array leaf of the training state, the expert's demonstrations and their nodes, under its path in
  the tree (`state/params/policy/params/Dense_0/kernel`, ...), read with `allow_pickle=False`;
* `__meta__`: a UTF-8 JSON document (format name, version, the run's config, epoch, metrics rows, and the
  expert service's state) in which dataclasses are written as `{"__dataclass__": name, ...}` and only the
  names in `DATACLASSES` are ever rebuilt.

Restoring the training state needs a template of the right structure (the state a fresh run of the same
config starts from): every leaf must be in the file with the template's shape and dtype, or the checkpoint
is refused with the first mismatch named. Every problem is a `CheckpointError` whose message is one line.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

import jax
import numpy as np

from llm.feedback import DivergencePair, Feedback, RewardInstructionPair, TrajectorySummary
from llm.interface import Instruction
from llm.service import ExpertStats

FORMAT = "reled-jax-checkpoint"
VERSION = 1
FILENAME = "checkpoint.npz"
META = "__meta__"
DATACLASSES = {cls.__name__: cls for cls in (Feedback, RewardInstructionPair, DivergencePair, TrajectorySummary, Instruction, ExpertStats)}


class CheckpointError(SystemExit):
    """A checkpoint that cannot be used; the message says why and what to do (exit status 1 from a CLI)."""


# ------------------------------------------------------------------ JSON data
def to_data(obj):
    """Plain JSON data for the metadata: dataclasses, tuples, non-string dict keys, arrays and counters tagged."""
    if isinstance(obj, collections.Counter):
        return {"__counter__": [[to_data(k), v] for k, v in obj.items()]}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if type(obj).__name__ not in DATACLASSES:
            raise TypeError(f"{type(obj).__name__} is not a checkpoint dataclass")
        return {"__dataclass__": type(obj).__name__, **{f.name: to_data(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: to_data(v) for k, v in obj.items()}
        return {"__dict__": [[to_data(k), to_data(v)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [to_data(v) for v in obj]}
    if isinstance(obj, list):
        return [to_data(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return {"__array__": obj.tolist(), "dtype": obj.dtype.str}
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"{type(obj).__name__} cannot go into a checkpoint")


def from_data(data):
    """The objects of `to_data`, rebuilding only the dataclasses in DATACLASSES."""
    if isinstance(data, list):
        return [from_data(v) for v in data]
    if not isinstance(data, dict):
        return data
    if "__dataclass__" in data:
        cls = DATACLASSES.get(data["__dataclass__"])
        if cls is None:
            raise CheckpointError(f"checkpoint metadata names an unknown type {str(data['__dataclass__'])[:40]!r}")
        return cls(**{k: from_data(v) for k, v in data.items() if k != "__dataclass__"})
    if "__tuple__" in data:
        return tuple(from_data(v) for v in data["__tuple__"])
    if "__dict__" in data:
        return {_hashable(from_data(k)): from_data(v) for k, v in data["__dict__"]}
    if "__counter__" in data:
        return collections.Counter({_hashable(from_data(k)): v for k, v in data["__counter__"]})
    if "__array__" in data:
        return np.asarray(data["__array__"], dtype=np.dtype(data["dtype"]))
    return {k: from_data(v) for k, v in data.items()}


def _hashable(key):
    return tuple(key) if isinstance(key, list) else key


# ------------------------------------------------------------------ arrays
def _name(path) -> str:
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            parts.append(k.name)
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        else:
            parts.append(str(getattr(k, "key", k)))
    return "/".join(parts)


def flatten(tree, prefix: str) -> dict[str, np.ndarray]:
    return {f"{prefix}/{_name(path)}": np.asarray(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def restore(template, arrays: dict[str, np.ndarray], prefix: str, source: Path, same_shapes: bool = True):
    """`template`'s tree (arrays or ShapeDtypeStructs) with every leaf read from `arrays`; a leaf missing or of
    another shape/dtype is refused. `same_shapes=False`: only the rank, dtype and seed axis must match (the expert's
    demonstrations, whose row count changes with every refresh)."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for path, like in paths:
        name = f"{prefix}/{_name(path)}"
        if name not in arrays:
            raise CheckpointError(f"checkpoint {source} has no array {name}: it was written by another method or version; train again or use its own --out")
        got = arrays[name]
        shape_ok = got.shape == tuple(like.shape) if same_shapes else (got.ndim == len(like.shape) and got.shape[:1] == tuple(like.shape)[:1])
        if not shape_ok or got.dtype != like.dtype:
            raise CheckpointError(f"checkpoint {source}: {name} is {got.dtype}{list(got.shape)}, this run needs {like.dtype}{list(like.shape)} "
                                  "(another agent count, scenario or network size)")
        leaves.append(got)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def subtree(arrays: dict[str, np.ndarray], prefix: str) -> dict:
    """The arrays under `prefix/` as nested dicts (a Flax parameter tree reads like this)."""
    out: dict = {}
    for name, value in arrays.items():
        if name.startswith(prefix + "/"):
            *parents, leaf = name[len(prefix) + 1 :].split("/")
            node = out
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
    return out


# ------------------------------------------------------------------ files
def write(path: Path, meta: dict, trees: dict) -> None:
    """Atomically write `meta` (JSON data via to_data) and the array trees (name -> pytree)."""
    arrays = {name: value for prefix, tree in trees.items() for name, value in flatten(tree, prefix).items()}
    document = json.dumps({"format": FORMAT, "version": VERSION, **to_data(meta)}).encode("utf-8")
    arrays[META] = np.frombuffer(document, dtype=np.uint8)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def read(path: str | Path, with_arrays: bool = True) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata, arrays by name) of a checkpoint, or a one-line CheckpointError saying what is wrong.
    `with_arrays=False` reads the metadata alone (the arrays dict is empty): a look at a run's epoch need not load
    its hundreds of megabytes."""
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    if not path.exists():
        legacy = path.with_name("checkpoint.pkl")
        if legacy.exists():
            raise CheckpointError(f"{legacy} is a pickle from before issue 18; pickles are never loaded (they can run code): train again")
        raise CheckpointError(f"checkpoint {path} not found; train first (python -m reled_jax.train) or pass --checkpoint")
    if path.suffix == ".pkl":
        raise CheckpointError(f"{path} is a pickle; pickles are never loaded (they can run code): pass a checkpoint.npz written by reled_jax.train")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: f[name] for name in f.files if with_arrays or name == META}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(err).__name__}: {str(err)[:80]}); it is empty, truncated or another kind of file") from None
    if META not in arrays:
        raise CheckpointError(f"{path} is an .npz without reled-jax metadata; pass a checkpoint.npz written by reled_jax.train")
    try:
        meta = json.load(io.BytesIO(arrays.pop(META).tobytes()))
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: its metadata is not valid JSON ({str(err)[:80]})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a reled-jax checkpoint")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {meta.get('version')!r}; this reled-jax reads version {VERSION}")
    try:
        meta = from_data(meta)
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"{path}: its metadata does not fit the checkpoint format ({type(err).__name__}: {str(err)[:80]})") from None
    for key in ("config", "epoch"):
        if key not in meta:
            raise CheckpointError(f"{path}: its metadata has no {key!r}")
    return meta, arrays


def read_checkpoint(path: str | Path) -> dict:
    """A training checkpoint (reled_jax.train; data only, reled_jax.checkpoint) as a dict: "config" (as saved),
    "run" (`run_identity`), "epoch",
    "policy" (the policy networks, leaves [seeds, agents, ...]), "meta" and "arrays"; or a one-line exit
    saying what is wrong with the file."""
    meta, arrays = read(path)
    policy = subtree(arrays, "state/params/policy")
    layers = policy.get("params", {})
    if not all(f"Dense_{k}" in layers and {"kernel", "bias"} <= set(layers[f"Dense_{k}"]) for k in range(3)):
        raise CheckpointError(f"checkpoint {path} holds no policy network of the expected form (3 dense layers)")
    try:
        run = run_identity(meta["config"])
    except (KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"checkpoint {path}: its configuration has no {err}; it was not written by reled_jax.train") from None
    return {"config": meta["config"], "run": run, "epoch": meta["epoch"], "policy": policy, "meta": meta, "arrays": arrays}


def run_identity(config: dict) -> dict:
    """What a checkpoint's policies were trained for, from its saved configuration (reled_jax.config's tree, or
    the flat layout before it): scenario, regime, n_agents, method, seed (the first), seeds, and scenario_seed (the
    seed its scenario was built with: `--scenario-seed`, else the first seed)."""
    env, run = config.get("env", config), config.get("run", config)
    return {"scenario": env["scenario"], "regime": env["regime"], "n_agents": env["n_agents"], "method": config["method"],
            "seed": run["seed"], "seeds": run["seeds"], "scenario_seed": run["seed"] if run.get("scenario_seed") is None else run["scenario_seed"]}
