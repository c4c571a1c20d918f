"""Expert-demonstration rollouts (paper Eq. 16) as one jitted `lax.scan`.

One episode in which the agents of a subset A_j follow their compiled expert
plans while every other agent follows a policy given as masked logits. The
record keeps, per interaction step, what the SED module needs: rewards of all
agents (for R^j, Eqs. 17-19), the instruction that produced each expert action
(l_k boundaries), and the log-probability the current policy gives the expert
action (for K^j, Eqs. 20-24); and what HPO needs: observations, actions, masks.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import struct

from llm.compile import PlanTensors, expert_actions
from sim.env import EnvParams, Observation, RouteChoiceEnv

PolicyLogits = Callable[[jax.Array, Observation], jax.Array]  # (key, obs) -> [A, M] logits


@struct.dataclass
class DemoRollout:
    """One episode, T interaction steps (rows after the episode ended have valid=False)."""

    valid: jax.Array  # [T] bool: the step happened before the episode ended
    sim_time: jax.Array  # [T] int32 simulator second when the step started
    obs: jax.Array  # [T, A, F] observation features at the decision
    mask: jax.Array  # [T, A, M] action mask
    decided: jax.Array  # [T, A] bool: the agent took a decision at this step
    node: jax.Array  # [T, A] junction of the decision
    action: jax.Array  # [T, A] chosen out-edge slot
    instruction: jax.Array  # [T, A] index k of the instruction driving each agent (expert agents)
    policy_logp: jax.Array  # [T, A] log pi~(u_t | o_t) of the chosen action under the current policy
    policy_best: jax.Array  # [T, A] the current policy's most likely action
    reward: jax.Array  # [T, A] Eq. 32 reward realised by the step (terminal bonus included)
    arrived_now: jax.Array  # [T, A] bool: the agent arrived during the step
    done: jax.Array  # [T, A] bool
    travel_time: jax.Array  # [A] at the episode's end (elapsed time if not arrived)
    arrived: jax.Array  # [A] bool at the episode's end


def make_demo_rollout(env: RouteChoiceEnv, n_steps: int) -> Callable:
    """A jittable `rollout(key, params, plans, expert_mask, policy_logits) -> DemoRollout`.

    `expert_mask` [A] selects A_j; `policy_logits(key, obs)` gives the current
    policy's logits for all agents (only the others act on them, but every
    agent's expert action is scored under it for Eq. 22).
    """

    def rollout(key: jax.Array, params: EnvParams, plans: PlanTensors, expert_mask: jax.Array, policy_logits: PolicyLogits) -> DemoRollout:
        k_reset, k_run = jax.random.split(key)
        obs, state = env.reset(k_reset, params)
        pointer = jnp.zeros((env.n_agents,), jnp.int32)
        carry0 = (obs, state, pointer, jnp.bool_(False), state.agent_arrived)

        def one_step(carry, step_key):
            obs, state, pointer, finished, arrived_before = carry
            k_pol, k_act, k_env = jax.random.split(step_key, 3)
            logits = jnp.where(obs.action_mask, policy_logits(k_pol, obs), -jnp.inf)
            logp_all = jax.nn.log_softmax(logits, axis=-1)
            sampled = jax.random.categorical(k_act, logits, axis=-1)
            exp_act, new_pointer = expert_actions(plans, pointer, state, params)
            action = jnp.where(expert_mask, exp_act, sampled)
            logp = jnp.take_along_axis(logp_all, action[:, None], axis=1)[:, 0]
            n_obs, n_state, reward, done, info = env.step_env(k_env, state, action, params)
            live = ~finished
            record = dict(
                valid=live,
                sim_time=state.t,
                obs=obs.features,
                mask=obs.action_mask,
                decided=info["decided"] & live,
                node=state.veh_node[: env.n_agents],
                action=action,
                instruction=new_pointer,
                policy_logp=logp,
                policy_best=jnp.argmax(logits, axis=-1),
                reward=jnp.where(live, reward, 0.0),
                arrived_now=info["arrived"] & ~arrived_before & live,
                done=done,
            )
            # After the episode ends the carry is frozen, so later rows repeat nothing.
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(live, a, b), new, old)  # noqa: E731
            obs, state = keep(n_obs, obs), keep(n_state, state)
            pointer = jnp.where(live, new_pointer, pointer)
            finished = finished | info["episode_done"]
            return (obs, state, pointer, finished, state.agent_arrived), (record, info["travel_time"])

        (_, state, _, _, _), (records, travel) = jax.lax.scan(one_step, carry0, jax.random.split(k_run, n_steps))
        last = jnp.maximum(jnp.sum(records["valid"]) - 1, 0)
        return DemoRollout(travel_time=travel[last], arrived=state.agent_arrived, **records)

    return rollout
