"""Run our scenarios in SUMO through libsumo, with the agents steered by any NumPy policy.

The SUMO half of the validation backend (issue 5); `reled_jax.validate_sumo`
and `benchmarks/fidelity.py` put it side by side with the JAX simulator. One
episode, for an episode key:

1. SUMO loads the exported network and our signal programs (`sim.export_sumo`),
   no route file: every vehicle is inserted from here.
2. Background: the JAX `reset` for the same key places `n_background` vehicles
   (edge, position, destination). Each is inserted there with its free-flow
   shortest-time route, so both simulators start from the same state. When one
   arrives, a new one departs from the origin of an OD pair drawn from the same
   weighted table, so, as in the JAX simulator, exactly `n_background` are in
   the system (closed loop; the exported `.rou.xml` has open Poisson flows for
   plain SUMO runs instead).
3. Agents: at its departure second an agent chooses its first edge at its
   origin. From then on, whenever it comes within `lookahead_m` of the end of
   its route (the junction it approaches) and that junction is not its
   destination, it chooses the next edge there and its route is extended by it;
   SUMO needs the next edge that early to pick a lane. The choice is repeated
   while the route ahead is still shorter than `lookahead_m` (very short edges).
4. Observation (Table I): junction, destination, and per outgoing edge its end
   and its score free-flow time / estimated time, where the estimate is the JAX
   simulator's (`sim.env.edge_travel_time`: density-dependent driving time plus
   queue discharge) fed with SUMO's vehicle and halting counts on that edge.
5. Reward (Eq. 32) per decision: -(t_k - t_{k-1}) + w_d (d_{k-1} - d_k) with d
   the straight-line distance from the approached junction to the destination,
   plus 0.1 T_max on arrival; at T_max the open decision is closed as in JAX.

SUMO's own car model is kept (Krauss, SUMO's default vehicle type), so
differences between the two simulators are what the fidelity benchmark measures.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from sim.env import EnvParams, RouteChoiceEnv, edge_speed
from sim.export_sumo import SUMO_EXTRA, SumoNotInstalled, edge_id, export_network, sumo_binary
from sim.network import RoadNetwork

# policy(features [A, 2M+2], action_mask [A, M], rng) -> actions [A]; only the rows of deciding agents are used.
NumpyPolicyFn = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]


def shortest_time_numpy(params: EnvParams) -> NumpyPolicyFn:
    """sim.policies.shortest_time_policy in NumPy."""
    next_slot = np.asarray(params.next_slot_time)

    def act(features, mask, rng):
        del mask, rng
        return np.maximum(next_slot[features[:, 0].astype(int), features[:, 1].astype(int)], 0)

    return act


def random_numpy(features, mask, rng):
    """sim.policies.random_policy in NumPy: uniform over existing outgoing edges."""
    del features
    u = rng.random(mask.shape)
    return np.argmax(np.where(mask, u, -1.0), axis=1)


@dataclasses.dataclass
class SumoEpisode:
    """One SUMO episode's per-agent outcomes, and what happened on the way."""

    travel_time: np.ndarray  # [A] seconds; T_max - depart if not arrived
    arrived: np.ndarray  # [A] bool
    reward: np.ndarray  # [A] Eq. 32 summed over the episode
    decisions: np.ndarray  # [A] int
    sim_seconds: int
    teleports: int  # SUMO removed a vehicle stuck for time-to-teleport and reinserted it downstream
    route_ran_out: int  # an agent reached the end of its route before it could choose (counted as not arrived)
    vehicle_steps: int  # sum over seconds of vehicles in the network
    wall_s: float
    log: list[tuple[int, int, np.ndarray, np.ndarray, int]] = dataclasses.field(default_factory=list)  # (t, agent, obs, mask, action)


