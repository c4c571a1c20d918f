"""Export trained policies as plain NumPy weights that run without JAX (the paper's edge-deployment story).

    python -m reled_jax.export_policy --checkpoint runs/NAME/checkpoint.npz [--seed-index 0] [--out policy.npz]

The .npz holds, per agent i, the three dense layers of its policy network
(`a{i}_w{l}`, `a{i}_b{l}`) and the sizes needed to encode the Table I
observation. `NumpyPolicy` is the whole deployed policy: encode, two tanh
layers, masked argmax. It needs only NumPy.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from reled_jax.checkpoint import read_checkpoint


class NumpyPolicy:
    """Greedy per-agent policies from exported weights; only NumPy."""

    def __init__(self, weights: str | Path | dict):
        """`weights`: an exported .npz path, or the dict `policy_arrays` returns."""
        data = weights if isinstance(weights, dict) else np.load(weights)
        self.n_agents, self.n_nodes, self.m_out = (int(data[k]) for k in ("n_agents", "n_nodes", "m_out"))
        self.layers = [[(data[f"a{i}_w{layer}"], data[f"a{i}_b{layer}"]) for layer in range(3)] for i in range(self.n_agents)]

    def encode(self, features: np.ndarray) -> np.ndarray:
        """[A, 2M+2] Table I features -> [A, 2N + 2M], the same transform as reled_jax.networks.encode."""
        node, dest = features[:, 0].astype(int), features[:, 1].astype(int)
        per_edge = features[:, 2:].reshape(-1, self.m_out, 2)
        eye = np.eye(self.n_nodes, dtype=np.float32)
        score = np.maximum(per_edge[..., 0], 0.0)
        ends_at_dest = (per_edge[..., 1].astype(int) == dest[:, None]).astype(np.float32)
        return np.concatenate([eye[node], eye[dest], score, ends_at_dest], axis=1)

    def logits(self, features: np.ndarray, mask: np.ndarray) -> np.ndarray:
        x = self.encode(np.asarray(features, np.float32))
        out = np.empty((self.n_agents, self.m_out), np.float32)
        for i, layers in enumerate(self.layers):
            h = x[i]
            for layer, (w, b) in enumerate(layers):
                h = h @ w + b
                if layer < 2:
                    h = np.tanh(h)
            out[i] = h
        return np.where(mask, out, -1e9)

    def act(self, features: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return np.argmax(self.logits(features, mask), axis=1)


def policy_arrays(policy_params: dict, n_nodes: int, m_out: int) -> dict:
    """Per-agent policy parameters (Flax dict, leaves [A, ...]) -> the flat arrays of the .npz."""
    dense = policy_params["params"]
    n_agents = int(dense["Dense_0"]["kernel"].shape[0])
    arrays = {"n_agents": n_agents, "n_nodes": n_nodes, "m_out": m_out}
    for i in range(n_agents):
        for layer in range(3):
            arrays[f"a{i}_w{layer}"] = np.asarray(dense[f"Dense_{layer}"]["kernel"][i], np.float32)
            arrays[f"a{i}_b{layer}"] = np.asarray(dense[f"Dense_{layer}"]["bias"][i], np.float32)
    return arrays


def checkpoint_arrays(ck: dict, seed_index: int = 0) -> tuple[dict, dict]:
    """(what the run trained for (checkpoint.run_identity) with its epoch, policy arrays) of one seed of a loaded checkpoint."""
    seeds_stacked = ck["policy"]["params"]  # leaves [seeds, agents, ...]
    n_seeds, _, input_dim, _ = np.shape(seeds_stacked["Dense_0"]["kernel"])
    m_out = int(np.shape(seeds_stacked["Dense_2"]["kernel"])[-1])
    if not 0 <= seed_index < n_seeds:
        raise SystemExit(f"--seed-index {seed_index} is out of range: the checkpoint holds {n_seeds} seeds")
    one_seed = {"params": {name: {k: np.asarray(v)[seed_index] for k, v in layer.items()} for name, layer in seeds_stacked.items()}}
    # The input is the encoded observation, 2 N + 2 M wide (reled_jax.networks.encode).
    n_nodes = (int(input_dim) - 2 * m_out) // 2
    return {**ck["run"], "epoch": ck["epoch"]}, policy_arrays(one_seed, n_nodes, m_out)


def export(checkpoint: str | Path, out: str | Path, seed_index: int = 0) -> Path:
    _, arrays = checkpoint_arrays(read_checkpoint(checkpoint), seed_index)
    out = Path(out)
    np.savez(out, **arrays)
    return out


@dataclasses.dataclass(frozen=True)
class Args:
    checkpoint: str
    out: str = ""  # default: policy_seed<k>.npz next to the checkpoint
    seed_index: int = 0


def main(args: Args) -> None:
    out = args.out or str(Path(args.checkpoint).parent / f"policy_seed{args.seed_index}.npz")
    print(f"wrote {export(args.checkpoint, out, args.seed_index)}")


if __name__ == "__main__":
    import tyro

    from reled_jax.train import usage_errors

    with usage_errors():
        main(tyro.cli(Args))
