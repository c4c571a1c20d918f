"""Checkpoints are data only: what a run writes comes back equal, and no file makes reading run code or crash."""

import collections
import pickle
import zipfile

import numpy as np
import pytest

from llm.feedback import DivergencePair, Feedback, RewardInstructionPair, TrajectorySummary
from llm.interface import Instruction
from llm.service import ExpertStats
from reled_jax import checkpoint
from reled_jax.checkpoint import CheckpointError
from reled_jax.checkpoint import read_checkpoint
from reled_jax.config import TrainConfig, saved_config


def _policy(n_seeds=1, n_agents=3, n_in=34, hidden=8, m_out=4):
    rng = np.random.default_rng(0)
    shapes = {"Dense_0": (n_in, hidden), "Dense_1": (hidden, hidden), "Dense_2": (hidden, m_out)}
    return {"params": {k: {"kernel": rng.normal(size=(n_seeds, n_agents, *s)).astype(np.float32),
                           "bias": np.zeros((n_seeds, n_agents, s[1]), np.float32)} for k, s in shapes.items()}}


def _service_state():
    fb = Feedback((0, 2), (RewardInstructionPair(0, 1, "move_to_by_shortest_time(3)", -2.5, 4, 17, ((1, 3, -1.25),)),),
                  (DivergencePair(2, 0, "follow_edge(1)", 0.75, 1, 2, 0, 0.125),), (TrajectorySummary(0, (0, 1, 3), 41.0, 12.5, True),),
                  rvi=0.5, pdi=0.25, threshold=1.0)
    stats = ExpertStats(requests=3, fallbacks=collections.Counter({"invalid_plan": 2, "llm:LLMTimeout": 1}), latency_s=[0.25, 1.5], last_errors=["agent 0: no"])
    service = {"round": 2, "current": {0: (Instruction("move_to_by_shortest_path", 2, 3), Instruction("move_to_by_shortest_time", 3))},
               "errors": {1: "line 1: why"}, "stats": stats,
               "backend": {"avoid": {0: np.linspace(1.0, 2.0, 6)}, "prefer": {0: {1: 2}}, "turns": [{"role": "user", "content": "hi"}]}}
    return {"service": service, "feedback": {0: fb}, "history": [{"epoch": 0, "subsets": [{"subset": (0, 2), "rvi": float("nan")}]}]}


def test_a_checkpoint_gives_back_what_was_written(tmp_path):
    state = {"params": {"policy": _policy()}, "step": np.array([7], np.int32), "key": np.array([[1, 2]], np.uint32)}
    meta = {"config": {"scenario": "oakland", "n_agents": 3}, "epoch": 4, "steps": np.array([10.0, 20.0]), "seds": [_service_state()]}
    path = tmp_path / checkpoint.FILENAME
    checkpoint.write(path, meta, {"state": state, "expert_nodes": (np.zeros((1, 3, 5, 2)), np.ones((1, 3), np.int32))})
    got, arrays = checkpoint.read(path)
    assert got["epoch"] == 4 and got["config"] == meta["config"] and got["steps"].dtype == np.float64 and got["steps"].tolist() == [10.0, 20.0]
    sed, want = got["seds"][0], _service_state()
    assert sed["feedback"] == want["feedback"] and sed["service"]["current"] == want["service"]["current"]
    assert sed["service"]["stats"] == want["service"]["stats"] and isinstance(sed["service"]["stats"].fallbacks, collections.Counter)
    assert sed["service"]["errors"] == {1: "line 1: why"} and sed["service"]["backend"]["prefer"] == {0: {1: 2}}
    np.testing.assert_array_equal(sed["service"]["backend"]["avoid"][0], want["service"]["backend"]["avoid"][0])
    assert sed["history"][0]["subsets"][0]["subset"] == (0, 2) and np.isnan(sed["history"][0]["subsets"][0]["rvi"])
    restored = checkpoint.restore(state, arrays, "state", path)
    for a, b in zip(*(np.asarray(x) for x in (restored["params"]["policy"]["params"]["Dense_0"]["kernel"], state["params"]["policy"]["params"]["Dense_0"]["kernel"]))):
        np.testing.assert_array_equal(a, b)
    assert restored["key"].dtype == np.uint32 and restored["step"].tolist() == [7]
    assert set(arrays) >= {"expert_nodes/0", "expert_nodes/1"}


