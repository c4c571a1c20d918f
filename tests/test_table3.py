"""Table III (benchmarks/llm_demos.py) with the feedback of a trained policy: --checkpoint drives the other agents."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.llm_demos import Args, main, trained_logits
from reled_jax.checkpoint import read_checkpoint, write
from reled_jax.config import TrainConfig, saved_config
from reled_jax.networks import MLP, init_env_agents, observe
from reled_jax.reled import policy_apply
from sim.scenarios import load_scenario


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A two-seed checkpoint as the trainer writes it (its saved configuration and policy networks), without training."""
    _, env, _ = load_scenario("oakland", "moderate", n_agents=3)
    policy = jax.tree.map(lambda *z: np.stack(z), *[init_env_agents(jax.random.PRNGKey(s), env)[0].policy for s in (0, 1)])
    config = saved_config(TrainConfig.of(scenario="oakland", regime="moderate", n_agents=3, method="ippo", seeds=2).resolved())
    path = tmp_path_factory.mktemp("trained") / "checkpoint.npz"
    write(path, {"config": config, "epoch": 3}, {"state": {"params": {"policy": policy}}})
    return path


def test_trained_logits_are_the_chosen_seeds_networks(checkpoint):
    ck = read_checkpoint(checkpoint)
    _, env, params = load_scenario("oakland", "moderate", n_agents=3)
    obs, _ = env.reset(jax.random.PRNGKey(0), params)
    got = [np.asarray(trained_logits(ck, env, s)(None, obs)) for s in (0, 1)]
    for s in (0, 1):
        seed_params = jax.tree.map(lambda z: jnp.asarray(z[s]), ck["policy"])
        want = policy_apply(MLP(env.m_out, one_hot_nodes=env.n_nodes), seed_params, observe(obs.features, env.m_out), obs.action_mask)
        np.testing.assert_allclose(got[s], np.asarray(want), rtol=1e-6)
    finite = np.isfinite(got[0])
    assert not np.allclose(got[0][finite], got[1][finite])  # two seeds, two policies
    with pytest.raises(SystemExit, match="outside the checkpoint's 2 seed"):
        trained_logits(ck, env, 2)


def test_table_iii_reports_rvi_and_pdi_of_the_trained_policy(checkpoint, tmp_path):
    out = tmp_path / "table3.json"
    # The checkpoint's scenario and agent count replace the (grid, 10 agents) defaults.
    result = main(Args(checkpoint=str(checkpoint), checkpoint_seed=1, repeats=1, refinements=1, checkpoints=(0, 1), settings=(0,), n_steps=96, out=str(out)))
    saved = json.loads(out.read_text())
    assert saved["policy"] == "trained_policy" and saved["checkpoint"]["scenario"] == "oakland"
    assert (saved["args"]["scenario"], saved["args"]["n_agents"], saved["args"]["checkpoint_seed"]) == ("oakland", 3, 1)
    assert "trained_policy" in saved["reference_reward"] and "stand_in_policy" not in saved["reference_reward"]
    table = result["settings"]["IFs + Refn."]["table"]
    for row in table.values():
        assert row["rvi"]["mean"] >= 0 and row["pdi"]["mean"] >= 0 and np.isfinite([row["rvi"]["mean"], row["pdi"]["mean"]]).all()
    # Every refinement's episodes gave a PDI: the expert's actions scored under the trained networks.
    assert len(result["settings"]["IFs + Refn."]["curves"]["pdi"][0]) == 2
