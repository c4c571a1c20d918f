"""Pure-JAX multi-agent route-choice environment on a macroscopic traffic simulator.

Third stage of the data flow (network arrays -> env params -> rollouts). The
model follows the paper's Section IV-A:

* Every vehicle (agent or background) lives on a directed edge. Edge speed
  follows a fundamental diagram with a free-flow branch and a Greenshields
  congested branch: v = v_free below the critical occupancy o_c = n_c / n_jam
  (TrafficModel.critical_occupancy), then falling linearly to v_min at jam, where
  n_jam is the edge's storage (sim.network.STORAGE_RULE: lanes * floor((length +
  2.5 m) / 7.5 m), as SUMO fits its cars). (Pure Greenshields would let a lone car
  slow itself.)
* A vehicle that reaches the stop line waits there until (a) its approach is
  green, (b) the edge's discharge rate allows another departure (saturation
  flow per lane, at most one vehicle per edge per second), and (c) its next
  edge has free storage. A full edge accepts nobody, so queues spill back. On
  a single-lane edge the queue is first in, first out; on a multi-lane edge a
  head waiting for a full edge lets the vehicles beside it go. A vehicle held
  at the line `teleport_s` beyond its free-flow time enters its next edge even
  if full (SUMO's teleport), so cyclic spillback cannot lock the network.
  The free parameters are calibrated against SUMO (TrafficModel).
* Optionally (TrafficModel.accel_mps2 > 0) every vehicle carries its own speed,
  accelerating towards its edge's speed after a standstill or a turn, so time
  lost at junctions depends on each vehicle's history (issue 21). Off by
  default: measured against SUMO it did not beat the fixed junction delays
  (docs/sumo.md).
* One tick is one simulator second (dt = 1 s). Episodes last at most
  T_max = 2400 ticks and end early when every agent has arrived.
* Agents decide at junctions: an agent reaching the stop line of an edge whose
  end is not its destination becomes *awaiting* and the environment returns
  control. `step` consumes the actions of awaiting agents (one *interaction
  step* each, paper IV-A1) and then runs ticks until some agent is awaiting
  again or the episode ends, so no compute is spent on empty decisions.
* Background vehicles follow free-flow shortest-time routes between origin-
  destination pairs of the scenario's predefined set and are re-injected at a
  new origin when they arrive, so demand stays steady. Re-injection draws from
  a counter-based integer hash of the episode's salt (drawn at reset), the
  vehicle and its trip count, so ticks need no PRNG and, given its reset, an
  episode is a deterministic function of the agents' actions.

Observation per agent (paper Table I), shape 2*m_out + 2: current junction,
destination junction, then per outgoing edge its score (free-flow time over
estimated current time, in (0, 1]) and end junction; -1 where no edge exists.
Reward per decision (Eq. 32): -(t_k - t_{k-1}) + w_d * (d_{k-1} - d_k) with the
Euclidean distance to the destination, plus 0.1 * T_max on arrival.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from sim.network import STORAGE_RULE, RoadNetwork
from sim.osm import NetworkError

OD_TABLE_SIZE = 1024  # resolution of weighted OD sampling


@dataclasses.dataclass(frozen=True)
class TrafficModel:
    """The simulator's free parameters (module doc), calibrated against SUMO by benchmarks/calibrate.py.

    saturation_flow: vehicles per second per lane leaving a stop line (0.5 = 1800 veh/h/lane).
    critical_occupancy: share of an edge's jam storage below which traffic moves at free speed.
    min_speed_frac: speed at jam density as a share of the free speed.
    speed_factor: free speed as a share of the speed limit. SUMO's cars accelerate,
        brake for turns, yield and dawdle, so they cover an empty road more slowly
        than its limit; the SUMO export keeps the limits themselves.
    teleport_s: a vehicle held at a stop line this long beyond its free-flow time on
        the edge enters its next edge even if that edge is full, as SUMO teleports a
        vehicle stuck for its time-to-teleport: cyclic spillback on short edges otherwise
        locks forever. 0 = never. (SUMO's own is 300 s, but SUMO also untangles queues
        through its lanes, which ours cannot; the calibrated 90 s stands in for both.)
    """

    # Defaults: best point of benchmarks/results/calibration.json, searched again after edge storage began to
    # count as SUMO's does (issue 21, sim.network): mean |travel time error| vs SUMO 1.9 % over free flow,
    # moderate and congested on hongkong and grid, every cell within 3.3 %. The defaults before (critical
    # occupancy 0.4, release after 60 s, 1.5 s turns, no start-up loss) ran 4-22 % fast once short links held
    # as many cars as in SUMO (calibration_before_storage.json holds the search that chose them).
    saturation_flow: float = 0.5
    critical_occupancy: float = 0.3
    min_speed_frac: float = 0.05
    teleport_s: int = 90
    speed_factor: float = 1.0
    # Junctions (issue 21): crossing one costs the crossing vehicle alone some time on its new edge (it enters
    # behind the stop line), so the queue it leaves discharges as before (RouteChoiceEnv._junction_crossing): a turn
    # of more than 30 degrees (U-turns included) costs up to turn_delay_s, scaled by the speed the vehicle arrives
    # with; the first start after the line was idle (a queue released by green, a depot) costs startup_loss_s.
    turn_delay_s: float = 3.0
    # Rejected at 1.5-3 s with the old storage (+19-71 % in the loaded cells, calibration_startup_loss.json); with
    # SUMO's storage 0.75 s is part of the best point (1 s: loaded cells up to +12 %, 0.5 s: down to -16 %; the
    # search rounds are in docs/sumo.md).
    startup_loss_s: float = 0.75
    # Turn slow-downs as SUMO's junction geometry has them (issue 21, measured in calibration_turns.json): a wide
    # turn (left where traffic keeps right, right where it keeps left) sweeps a larger radius at a higher speed than
    # a tight one, so it costs wide_turn_frac of turn_delay_s (1 = every turn alike). A vehicle on an edge shorter
    # than turn_regain_m has not regained its speed since the junction behind it, so a turn at the edge's end costs
    # the share length / turn_regain_m (0 = no edge is that short).
    wide_turn_frac: float = 1.0
    turn_regain_m: float = 0.0
    # A speed per vehicle (issue 21, "per-vehicle speed state"): with accel_mps2 > 0 a vehicle no longer takes its edge's
    # speed at once but accelerates towards it at this rate (SUMO's passenger car: 2.6 m/s^2), from standstill after
    # standing at a line or in a depot, and from at most turn_speed_mps after a turn of more than 30 degrees; it
    # slows to a slower edge's speed at once. So stops, turns and short edges cost each vehicle what its own speed
    # history costs, where the turn delay and start-up loss charge every vehicle alike. 0 = every vehicle moves at
    # its edge's speed (the model before this option).
    accel_mps2: float = 0.0
    turn_speed_mps: float = 8.0
    # In a point queue every vehicle stands at the line, but in SUMO only the head of a queue starts there: the vehicles
    # behind it start further back and cross the line already moving, which the saturation flow already counts. So with
    # a speed state a vehicle released from a queue that was already discharging leaves at this speed (0 = from
    # standstill like the head).
    queue_exit_speed_mps: float = 0.0


def simulator_model(traffic: TrafficModel = TrafficModel()) -> dict:
    """The dynamics a result was made with beyond its scenario and training configuration: the traffic model's
    parameters and how edge storage is counted. Every checkpoint and sweep results file records it, so a run
    trained under one model is never resumed, reused or tabled beside one of another (a file or checkpoint
    without it was made before issue 21's storage fix: `UNRECORDED_MODEL`). Without a speed state (accel_mps2 0)
    its three parameters are left out, so results recorded before the option existed still match the same dynamics."""
    params = dataclasses.asdict(traffic)
    if not traffic.accel_mps2:
        del params["accel_mps2"], params["turn_speed_mps"], params["queue_exit_speed_mps"]
    return {"traffic": params, "storage": STORAGE_RULE}


UNRECORDED_MODEL = "unrecorded: made before issue 21's storage fix (edge storage floor(lanes x length / 7.5 m), earlier TrafficModel defaults)"


def describe_model(model: dict | None) -> str:
    """One line naming a recorded simulator model, for refusals and reports."""
    if model is None:
        return UNRECORDED_MODEL
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in model["traffic"].items()) + f"; storage {model['storage']}"


@struct.dataclass
class EnvParams:
    """Everything static about one scenario, as device arrays; passed into every call."""

    node_xy: jax.Array  # [N, 2]
    edge_from: jax.Array  # [E]
    edge_to: jax.Array  # [E]
    edge_length: jax.Array  # [E]
    edge_speed: jax.Array  # [E] free speed m/s
    edge_storage: jax.Array  # [E] float vehicles at jam density
    edge_discharge: jax.Array  # [E] vehicles per second that may leave (saturation flow * lanes)
    edge_multilane: jax.Array  # [E] bool: a blocked queue head does not hold up the vehicles beside it
    edge_free_time: jax.Array  # [E]
    edge_signal: jax.Array  # [E, 4] int: cycle, green start, green duration, offset
    out_edges: jax.Array  # [N, M]
    next_slot_time: jax.Array  # [N, N] out-edge slot of the first hop by free-flow time
    next_slot_dist: jax.Array  # [N, N] out-edge slot of the first hop by distance
    agent_origin: jax.Array  # [A]
    agent_dest: jax.Array  # [A]
    agent_depart: jax.Array  # [A] int seconds
    od_origin: jax.Array  # [K] background origin junctions
    od_dest: jax.Array  # [K]
    od_table: jax.Array  # [OD_TABLE] OD-pair indices, repeated in proportion to their weight
    slot_edge: jax.Array  # [S] initial-placement slots: edge of each slot
    slot_pos: jax.Array  # [S] position of each slot along its edge
    slot_cum_weight: jax.Array  # [S] cumulative placement weight (in proportion to edge length)
    slot_max_weight: jax.Array  # [] largest single-slot weight
    t_max: int = struct.field(pytree_node=False, default=2400)
    omega_d: float = struct.field(pytree_node=False, default=1.0)
    terminal_bonus: float = struct.field(pytree_node=False, default=240.0)
    min_speed_frac: float = struct.field(pytree_node=False, default=TrafficModel.min_speed_frac)
    critical_occupancy: float = struct.field(pytree_node=False, default=TrafficModel.critical_occupancy)
    teleport_s: int = struct.field(pytree_node=False, default=TrafficModel.teleport_s)
    edge_dir: jax.Array | None = None  # [E, 2] unit direction of each edge (junction delays; None: no junction delays)
    turn_delay_s: float = struct.field(pytree_node=False, default=TrafficModel.turn_delay_s)
    startup_loss_s: float = struct.field(pytree_node=False, default=TrafficModel.startup_loss_s)
    wide_turn_frac: float = struct.field(pytree_node=False, default=TrafficModel.wide_turn_frac)
    turn_regain_m: float = struct.field(pytree_node=False, default=TrafficModel.turn_regain_m)
    lefthand: bool = struct.field(pytree_node=False, default=False)  # which turns are wide (wide_turn_frac)
    accel_mps2: float = struct.field(pytree_node=False, default=TrafficModel.accel_mps2)
    turn_speed_mps: float = struct.field(pytree_node=False, default=TrafficModel.turn_speed_mps)
    queue_exit_speed_mps: float = struct.field(pytree_node=False, default=TrafficModel.queue_exit_speed_mps)
    # Under vmap a while_loop runs until the slowest environment stops, so one jammed
    # environment would stall the batch: a step returns after at most this many ticks
    # even if no agent is awaiting (then `decided` is all False and nothing is counted).
    max_ticks_per_step: int = struct.field(pytree_node=False, default=60)


@struct.dataclass
class EnvState:
    t: jax.Array  # [] int32 simulator second
    veh_edge: jax.Array  # [V] current edge, -1 when waiting at an origin (depot) or arrived
    veh_pos: jax.Array  # [V] metres along the edge (negative: still crossing the junction; past the edge's length: stopped at the line)
    veh_speed: jax.Array  # [V] m/s at the end of the last tick (TrafficModel.accel_mps2; unused without it)
    veh_node: jax.Array  # [V] junction the vehicle is approaching (or waiting at)
    veh_dest: jax.Array  # [V]
    veh_next: jax.Array  # [V] chosen next edge, -1 if none yet
    veh_enter: jax.Array  # [V] second the vehicle entered its edge/depot (FIFO order)
    veh_trips: jax.Array  # [V] completed trips (background re-injection counter)
    salt: jax.Array  # [] uint32 re-injection hash seed
    discharge_credit: jax.Array  # [E] departures the edge may still release
    agent_awaiting: jax.Array  # [A] bool: must choose an outgoing edge now
    agent_arrived: jax.Array  # [A] bool
    agent_last_t: jax.Array  # [A] float time of the previous decision (t_{k-1})
    agent_last_d: jax.Array  # [A] float distance at the previous decision (d_{k-1})
    agent_decisions: jax.Array  # [A] int decisions taken this episode
    agent_travel_time: jax.Array  # [A] float, set on arrival
    agent_reward: jax.Array  # [A] Eq. 32 reward realized since the last step


@struct.dataclass
class Observation:
    features: jax.Array  # [A, 2M+2] float32, paper Table I
    action_mask: jax.Array  # [A, M] bool: outgoing edge exists
    awaiting: jax.Array  # [A] bool: this agent's action will be consumed by the next step


def _hash_uniform(salt, a, b):
    """Counter-based uniform in [0, 1) from uint32 inputs (murmur3 finalizer)."""
    x = salt ^ (a.astype(jnp.uint32) * jnp.uint32(0x9E3779B9)) ^ (b.astype(jnp.uint32) * jnp.uint32(0x85EBCA6B))
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    x = x ^ (x >> 16)
    return (x >> 8).astype(jnp.float32) / jnp.float32(1 << 24)


@dataclasses.dataclass(frozen=True)
class RouteChoiceEnv:
    """Static sizes of the environment; all arrays live in EnvParams / EnvState."""

    n_agents: int
    n_background: int
    n_nodes: int
    n_edges: int
    m_out: int

    @property
    def n_vehicles(self) -> int:
        return self.n_agents + self.n_background

    @property
    def obs_dim(self) -> int:
        return 2 * self.m_out + 2

    # ------------------------------------------------------------------ reset
    def reset(self, key: chex.PRNGKey, params: EnvParams) -> tuple[Observation, EnvState]:
        k_place, k_shift, k_dest, k_salt = jax.random.split(key, 4)
        n_bg, n_ag = self.n_background, self.n_agents
        bg_edge, bg_pos = self._place_background(k_place, k_shift, params)
        od = params.od_table[jax.random.randint(k_dest, (n_bg,), 0, params.od_table.shape[0])]
        bg_dest = params.od_dest[od]
        bg_node = params.edge_to[bg_edge]

        veh_edge = jnp.concatenate([jnp.full((n_ag,), -1, jnp.int32), bg_edge])
        veh_node = jnp.concatenate([params.agent_origin, bg_node])
        veh_dest = jnp.concatenate([params.agent_dest, bg_dest])
        veh_next = jnp.concatenate([jnp.full((n_ag,), -1, jnp.int32), _route_next(params, bg_node, bg_dest)])
        # Entry time as if each had driven from its edge's start at free speed: vehicles
        # further along leave first, and the teleport clock starts from a plausible time.
        bg_enter = -jnp.ceil(bg_pos / params.edge_speed[bg_edge]).astype(jnp.int32)
        veh_enter = jnp.concatenate([params.agent_depart, bg_enter])
        dist0 = self._dist_to_dest(params, params.agent_origin, params.agent_dest)
        state = EnvState(
            t=jnp.int32(0),
            veh_edge=veh_edge,
            veh_pos=jnp.concatenate([jnp.zeros((n_ag,), jnp.float32), bg_pos]),
            veh_speed=jnp.concatenate([jnp.zeros((n_ag,), jnp.float32), params.edge_speed[bg_edge]]),
            veh_node=veh_node,
            veh_dest=veh_dest,
            veh_next=veh_next,
            veh_enter=veh_enter,
            veh_trips=jnp.zeros((self.n_vehicles,), jnp.int32),
            salt=jax.random.bits(k_salt, (), jnp.uint32),
            discharge_credit=jnp.ones((self.n_edges,), jnp.float32),
            agent_awaiting=params.agent_depart <= 0,
            agent_arrived=jnp.zeros((n_ag,), bool),
            agent_last_t=params.agent_depart.astype(jnp.float32),
            agent_last_d=dist0,
            agent_decisions=jnp.zeros((n_ag,), jnp.int32),
            agent_travel_time=jnp.zeros((n_ag,), jnp.float32),
            agent_reward=jnp.zeros((n_ag,), jnp.float32),
        )
        return self.get_obs(state, params), state

    def _place_background(self, k_place, k_shift, params: EnvParams):
        """Background vehicles on distinct storage slots, in proportion to edge length.

        Stratified sampling on the cumulative slot weight: vehicle i lands in
        stratum i (width w = total / n), at a uniform point of its first
        w - max_slot_weight, so consecutive points are more than one slot apart
        and never share a slot: no edge starts over its storage. A random cyclic
        shift varies which part of the network each stratum covers. This is
        O(n log S) per reset, where sampling without replacement (Gumbel top-k)
        was O(S log S) and dominated auto-reset.
        """
        n_bg = self.n_background
        total = params.slot_cum_weight[-1]
        width = total / n_bg
        usable = jnp.maximum(width - params.slot_max_weight, 0.0)
        points = jnp.arange(n_bg) * width + jax.random.uniform(k_place, (n_bg,)) * usable
        points = (points + jax.random.uniform(k_shift) * total) % total
        slots = jnp.minimum(jnp.searchsorted(params.slot_cum_weight, points, side="right"), params.slot_edge.shape[0] - 1)
        return params.slot_edge[slots], params.slot_pos[slots]

    # ------------------------------------------------------------------- step
    def step(
        self, key: chex.PRNGKey, state: EnvState, actions: jax.Array, params: EnvParams
    ) -> tuple[Observation, EnvState, jax.Array, jax.Array, dict]:
        """Step with auto-reset: when the episode ends, the returned obs/state are a fresh reset.

        Many environments: `step_batch` (lockstep) or `jax.vmap(step)` (each its own tick loop).
        """
        k_step, k_reset = jax.random.split(key)
        obs_st, state_st, reward, done, info = self.step_env(k_step, state, actions, params)
        obs_re, state_re = self.reset(k_reset, params)
        episode_done = info["episode_done"]
        state = jax.tree.map(lambda a, b: jax.lax.select(episode_done, a, b), state_re, state_st)
        obs = jax.tree.map(lambda a, b: jax.lax.select(episode_done, a, b), obs_re, obs_st)
        return obs, state, reward, done, info

    def step_env(
        self, key: chex.PRNGKey, state: EnvState, actions: jax.Array, params: EnvParams
    ) -> tuple[Observation, EnvState, jax.Array, jax.Array, dict]:
        """Apply awaiting agents' actions, then run ticks until a decision or the end.

        Returns per-agent reward [A] (Eq. 32 for each decision that completed in
        this step), per-agent done [A] (arrived or episode over), and info. `key` is
        unused: given its reset, an episode is a deterministic function of the actions
        (re-injection hashes the reset's salt with a per-vehicle trip counter).
        """
        del key
        state, decided, valid = self._consume_actions(state, actions, params)
        t_start = state.t
        state = jax.lax.while_loop(lambda s: self._ticking(s, t_start, params), lambda s: self.tick(s, params), state)
        return self._finish_step(state, t_start, decided, valid, params)

    def step_batch(
        self, keys: chex.PRNGKey, state: EnvState, actions: jax.Array, params: EnvParams, axis_name: str | None = None
    ) -> tuple[Observation, EnvState, jax.Array, jax.Array, dict]:
        """`step` of B environments in lockstep: arrays carry a leading [B] axis (keys [B, 2]).

        Under `jax.vmap(step)` every environment's tick loop runs until the slowest one's
        next decision (XLA executes a batched while_loop for all and masks the finished),
        so most ticks are computed and thrown away. Here all environments tick together
        until any of them has an awaiting agent (or ends its episode): no tick is wasted,
        and an environment without a decision returns `decided` all False (an empty
        step, no interaction step). Each environment runs exactly the ticks, decisions
        and rewards it would run alone (tests/test_env.py); only the env-step boundaries
        differ. The auto-reset is computed only when some episode ended.

        `axis_name`: when this runs under `jax.vmap(..., axis_name=axis_name)` (seeds), whether
        any episode ended is asked across that axis too, so the reset stays a `lax.cond` (a cond
        on a batched predicate becomes a select: the reset would be computed at every step).
        """
        chex.assert_shape(actions, (keys.shape[0], self.n_agents))
        state, decided, valid = jax.vmap(self._consume_actions, in_axes=(0, 0, None))(state, actions, params)
        t_start = state.t
        ticking = lambda s: jnp.all(jax.vmap(self._ticking, in_axes=(0, 0, None))(s, t_start, params))  # noqa: E731
        state = jax.lax.while_loop(ticking, lambda s: jax.vmap(self.tick, in_axes=(0, None))(s, params), state)
        obs, state, reward, done, info = jax.vmap(self._finish_step, in_axes=(0, 0, 0, 0, None))(state, t_start, decided, valid, params)

        def auto_reset(obs_state):
            obs_st, state_st = obs_state
            k_reset = jax.vmap(lambda k: jax.random.split(k)[1])(keys)
            obs_re, state_re = jax.vmap(self.reset, in_axes=(0, None))(k_reset, params)
            ended = info["episode_done"]
            pick = lambda a, b: jnp.where(ended.reshape(ended.shape + (1,) * (a.ndim - 1)), a, b)  # noqa: E731
            return jax.tree.map(pick, obs_re, obs_st), jax.tree.map(pick, state_re, state_st)

        any_ended = jnp.any(info["episode_done"])
        if axis_name is not None:
            any_ended = jax.lax.psum(any_ended.astype(jnp.int32), axis_name) > 0
        obs, state = jax.lax.cond(any_ended, auto_reset, lambda o_s: o_s, (obs, state))
        return obs, state, reward, done, info

    def _consume_actions(self, state: EnvState, actions: jax.Array, params: EnvParams):
        """Awaiting agents take their chosen edges; returns (state, decided [A], valid [A])."""
        chex.assert_shape(actions, (self.n_agents,))
        n_ag = self.n_agents
        decided = state.agent_awaiting
        node = state.veh_node[:n_ag]
        slot_edges = params.out_edges[node]  # [A, M]
        chosen = jnp.take_along_axis(slot_edges, jnp.clip(actions, 0, self.m_out - 1)[:, None], axis=1)[:, 0]
        valid = (actions >= 0) & (actions < self.m_out) & (chosen >= 0)
        # An invalid action falls back to the first existing edge (and is counted).
        chosen = jnp.where(valid, chosen, slot_edges[:, 0])
        veh_next = state.veh_next.at[:n_ag].set(jnp.where(decided, chosen, state.veh_next[:n_ag]))
        state = state.replace(
            veh_next=veh_next,
            agent_awaiting=jnp.zeros_like(decided),
            agent_decisions=state.agent_decisions + decided,
            agent_reward=jnp.zeros((n_ag,), jnp.float32),
        )
        return state, decided, valid

    @staticmethod
    def _ticking(s: EnvState, t_start, params: EnvParams):
        """Whether an env step keeps ticking: nobody awaiting, someone driving, time left."""
        return (
            (~jnp.any(s.agent_awaiting))
            & (~jnp.all(s.agent_arrived))
            & (s.t < params.t_max)
            & (s.t - t_start < params.max_ticks_per_step)
        )

    def _finish_step(self, state: EnvState, t_start, decided, valid, params: EnvParams):
        """Rewards, done flags, info and observation at the end of an env step's ticks."""
        episode_done = jnp.all(state.agent_arrived) | (state.t >= params.t_max)
        # Truncation: agents still driving get the Eq. 32 reward of their last, unfinished decision.
        reward = state.agent_reward + self._truncation_reward(state, params, episode_done)
        travel_time = jnp.where(state.agent_arrived, state.agent_travel_time, state.t.astype(jnp.float32) - params.agent_depart)
        state = state.replace(agent_reward=jnp.zeros_like(reward))
        info = {
            "decided": decided,
            "n_decisions": jnp.sum(decided).astype(jnp.int32),
            "invalid_actions": jnp.sum(decided & ~valid).astype(jnp.int32),
            "ticks": state.t - t_start,
            "sim_time": state.t,
            "arrived": state.agent_arrived,
            "travel_time": travel_time,
            "episode_done": episode_done,
        }
        done = state.agent_arrived | episode_done
        return self.get_obs(state, params), state, reward, done, info

    # ------------------------------------------------------------------- tick
    def tick(self, state: EnvState, params: EnvParams) -> EnvState:
        """Advance the traffic simulation by one second (pure; jittable; vmappable)."""
        n_ag, n_veh, n_edges = self.n_agents, self.n_vehicles, self.n_edges
        idx = jnp.arange(n_veh, dtype=jnp.int32)
        is_agent = idx < n_ag
        t = state.t
        on_edge = state.veh_edge >= 0
        edge = jnp.maximum(state.veh_edge, 0)
        arrived_agent = jnp.concatenate([state.agent_arrived, jnp.zeros((self.n_background,), bool)])
        depart = jnp.concatenate([params.agent_depart, jnp.zeros((self.n_background,), jnp.int32)])
        in_depot = (~on_edge) & (~arrived_agent) & (t >= depart)

        count = jnp.zeros((n_edges,), jnp.float32).at[edge].add(on_edge.astype(jnp.float32))
        length = params.edge_length[edge]
        at_line = on_edge & (state.veh_pos >= length)

        # --- 1. transfers: stop line / depot -> next edge -------------------------
        sig = params.edge_signal[edge]  # [V, 4]
        phase = (t + sig[:, 3]) % sig[:, 0]
        green = (phase >= sig[:, 1]) & (phase < sig[:, 1] + sig[:, 2])
        has_next = state.veh_next >= 0
        credit_ok = state.discharge_credit[edge] >= 1.0
        target = jnp.maximum(state.veh_next, 0)
        space = count[target] < params.edge_storage[target]
        # Held at the line far beyond its free-flow time: jump into the next edge anyway (TrafficModel.teleport_s).
        stuck = at_line & (params.teleport_s > 0) & (t - state.veh_enter >= params.teleport_s + params.edge_free_time[edge])
        space = space | stuck
        # On a single-lane edge the queue head blocks everyone behind it; on a multi-lane
        # edge a head waiting for a full edge lets the vehicles beside it go.
        line_ready = at_line & green & credit_ok & (space | ~params.edge_multilane[edge])
        want = has_next & (line_ready | in_depot)
        big = jnp.int32(2**30)
        # At most one departure per edge per tick: the vehicle that entered first.
        src_key = jnp.where(want & at_line, state.veh_enter * n_veh + idx, big)
        src_min = jnp.full((n_edges,), big).at[edge].min(src_key)
        src_ok = in_depot | (src_key == src_min[edge])
        # At most one arrival per edge per tick, and only into free storage.
        tgt_key = jnp.where(want & src_ok, state.veh_enter * n_veh + idx, big)
        tgt_min = jnp.full((n_edges,), big).at[target].min(tgt_key)
        move = want & src_ok & (tgt_key == tgt_min[target]) & space

        leaving = move & at_line
        credit = state.discharge_credit.at[edge].add(-leaving.astype(jnp.float32))
        # Token bucket refilled at the discharge rate. It holds one departure plus one tick's
        # refill, so the fraction left after a departure carries over (0.7 veh/s is 0.7, not
        # one every 2 s); after idling a queue may release one extra vehicle.
        credit = jnp.minimum(credit + params.edge_discharge, 1.0 + params.edge_discharge)

        new_edge = jnp.where(move, target, state.veh_edge)
        new_node = jnp.where(move, params.edge_to[target], state.veh_node)
        route_next = _route_next(params, new_node, state.veh_dest)
        new_next = jnp.where(move, jnp.where(is_agent, -1, route_next), state.veh_next)
        speed = edge_speed(count, params)
        # The speed each vehicle reaches its line with: nothing after standing there a tick (marked below, past the line).
        stood = at_line & (state.veh_pos > length)
        idle_line = state.discharge_credit[edge] >= 1.0 + params.edge_discharge[edge] - 1e-6  # a full bucket: nobody left last tick
        if params.accel_mps2:
            queued = jnp.where(idle_line, 0.0, params.queue_exit_speed_mps)
            arrive_speed = jnp.where(in_depot, 0.0, jnp.where(stood, queued, state.veh_speed))
        else:
            arrive_speed = jnp.where(stood | in_depot, 0.0, speed[edge])
        delay, entry_speed = self._junction_crossing(params, edge, target, in_depot, stood, idle_line, arrive_speed)
        if params.accel_mps2:
            entry_speed = jnp.minimum(entry_speed, speed[target])
            # The delay is spent at the speed reached after the first tick (from a standstill there is no other).
            crossing_speed = jnp.minimum(entry_speed + params.accel_mps2, speed[target])
        else:
            # At the new edge's current speed: a delay at its free speed would stretch by the congestion factor while the
            # vehicle crawls off behind the line.
            crossing_speed = speed[target]
        pos = jnp.where(move, -delay * crossing_speed, state.veh_pos)
        enter = jnp.where(move, t, state.veh_enter)

        # --- 2. advance along edges at the density-dependent speed -----------------
        on_edge = new_edge >= 0
        edge = jnp.maximum(new_edge, 0)
        length = params.edge_length[edge]
        if params.accel_mps2:  # towards the edge's speed at accel_mps2 (exact distance under constant acceleration)
            v_from = jnp.where(move, entry_speed, state.veh_speed)
            v_to = jnp.minimum(v_from + params.accel_mps2, speed[edge])
            advanced = jnp.minimum(pos + jnp.where(v_to > v_from, 0.5 * (v_from + v_to), v_to), length)
            veh_speed = jnp.where(on_edge & ~(at_line & ~move), v_to, 0.0)
        else:
            advanced = jnp.minimum(pos + speed[edge], length)
            veh_speed = state.veh_speed
        if params.turn_delay_s or params.startup_loss_s or params.accel_mps2:  # a vehicle that stood at its line a whole tick is marked: past the line
            advanced = jnp.where(at_line & ~move, length + 1.0, advanced)
        pos = jnp.where(on_edge, advanced, pos)
        t_new = t + 1
        at_line = on_edge & (pos >= length)

        # --- 3. events at time t+1: arrivals, decisions ----------------------------
        arrive = at_line & (new_node == state.veh_dest)
        # Background arrivals are re-injected at the origin of a new OD pair (a depot
        # at that junction, entering when their first edge has room).
        u = _hash_uniform(state.salt, idx, state.veh_trips)
        od = params.od_table[(u * params.od_table.shape[0]).astype(jnp.int32)]
        reinject = arrive & ~is_agent
        re_origin, re_dest = params.od_origin[od], params.od_dest[od]
        new_edge = jnp.where(arrive, -1, new_edge)
        new_node = jnp.where(reinject, re_origin, new_node)
        veh_dest = jnp.where(reinject, re_dest, state.veh_dest)
        new_next = jnp.where(reinject, _route_next(params, re_origin, re_dest), new_next)
        enter = jnp.where(reinject, t_new, enter)
        trips = state.veh_trips + reinject

        a_arrive = arrive[:n_ag]
        a_node = new_node[:n_ag]
        a_line = at_line[:n_ag] & ~a_arrive & (new_next[:n_ag] < 0) & ~state.agent_arrived
        a_depot = (new_edge[:n_ag] < 0) & ~state.agent_arrived & ~a_arrive & (new_next[:n_ag] < 0)
        a_start = a_depot & (state.agent_decisions == 0) & (t_new >= params.agent_depart) & ~state.agent_awaiting
        becomes_awaiting = (a_line | a_start) & ~state.agent_awaiting
        rewards = self._settle_rewards(state, params, t_new, a_arrive, a_node, becomes_awaiting, a_start)
        return state.replace(
            t=t_new,
            veh_edge=new_edge,
            veh_pos=pos,
            veh_speed=veh_speed,
            veh_node=new_node,
            veh_dest=veh_dest,
            veh_next=new_next,
            veh_enter=enter,
            veh_trips=trips,
            discharge_credit=credit,
            agent_awaiting=state.agent_awaiting | becomes_awaiting,
            agent_arrived=state.agent_arrived | a_arrive,
            agent_travel_time=jnp.where(a_arrive, t_new.astype(jnp.float32) - params.agent_depart, state.agent_travel_time),
            **rewards,
        )

    # ----------------------------------------------------------------- reward (Eq. 32)
    @staticmethod
    def _junction_crossing(params: EnvParams, edge, target, in_depot, stood, idle_line, arrive_speed):
        """What crossing its junction costs each vehicle moving now: ([V] seconds lost, spent on its new edge, which it
        enters this far behind the stop line; [V] the speed it enters with), from TrafficModel's turn and start-up delays
        and turn speed. Without any of them: no delay, and the speed it arrived with.

        A turn (more than 30 degrees) costs what slowing for it costs at the speed the vehicle arrives with
        (turn_delay_s at free speed, less in slow traffic, nothing after standing at the line), and with a speed state
        it leaves the junction at no more than turn_speed_mps. A start from standstill costs startup_loss_s, but
        only to the first vehicle away after the line was idle (a depot start, or the head of a queue released by
        green): the vehicles behind it discharge at the saturation flow, which already holds their start-up."""
        if not (params.turn_delay_s or params.startup_loss_s or params.accel_mps2):
            return jnp.zeros_like(arrive_speed), arrive_speed
        incoming, outgoing = params.edge_dir[edge], params.edge_dir[target]
        cos = jnp.sum(incoming * outgoing, axis=-1)
        turning = (cos <= 0.866) & ~in_depot  # more than 30 degrees off straight
        turn_cost = jnp.full_like(cos, params.turn_delay_s)
        if params.wide_turn_frac != 1.0:  # counter-clockwise is a left turn; U-turns (beyond 135 degrees) count as tight
            ccw = incoming[..., 0] * outgoing[..., 1] - incoming[..., 1] * outgoing[..., 0] > 0
            turn_cost = jnp.where((ccw != params.lefthand) & (cos > -0.7071), turn_cost * params.wide_turn_frac, turn_cost)
        if params.turn_regain_m:
            turn_cost = turn_cost * jnp.minimum(1.0, params.edge_length[edge] / params.turn_regain_m)
        cruise = jnp.minimum(arrive_speed / params.edge_speed[edge], 1.0)
        start = in_depot | (stood & idle_line)
        delay = jnp.where(turning, turn_cost * cruise, 0.0) + jnp.where(start, params.startup_loss_s, 0.0)
        return delay, jnp.where(turning, jnp.minimum(arrive_speed, params.turn_speed_mps), arrive_speed)

    def _settle_rewards(self, state: EnvState, params: EnvParams, t_new, arrived_now, node, awaits_now, departs) -> dict:
        """The Eq. 32 bookkeeping of every agent at the end of a tick (second t_new).

        A decision completes when its agent arrives or reaches the stop line of its next
        junction; its reward, -(t_k - t_{k-1}) + omega_d (d_{k-1} - d_k) plus 0.1 T_max on
        arrival, is added to `agent_reward` (collected by `step_env`). d_k is the Euclidean
        distance from the junction reached to the destination (0 on arrival). A first
        departure completes nothing; it, and every completed decision, restarts the clock
        (t_{k-1}, d_{k-1}) for the agent's next decision.
        """
        t_f = t_new.astype(jnp.float32)
        d_now = jnp.where(arrived_now, 0.0, self._dist_to_dest(params, node, params.agent_dest))
        completes = (arrived_now | (awaits_now & ~departs)) & (state.agent_decisions > 0)
        reward = eq32_reward(t_f, state.agent_last_t, state.agent_last_d, d_now, params.omega_d)
        reward = reward + jnp.where(arrived_now, params.terminal_bonus, 0.0)
        restart = completes | departs
        return dict(
            agent_last_t=jnp.where(restart, t_f, state.agent_last_t),
            agent_last_d=jnp.where(restart, d_now, state.agent_last_d),
            agent_reward=state.agent_reward + jnp.where(completes, reward, 0.0),
        )

    def _truncation_reward(self, state: EnvState, params: EnvParams, episode_done) -> jax.Array:
        """Eq. 32 reward [A] of the unfinished decision of every agent still driving when the episode ends.

        The clock stops at the episode's end; distance is credited up to the junction the
        vehicle is approaching (no bonus). Agents that arrived, or never decided, get 0.
        """
        n_ag = self.n_agents
        cut = episode_done & ~state.agent_arrived & (state.agent_decisions > 0)
        d_now = self._dist_to_dest(params, state.veh_node[:n_ag], state.veh_dest[:n_ag])
        reward = eq32_reward(state.t.astype(jnp.float32), state.agent_last_t, state.agent_last_d, d_now, params.omega_d)
        return jnp.where(cut, reward, 0.0)

    # -------------------------------------------------------------- observation
    def get_obs(self, state: EnvState, params: EnvParams) -> Observation:
        """Paper Table I observation plus action mask and awaiting flag."""
        est_time = edge_travel_time(state, params)
        score = params.edge_free_time / jnp.maximum(est_time, params.edge_free_time)

        node = state.veh_node[: self.n_agents]
        dest = state.veh_dest[: self.n_agents]
        out = params.out_edges[node]  # [A, M]
        exists = out >= 0
        safe = jnp.maximum(out, 0)
        edge_score = jnp.where(exists, score[safe], -1.0)
        edge_end = jnp.where(exists, params.edge_to[safe], -1).astype(jnp.float32)
        per_edge = jnp.stack([edge_score, edge_end], axis=-1).reshape(self.n_agents, 2 * self.m_out)
        features = jnp.concatenate(
            [node[:, None].astype(jnp.float32), dest[:, None].astype(jnp.float32), per_edge], axis=1
        )
        return Observation(features=features, action_mask=exists, awaiting=state.agent_awaiting & ~state.agent_arrived)

    @staticmethod
    def _dist_to_dest(params: EnvParams, node, dest):
        return jnp.linalg.norm(params.node_xy[node] - params.node_xy[dest], axis=-1)


def eq32_reward(t_now, t_prev, d_prev, d_now, omega_d: float):
    """Paper Eq. 32 without the arrival bonus: R_k = -(t_k - t_{k-1}) + omega_d * (d_{k-1} - d_k)."""
    return -(t_now - t_prev) + omega_d * (d_prev - d_now)


def edge_travel_time(state: EnvState, params: EnvParams) -> jax.Array:
    """Estimated current travel time [E] of every edge, in seconds.

    Driving time at the density-dependent speed plus the time to discharge the
    queue already at the stop line. It is what an agent's edge score (Table I)
    and the expert's `move_to_by_shortest_time` (Table II) see.
    """
    on_edge = state.veh_edge >= 0
    edge = jnp.maximum(state.veh_edge, 0)
    n_edges = params.edge_length.shape[0]
    at_line = on_edge & (state.veh_pos >= params.edge_length[edge])
    count = jnp.zeros((n_edges,), jnp.float32).at[edge].add(on_edge.astype(jnp.float32))
    queue = jnp.zeros((n_edges,), jnp.float32).at[edge].add(at_line.astype(jnp.float32))
    return params.edge_length / edge_speed(count, params) + queue / params.edge_discharge


def edge_speed(count: jax.Array, params: EnvParams) -> jax.Array:
    """Speed [E] of every edge given its vehicle count [E] (fundamental diagram, see module doc)."""
    occupancy = count / params.edge_storage
    congested = (1.0 - occupancy) / (1.0 - params.critical_occupancy)
    return params.edge_speed * jnp.clip(congested, params.min_speed_frac, 1.0)


def _route_next(params: EnvParams, node, dest):
    """Next edge on the free-flow shortest-time route (-1 at the destination)."""
    slot = params.next_slot_time[node, dest]
    edge = jnp.take_along_axis(params.out_edges[node], jnp.maximum(slot, 0)[..., None], axis=-1)[..., 0]
    return jnp.where(slot >= 0, edge, -1)


def make_params(
    network: RoadNetwork,
    agent_origin,
    agent_dest,
    od_origin,
    od_dest,
    *,
    agent_depart=None,
    od_weight=None,
    edge_weight=None,
    n_background: int = 0,
    t_max: int = 2400,
    omega_d: float = 1.0,
    traffic: TrafficModel = TrafficModel(),
    max_ticks_per_step: int = 60,
) -> EnvParams:
    """Assemble device-side EnvParams from a RoadNetwork and demand.

    `traffic` holds the simulator's free parameters (TrafficModel). `edge_weight` scales initial background placement
    per edge (default 1: in proportion to length). Raises NetworkError for
    unreachable origin-destination pairs, and for more background vehicles
    (`n_background`) than the network can place.
    """

    network.check_reachable(agent_origin, agent_dest)
    network.check_reachable(od_origin, od_dest)
    n_agents = len(agent_origin)
    od_weight = np.ones(len(od_origin)) if od_weight is None else np.asarray(od_weight, float)
    # Weighted OD sampling as one table lookup: pair k fills a share of the table
    # proportional to its weight (largest-remainder rounding keeps every pair present).
    quota = od_weight / od_weight.sum() * OD_TABLE_SIZE
    counts = np.maximum(np.floor(quota).astype(int), 1)
    while counts.sum() < OD_TABLE_SIZE:
        counts[np.argmax(quota - counts)] += 1
    while counts.sum() > OD_TABLE_SIZE:
        counts[np.argmax(counts - quota)] -= 1
    od_table = np.repeat(np.arange(len(od_origin)), counts)
    storage = network.edge_storage.astype(np.int64)
    edge_weight = np.ones(network.n_edges) if edge_weight is None else np.asarray(edge_weight, float)
    slot_edge = np.repeat(np.arange(network.n_edges), storage)
    within = np.concatenate([np.arange(s) for s in storage])
    slot_pos = (within + 0.5) / storage[slot_edge] * network.edge_length[slot_edge]
    slot_w = network.edge_length[slot_edge] * edge_weight[slot_edge] / storage[slot_edge]
    if n_background > 0 and slot_w.sum() / n_background <= slot_w.max():
        raise NetworkError(
            f"{n_background} background vehicles are too many to place on network {network.name!r} "
            f"(placement needs more than {slot_w.max():.1f} m of weighted road per vehicle, has "
            f"{slot_w.sum() / n_background:.1f}). Use fewer background vehicles or a larger network."
        )
    signal = np.stack(
        [network.signal_cycle, network.signal_green_start, network.signal_green_dur, network.signal_offset], axis=1
    )
    return EnvParams(
        node_xy=jnp.asarray(network.node_xy),
        edge_from=jnp.asarray(network.edge_from),
        edge_to=jnp.asarray(network.edge_to),
        edge_length=jnp.asarray(network.edge_length),
        edge_speed=jnp.asarray(network.edge_speed * traffic.speed_factor, jnp.float32),
        edge_storage=jnp.asarray(network.edge_storage, jnp.float32),
        edge_discharge=jnp.asarray(np.minimum(traffic.saturation_flow * network.edge_lanes, 1.0), jnp.float32),
        edge_multilane=jnp.asarray(network.edge_lanes > 1),
        edge_free_time=jnp.asarray(network.edge_free_time / traffic.speed_factor, jnp.float32),
        edge_signal=jnp.asarray(signal, jnp.int32),
        out_edges=jnp.asarray(network.out_edges),
        next_slot_time=jnp.asarray(network.next_slot_time),
        next_slot_dist=jnp.asarray(network.next_slot_dist),
        agent_origin=jnp.asarray(agent_origin, jnp.int32),
        agent_dest=jnp.asarray(agent_dest, jnp.int32),
        agent_depart=jnp.zeros((n_agents,), jnp.int32) if agent_depart is None else jnp.asarray(agent_depart, jnp.int32),
        od_origin=jnp.asarray(od_origin, jnp.int32),
        od_dest=jnp.asarray(od_dest, jnp.int32),
        od_table=jnp.asarray(od_table, jnp.int32),
        slot_edge=jnp.asarray(slot_edge, jnp.int32),
        slot_pos=jnp.asarray(slot_pos, jnp.float32),
        slot_cum_weight=jnp.asarray(np.cumsum(slot_w), jnp.float32),
        slot_max_weight=jnp.asarray(slot_w.max(), jnp.float32),
        t_max=int(t_max),
        omega_d=float(omega_d),
        terminal_bonus=0.1 * float(t_max),
        min_speed_frac=float(traffic.min_speed_frac),
        critical_occupancy=float(traffic.critical_occupancy),
        teleport_s=int(traffic.teleport_s),
        edge_dir=jnp.asarray(_unit_directions(network), jnp.float32),
        turn_delay_s=float(traffic.turn_delay_s),
        startup_loss_s=float(traffic.startup_loss_s),
        wide_turn_frac=float(traffic.wide_turn_frac),
        turn_regain_m=float(traffic.turn_regain_m),
        accel_mps2=float(traffic.accel_mps2),
        turn_speed_mps=float(traffic.turn_speed_mps),
        queue_exit_speed_mps=float(traffic.queue_exit_speed_mps),
        lefthand=bool(network.lefthand),
        max_ticks_per_step=int(max_ticks_per_step),
    )


def _unit_directions(network: RoadNetwork) -> np.ndarray:
    direction = network.node_xy[network.edge_to] - network.node_xy[network.edge_from]
    return direction / np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), 1e-6)


def make_env(network: RoadNetwork, n_agents: int, n_background: int) -> RouteChoiceEnv:
    """The static-size environment for a network; checks that the demand fits."""
    capacity = int(network.edge_storage.sum())
    if n_background + n_agents > capacity // 2:
        raise NetworkError(
            f"{n_agents} agents + {n_background} background vehicles do not fit network {network.name!r} "
            f"(storage {capacity} vehicles; at most half may be placed). Use fewer vehicles or a larger network."
        )
    if n_agents < 1:
        raise NetworkError(f"need at least one agent, got n_agents={n_agents}.")
    return RouteChoiceEnv(
        n_agents=n_agents, n_background=n_background, n_nodes=network.n_nodes, n_edges=network.n_edges, m_out=network.m_out
    )