def test_restoring_into_another_shape_names_the_first_mismatch(tmp_path):
    path = tmp_path / checkpoint.FILENAME
    checkpoint.write(path, {"config": {}, "epoch": 1}, {"state": {"params": {"policy": _policy(n_agents=3)}}})
    _, arrays = checkpoint.read(path)
    with pytest.raises(CheckpointError, match=r"state/params/policy/params/Dense_0/bias is float32\[1, 3, 8\], this run needs float32\[1, 4, 8\] \(another agent count"):
        checkpoint.restore({"params": {"policy": _policy(n_agents=4)}}, arrays, "state", path)
    with pytest.raises(CheckpointError, match="has no array state/value"):
        checkpoint.restore({"value": np.zeros(2)}, arrays, "state", path)


def test_a_malicious_pickle_is_refused_without_running_anything(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "checkpoint.pkl").write_bytes(pickle.dumps(Payload()))
    for given in (tmp_path / "checkpoint.pkl", tmp_path, tmp_path / checkpoint.FILENAME):
        with pytest.raises(CheckpointError, match="pickle"):
            read_checkpoint(given)
    # an .npz whose array is a pickled object: numpy refuses it with allow_pickle=False
    np.savez(tmp_path / "objects.npz", __meta__=np.array([Payload()], dtype=object))
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        read_checkpoint(tmp_path / "objects.npz")
    assert not marker.exists()


def _bad_files(tmp_path):
    good = tmp_path / "good.npz"
    checkpoint.write(good, {"config": saved_config(TrainConfig()), "epoch": 1}, {"state": {"params": {"policy": _policy()}}})
    data = good.read_bytes()
    files = {
        "empty": b"", "truncated": data[: len(data) // 2], "random": np.random.default_rng(0).bytes(4096), "text": b"epoch 4, all fine\n",
    }
    paths = {}
    for name, content in files.items():
        paths[name] = tmp_path / f"{name}.npz"
        paths[name].write_bytes(content)
    np.savez(tmp_path / "no_meta.npz", x=np.zeros(3))
    paths["no metadata"] = tmp_path / "no_meta.npz"
    for name, document in {"not json": b"{oops", "not ours": b'{"format": "other"}',
                           "future version": b'{"format": "reled-jax-checkpoint", "version": 99}',
                           "no config": b'{"format": "reled-jax-checkpoint", "version": 1, "epoch": 1}',
                           "unknown type": b'{"format": "reled-jax-checkpoint", "version": 1, "config": {"__dataclass__": "Popen"}, "epoch": 1}'}.items():
        paths[name] = tmp_path / f"{name.replace(' ', '_')}.npz"
        np.savez(paths[name], __meta__=np.frombuffer(document, np.uint8))
    paths["no policy"] = tmp_path / "no_policy.npz"
    checkpoint.write(paths["no policy"], {"config": {}, "epoch": 1}, {"state": {"value": np.zeros(2)}})
    paths["config without its scenario"] = tmp_path / "no_scenario.npz"
    checkpoint.write(paths["config without its scenario"], {"config": {"env": {}}, "epoch": 1}, {"state": {"params": {"policy": _policy()}}})
    (tmp_path / "a_directory").mkdir()
    paths["directory without a checkpoint"] = tmp_path / "a_directory"
    return paths


def test_every_bad_checkpoint_is_a_one_line_error(tmp_path):
    reasons = {
        "empty": "is not a readable checkpoint", "truncated": "is not a readable checkpoint", "random": "is not a readable checkpoint",
        "text": "is not a readable checkpoint", "no metadata": "without reled-jax metadata", "not json": "metadata is not valid JSON",
        "not ours": "is not a reled-jax checkpoint", "future version": "format version 99; this reled-jax reads version 1",
        "no config": "its metadata has no 'config'", "unknown type": "names an unknown type 'Popen'",
        "no policy": "holds no policy network", "config without its scenario": "its configuration has no 'scenario'", "directory without a checkpoint": "not found; train first",
    }
    paths = _bad_files(tmp_path)
    assert set(paths) == set(reasons)
    for name, path in paths.items():
        with pytest.raises(CheckpointError) as err:
            read_checkpoint(path)
        message = str(err.value)
        assert reasons[name] in message and "\n" not in message, (name, message)
    assert zipfile.is_zipfile(tmp_path / "good.npz") and read_checkpoint(tmp_path / "good.npz")["epoch"] == 1


def test_evaluate_refuses_policy_networks_that_do_not_fit_the_checkpoints_environment(tmp_path):
    from reled_jax.evaluate import checkpoint_policies
    from sim.scenarios import load_scenario

    _, env, _ = load_scenario("oakland", "moderate", n_agents=3)
    ck = {"run": {"method": "ippo", "seed": 0, "scenario": "oakland"}, "epoch": 1, "policy": _policy(n_agents=2, n_in=34, m_out=env.m_out)}
    with pytest.raises(CheckpointError, match="for 2 agents, 34 inputs and 4 actions; its environment \\(oakland, 3 agents\\) needs 3, 34 and 4"):
        checkpoint_policies(ck, env)
    ck["policy"] = _policy(n_seeds=2, n_agents=3, m_out=env.m_out)
    assert list(checkpoint_policies(ck, env)) == ["ippo (seed 0, epoch 1)", "ippo (seed 1, epoch 1)"]


def test_the_training_states_of_ippo_and_qmix_round_trip_leaf_for_leaf(tmp_path):
    """What train() writes and resumes: the stacked initial states (optax, flax.struct, flashbax's buffer) come
    back with every leaf equal in value, shape and dtype."""
    import jax

    from reled_jax import qmix
    from reled_jax.networks import init_env_agents
    from reled_jax.reled import HybridPPOConfig, init_state

    from sim.scenarios import load_scenario

    _, env, _ = load_scenario("oakland", "moderate", n_agents=3)
    agents, _, _ = init_env_agents(jax.random.PRNGKey(0), env)
    qcfg = TrainConfig.of(preset="smoke", method="qmix").resolved().qmix_config()
    states = {"ippo": init_state(jax.random.PRNGKey(1), agents, HybridPPOConfig(method="ippo")),
              "qmix": qmix.init_state(jax.random.PRNGKey(2), env, qcfg, agents.policy)[0]}
    for name, state in states.items():
        stacked = jax.tree.map(lambda z: np.stack([np.asarray(z)] * 2), state)
        path = tmp_path / f"{name}.npz"
        checkpoint.write(path, {"config": {"method": name}, "epoch": 2}, {"state": stacked})
        _, arrays = checkpoint.read(path)
        template = jax.tree.map(lambda z: jax.ShapeDtypeStruct(z.shape, z.dtype), stacked)
        back = checkpoint.restore(template, arrays, "state", path)
        assert jax.tree.structure(back) == jax.tree.structure(stacked)
        for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(stacked)):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)