class SumoRouteChoice:
    """Our scenario in SUMO (see module doc). One instance runs episodes one after another."""

    def __init__(
        self,
        network: RoadNetwork,
        env: RouteChoiceEnv,
        params: EnvParams,
        sumo_dir: Path,
        *,
        lookahead_m: float = 75.0,
    ):
        try:
            import libsumo
        except ImportError:
            raise SumoNotInstalled(f"libsumo is not installed: {SUMO_EXTRA}") from None
        self.sumo = libsumo
        self.network, self.env, self.params = network, env, params
        self.lookahead_m = lookahead_m
        paths = export_network(network, env, params, Path(sumo_dir), network.name)
        self.net_file, self.signal_file = paths["net"], paths["signals"]
        p = jax.device_get(params)
        self.edge_to, self.out_edges = np.asarray(p.edge_to), np.asarray(p.out_edges)
        self.length, self.free_time = np.asarray(p.edge_length), np.asarray(p.edge_free_time)
        self.discharge = np.asarray(p.edge_discharge)
        self.node_xy, self.next_slot = np.asarray(p.node_xy), np.asarray(p.next_slot_time)
        self.origin, self.dest, self.depart = np.asarray(p.agent_origin), np.asarray(p.agent_dest), np.asarray(p.agent_depart)
        self.od_origin, self.od_dest, self.od_table = np.asarray(p.od_origin), np.asarray(p.od_dest), np.asarray(p.od_table)
        self._reset = jax.jit(env.reset)
        import sumolib

        net = sumolib.net.readNet(str(self.net_file))
        # End of each edge as SUMO measures it (its lane lengths are ours rounded to centimetres).
        self.sumo_end = np.array([net.getEdge(edge_id(k)).getLength() for k in range(network.n_edges)]) - 0.01

    # ------------------------------------------------------------ helpers
    def route_edges(self, node: int, dest: int) -> list[int]:
        """Free-flow shortest-time route from a junction, as edge indices (how background vehicles drive)."""
        edges = []
        while node != dest:
            edge = int(self.out_edges[node, self.next_slot[node, dest]])
            edges.append(edge)
            node = int(self.edge_to[edge])
        return edges

    def observe(self, node: int, dest: int) -> tuple[np.ndarray, np.ndarray]:
        """Table I features [2M+2] and action mask [M] at `node`, from SUMO's current counts."""
        out = self.out_edges[node]
        exists = out >= 0
        score = np.full(len(out), -1.0, np.float32)
        end = np.full(len(out), -1.0, np.float32)
        edges = out[exists]
        count = np.zeros(len(self.length), np.float32)
        count[edges] = [self.sumo.edge.getLastStepVehicleNumber(edge_id(int(k))) for k in edges]
        queue = np.array([self.sumo.edge.getLastStepHaltingNumber(edge_id(int(k))) for k in edges])
        speed = np.asarray(edge_speed(count, self.params))[edges]  # our fundamental diagram on SUMO's counts
        est = self.length[edges] / speed + queue / self.discharge[edges]
        score[exists] = self.free_time[edges] / np.maximum(est, self.free_time[edges])
        end[exists] = self.edge_to[edges]
        features = np.concatenate([[node, dest], np.stack([score, end], axis=1).reshape(-1)]).astype(np.float32)
        return features, exists

    def _distance(self, node: int, dest: int) -> float:
        return float(np.linalg.norm(self.node_xy[node] - self.node_xy[dest]))

    # ------------------------------------------------------------ episode
    def run_episode(self, policy: NumpyPolicyFn, key: jax.Array, *, sumo_seed: int = 0, record: bool = False) -> SumoEpisode:
        sumo, n_ag, m_out = self.sumo, self.env.n_agents, self.env.m_out
        _, state = jax.device_get(self._reset(key, self.params))
        rng = np.random.default_rng(np.asarray(jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key))
        t_max, omega, bonus = self.params.t_max, self.params.omega_d, self.params.terminal_bonus
        self.start(sumo_seed)
        wall0 = time.perf_counter()
        try:
            self.insert_background(state)

            route: list[list[int]] = [[] for _ in range(n_ag)]
            node = self.origin.copy()  # junction each agent decides at next
            last_t = self.depart.astype(float)
            last_d = np.array([self._distance(o, d) for o, d in zip(self.origin, self.dest)])
            reward, decisions = np.zeros(n_ag), np.zeros(n_ag, int)
            arrived, travel = np.zeros(n_ag, bool), np.zeros(n_ag)
            finished = np.zeros(n_ag, bool)  # arrived or route ran out
            in_network, added = np.zeros(n_ag, bool), np.zeros(n_ag, bool)
            features = np.zeros((n_ag, 2 * m_out + 2), np.float32)
            mask = np.zeros((n_ag, m_out), bool)
            mask[:, 0] = True
            log, teleports, ran_out, vehicle_steps = [], 0, 0, 0
            t = 0
            while t < t_max and not finished.all():
                # ---- decisions at second t
                deciding = []
                for i in range(n_ag):
                    if finished[i] or node[i] == self.dest[i] or t < self.depart[i]:
                        continue
                    if not route[i]:
                        deciding.append(i)  # at the origin
                    elif in_network[i] and self._ahead(i, route[i], True) < self.lookahead_m:
                        deciding.append(i)
                while deciding:
                    for i in deciding:
                        features[i], mask[i] = self.observe(int(node[i]), int(self.dest[i]))
                    actions = np.asarray(policy(features, mask, rng))
                    again = []
                    for i in deciding:
                        a = int(actions[i])
                        if not (0 <= a < m_out and mask[i, a]):
                            a = 0  # as the JAX env: an invalid action takes the first edge
                        if record:
                            log.append((t, i, features[i].copy(), mask[i].copy(), int(actions[i])))
                        edge = int(self.out_edges[node[i], a])
                        if decisions[i] > 0:  # Eq. 32 for the decision that ends here
                            d_now = self._distance(int(node[i]), int(self.dest[i]))
                            reward[i] += -(t - last_t[i]) + omega * (last_d[i] - d_now)
                            last_t[i], last_d[i] = t, d_now
                        else:
                            last_t[i] = t
                        decisions[i] += 1
                        route[i].append(edge)
                        node[i] = self.edge_to[edge]
                        if in_network[i]:
                            current = max(sumo.vehicle.getRouteIndex(f"agent{i}"), 0)
                            sumo.vehicle.setRoute(f"agent{i}", [edge_id(k) for k in route[i][current:]])
                        if node[i] != self.dest[i] and self._ahead(i, route[i], in_network[i]) < self.lookahead_m:
                            again.append(i)
                    deciding = again
                for i in range(n_ag):  # agents that chose their first edges this second depart now
                    if route[i] and not in_network[i] and not finished[i] and not added[i]:
                        self.add_vehicle(f"agent{i}", route[i], depart_pos="base")
                        added[i] = True

                sumo.simulationStep()
                t += 1
                for vid in sumo.simulation.getDepartedIDList():
                    if vid.startswith("agent"):
                        in_network[int(vid[5:])] = True
                teleports += sumo.simulation.getStartingTeleportNumber()
                vehicle_steps += sumo.vehicle.getIDCount()
                for vid in sumo.simulation.getArrivedIDList():
                    if vid.startswith("bg"):
                        self.reinject(vid, rng)
                        continue
                    i = int(vid[5:])
                    finished[i], in_network[i] = True, False
                    if node[i] == self.dest[i]:
                        arrived[i], travel[i] = True, t - self.depart[i]
                        reward[i] += -(t - last_t[i]) + omega * last_d[i] + bonus
                    else:
                        ran_out += 1
            # Truncation at T_max (or the route ran out): close the open decision as the JAX env does.
            for i in np.nonzero(~arrived)[0]:
                travel[i] = t - self.depart[i]
                if decisions[i] > 0:
                    reward[i] += -(t - last_t[i]) + omega * (last_d[i] - self._distance(int(node[i]), int(self.dest[i])))
        finally:
            sumo.close()
        return SumoEpisode(
            travel_time=travel, arrived=arrived, reward=reward, decisions=decisions, sim_seconds=t, teleports=teleports,
            route_ran_out=ran_out, vehicle_steps=vehicle_steps, wall_s=time.perf_counter() - wall0, log=log,
        )

    def _ahead(self, i: int, route: list[int], in_network: bool) -> float:
        """Metres from agent i to the end of its route (the whole route before it has departed).

        Counted along our route list rather than with SUMO's getDrivingDistance, which
        finds the first occurrence of an edge and so misreads routes that loop.
        """
        if not in_network:
            return float(self.length[route].sum())
        vid = f"agent{i}"
        index = self.sumo.vehicle.getRouteIndex(vid)
        on_edge = self.sumo_end[route[index]] - self.sumo.vehicle.getLanePosition(vid)
        return float(on_edge + self.length[route[index + 1:]].sum())

    def start(self, sumo_seed: int = 0) -> None:
        """Start SUMO on the exported network with our signal programs; no route file."""
        self.sumo.start([
            sumo_binary("sumo"), "-n", str(self.net_file), "-a", str(self.signal_file), "--step-length", "1",
            "--begin", "0", "--seed", str(sumo_seed), "--no-step-log", "true", "--no-warnings", "true",
        ])

    def insert_background(self, state) -> None:
        """Background vehicles where the JAX reset put them, each on its free-flow route to its destination."""
        n_ag = self.env.n_agents
        for v in range(self.env.n_background):
            edge, pos, dest = int(state.veh_edge[n_ag + v]), float(state.veh_pos[n_ag + v]), int(state.veh_dest[n_ag + v])
            route = [edge] + self.route_edges(int(self.edge_to[edge]), dest)
            self.add_vehicle(f"bg{v}.0", route, depart_pos=f"{min(pos, self.sumo_end[edge]):.2f}")

    def reinject(self, arrived_id: str, rng: np.random.Generator) -> None:
        """An arrived background vehicle departs again from the origin of a new OD pair (weighted table)."""
        v, trip = (int(x) for x in arrived_id[2:].split("."))
        od = int(self.od_table[rng.integers(len(self.od_table))])
        self.add_vehicle(f"bg{v}.{trip + 1}", self.route_edges(int(self.od_origin[od]), int(self.od_dest[od])), depart_pos="base")

    def add_vehicle(self, vid: str, edges: list[int], depart_pos: str) -> None:
        self.sumo.route.add(f"r_{vid}", [edge_id(k) for k in edges])
        self.sumo.vehicle.add(vid, f"r_{vid}", depart="now", departPos=depart_pos, departLane="best", departSpeed="max")