def test_qmix_checkpoints_leave_the_replay_buffer_out_unless_kept_and_only_finished_runs_resume_without_it(tmp_path):
    import jax

    from reled_jax import qmix
    from reled_jax.networks import init_env_agents

    from reled_jax.train import resumable, saved_state
    from sim.scenarios import load_scenario

    _, env, _ = load_scenario("oakland", "moderate", n_agents=3)
    agents, _, _ = init_env_agents(jax.random.PRNGKey(0), env)
    cfg = TrainConfig.of(preset="smoke", method="qmix").resolved()
    state = qmix.init_state(jax.random.PRNGKey(2), env, cfg.qmix_config(), agents.policy)[0]
    sizes = {}
    for keep in (True, False):
        path = tmp_path / f"keep{keep}.npz"
        checkpoint.write(path, {"config": {}, "epoch": 2, "replay_buffer": keep}, {"state": saved_state(state, keep)})
        _, arrays = checkpoint.read(path)
        sizes[keep] = path.stat().st_size
        assert any(name.startswith("state/buffer") for name in arrays) == keep
        template = jax.tree.map(lambda z: jax.ShapeDtypeStruct(z.shape, z.dtype), saved_state(state, keep))
        back = checkpoint.restore(template, arrays, "state", path)
        for a, b in zip(jax.tree.leaves(back.params), jax.tree.leaves(state.params)):
            np.testing.assert_array_equal(a, b)
    assert sizes[False] * 5 < sizes[True]  # the buffer is most of a QMIX checkpoint
    assert saved_state(state, False).buffer is None and saved_state(state, True).buffer is state.buffer
    # Resuming: with its buffer (or from a checkpoint older than the option) at any epoch; without, only once finished.
    assert resumable({"epoch": 2, "replay_buffer": True}, cfg, tmp_path / "c.npz") and resumable({"epoch": 2}, cfg, tmp_path / "c.npz")
    assert resumable({"epoch": cfg.ppo.epochs, "replay_buffer": False}, cfg, tmp_path / "c.npz") is False
    with pytest.raises(SystemExit, match="holds no replay buffer .* cannot resume from epoch 2 .* --qmix-keep-buffer"):
        resumable({"epoch": 2, "replay_buffer": False}, cfg, tmp_path / "c.npz")
    ippo = TrainConfig.of(preset="smoke", method="ippo").resolved()
    assert resumable({"epoch": 2, "replay_buffer": False}, ippo, tmp_path / "c.npz") is False  # no buffer to speak of
