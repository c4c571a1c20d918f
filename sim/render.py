"""One episode as an animation: roads coloured by occupancy, signals, agents as coloured dots with the routes
they have driven, destinations, and the clock.

    python -m sim.render --scenario hongkong --regime moderate --out episode.gif          # shortest-time agents
    python -m sim.render --osm my_city.osm.bz2 --policy random --out random.gif
    python -m sim.render --checkpoint runs/hongkong-moderate-reled-s0/checkpoint.npz --out reled.gif   # a trained policy (greedy)
    python -m sim.render ... --out episode.mp4                                             # MP4 (needs ffmpeg on PATH)

`record_episode` runs the episode tick by tick (one jitted `lax.scan`): every tick, agents awaiting a
decision take the policy's action first, exactly as `RouteChoiceEnv.step_env` consumes them, so the
recorded episode is the one `step` would run. `animate` draws every `every`-th second of it.

The library part imports nothing above `sim`; the command line alone reaches up to `reled_jax` to read a
training checkpoint's policy (`--checkpoint`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import tyro

from sim.env import EnvParams, RouteChoiceEnv
from sim.network import RoadNetwork
from sim.policies import REFERENCE_POLICIES
from sim.scenarios import ScenarioChoice, load_scenario

AGENT_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324", "#800000", "#000075")


@dataclasses.dataclass(frozen=True)
class Episode:
    """Per simulated second t = 0..T-1 (NumPy, on the host)."""

    t: np.ndarray  # [T] simulator second after the tick
    occupancy: np.ndarray  # [T, E] vehicles on each edge over its storage (0 empty, 1 jammed)
    agent_edge: np.ndarray  # [T, A] edge the agent is on, -1 before departure or after arrival
    agent_pos: np.ndarray  # [T, A] metres along it
    agent_arrived: np.ndarray  # [T, A] bool
    agent_travel_time: np.ndarray  # [T, A] seconds, set on arrival
    live: np.ndarray  # [T] bool: the episode had not ended before this tick

    @property
    def seconds(self) -> int:
        return int(self.live.sum())


def record_episode(env: RouteChoiceEnv, params: EnvParams, policy: Callable, key: jax.Array, seconds: int | None = None) -> Episode:
    """Run one episode tick by tick under `policy(key, obs) -> actions [A]` and record it (`seconds`: at most
    this many ticks; default the scenario's T_max)."""
    seconds = int(params.t_max) if seconds is None else seconds
    k_reset, k_run = jax.random.split(key)

    @jax.jit
    def run(k_reset, k_run):
        _, state = env.reset(k_reset, params)

        def tick(state, k):
            done = jnp.all(state.agent_arrived) | (state.t >= params.t_max)
            actions = policy(k, env.get_obs(state, params))
            decided, _, _ = env._consume_actions(state, actions, params)
            state = jax.tree.map(lambda a, b: jnp.where(jnp.any(state.agent_awaiting), a, b), decided, state)
            stepped = env.tick(state, params)
            state = jax.tree.map(lambda a, b: jnp.where(done, a, b), state, stepped)
            count = jnp.zeros(env.n_edges).at[jnp.maximum(state.veh_edge, 0)].add((state.veh_edge >= 0).astype(jnp.float32))
            n_ag = env.n_agents
            return state, dict(t=state.t, occupancy=count / params.edge_storage, agent_edge=state.veh_edge[:n_ag], agent_pos=state.veh_pos[:n_ag],
                               agent_arrived=state.agent_arrived, agent_travel_time=state.agent_travel_time, live=~done)

        return jax.lax.scan(tick, state, jax.random.split(k_run, seconds))[1]

    return Episode(**jax.device_get(run(k_reset, k_run)))


def road_segments(network: RoadNetwork) -> np.ndarray:
    """[E, 2, 2] each directed road as a line from its tail to its head, moved a little to its driving side, so the
    two directions of a two-way road show apart (left of the centre line where traffic drives on the left)."""
    xy = network.node_xy
    head, tail = xy[network.edge_from], xy[network.edge_to]
    direction = tail - head
    normal = np.stack([direction[:, 1], -direction[:, 0]], 1) / np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), 1e-6)
    side = (-1.0 if network.lefthand else 1.0) * 0.004 * float(np.ptp(xy, axis=0).max())
    return np.stack([head + side * normal, tail + side * normal], 1)


def signal_green(network: RoadNetwork, t: int) -> np.ndarray:
    """[E] bool: the approach's light is green at second t (unsignalised approaches always are)."""
    phase = (t + network.signal_offset) % network.signal_cycle
    return (phase >= network.signal_green_start) & (phase < network.signal_green_start + network.signal_green_dur)


def animate(network: RoadNetwork, params: EnvParams, episode: Episode, out: str | Path, title: str = "", every: int = 10, fps: int = 8) -> int:
    """Write the episode to `out` (.gif with Pillow, .mp4 with ffmpeg), one frame per `every` simulated seconds
    and one for the last second. Returns the number of frames."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import animation, colormaps
    from matplotlib.collections import LineCollection

    out = Path(out)
    if out.suffix not in (".gif", ".mp4"):
        raise SystemExit(f"--out {out}: write a .gif or an .mp4")
    if out.suffix == ".mp4" and not animation.FFMpegWriter.isAvailable():
        raise SystemExit(f"--out {out}: MP4 needs ffmpeg on PATH (apt-get install ffmpeg); or write a .gif")
    last = max(episode.seconds - 1, 0)
    frames = sorted({*range(0, last + 1, every), last})
    xy = network.node_xy
    segments = road_segments(network)
    origin, dest = np.asarray(params.agent_origin), np.asarray(params.agent_dest)
    n_agents = origin.shape[0]
    colours = [AGENT_COLOURS[i % len(AGENT_COLOURS)] for i in range(n_agents)]
    signalised = np.nonzero(network.signal_cycle > 1)[0]
    stop_xy = segments[signalised, 1] - 0.12 * (segments[signalised, 1] - segments[signalised, 0])

    def agent_xy(k: int) -> np.ndarray:
        edge, pos = episode.agent_edge[k], episode.agent_pos[k]
        at = np.where(edge >= 0, np.clip(pos / np.maximum(network.edge_length[np.maximum(edge, 0)], 1e-6), 0, 1), 0.0)
        on = segments[np.maximum(edge, 0)]
        placed = on[:, 0] + at[:, None] * (on[:, 1] - on[:, 0])
        return np.where((edge >= 0)[:, None], placed, np.where(episode.agent_arrived[k][:, None], xy[dest], xy[origin]))

    positions = np.stack([agent_xy(k) for k in range(last + 1)])  # [T, A, 2]
    fig, ax = plt.subplots(figsize=(7.5, 7.5))
    # Roads in greys (light: empty, black: jammed) so the agents' colours stand out on them.
    greys = colormaps["Greys"]
    cmap = matplotlib.colors.LinearSegmentedColormap.from_list("occupancy", greys(np.linspace(0.2, 1.0, 256)))
    roads = LineCollection(segments, linewidths=1.5, colors=cmap(np.zeros(network.n_edges)), zorder=1)
    ax.add_collection(roads)
    lights = ax.scatter(stop_xy[:, 0], stop_xy[:, 1], s=9, marker="s", zorder=2, linewidths=0)
    trails = [ax.plot([], [], color=c, lw=2.8, alpha=0.55, zorder=3, solid_capstyle="round")[0] for c in colours]
    dots = ax.scatter(positions[0, :, 0], positions[0, :, 1], s=70, c=colours, edgecolors="black", linewidths=0.8, zorder=5)
    ax.scatter(xy[dest, 0], xy[dest, 1], s=150, marker="*", c=colours, edgecolors="black", linewidths=0.6, zorder=4)
    clock = ax.text(0.01, 0.99, "", transform=ax.transAxes, va="top", fontsize=11, family="monospace",
                    bbox=dict(boxstyle="round", facecolor="white", alpha=0.85))
    ax.set_aspect("equal")
    pad = 0.03 * float(np.ptp(xy, axis=0).max())
    ax.set_xlim(xy[:, 0].min() - pad, xy[:, 0].max() + pad)
    ax.set_ylim(xy[:, 1].min() - pad, xy[:, 1].max() + pad)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or network.name, fontsize=11)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, 1))
    fig.colorbar(sm, ax=ax, fraction=0.035, pad=0.01, label="road occupancy (vehicles / storage)")
    ax.text(0.99, 0.01, "dots: agents, stars: their destinations, lines: routes driven; squares: signals\n© OpenStreetMap contributors (ODbL)",
            transform=ax.transAxes, ha="right", va="bottom", fontsize=7, color="#444")
    fig.tight_layout()

    def draw(k: int):
        occupancy = np.clip(episode.occupancy[k], 0, 1)
        roads.set_color(cmap(occupancy))
        roads.set_linewidth(1.5 + 3.0 * occupancy)
        t = int(episode.t[k])
        lights.set_color(np.where(signal_green(network, t)[signalised, None], [[0.1, 0.7, 0.2, 1.0]], [[0.85, 0.1, 0.1, 1.0]]))
        for i, trail in enumerate(trails):
            trail.set_data(positions[: k + 1, i, 0], positions[: k + 1, i, 1])
        dots.set_offsets(positions[k])
        arrived = int(episode.agent_arrived[k].sum())
        clock.set_text(f"t = {t:5d} s   arrived {arrived}/{n_agents}")
        return [roads, lights, dots, clock, *trails]

    anim = animation.FuncAnimation(fig, draw, frames=frames, blit=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    writer = animation.PillowWriter(fps=fps) if out.suffix == ".gif" else animation.FFMpegWriter(fps=fps)
    anim.save(tmp, writer=writer, dpi=80)
    tmp.replace(out)  # whole or not at all
    plt.close(fig)
    return len(frames)


@dataclasses.dataclass(frozen=True)
class RenderArgs(ScenarioChoice):
    """Without --checkpoint: --scenario (or --osm), --regime and --n-agents choose the episode; --policy drives the agents."""

    checkpoint: str = ""  # a training checkpoint: its scenario, regime and agents, its first seed's policy, greedy
    policy: str = "shortest"  # without a checkpoint: shortest | random
    out: str = ""  # .gif or .mp4; default next to the checkpoint, else runs/render_<scenario>-<regime>.gif
    key: int = 0  # the episode's PRNG key
    every: int = 10  # simulated seconds per frame
    fps: int = 8
    seconds: int = 0  # at most this many simulated seconds (0: the scenario's T_max)


def main(args: RenderArgs) -> Path:
    if args.every < 1 or args.fps < 1 or args.seconds < 0:
        raise SystemExit(f"--every and --fps must be at least 1 and --seconds not negative (got {args.every}, {args.fps}, {args.seconds})")
    if args.checkpoint:
        from reled_jax.checkpoint import read_checkpoint  # the CLI only: the library part stays below reled_jax
        from reled_jax.evaluate import checkpoint_policies

        ck = read_checkpoint(args.checkpoint)
        run = ck["run"]
        network, env, params = load_scenario(run["scenario"], run["regime"], n_agents=run["n_agents"], seed=run["scenario_seed"])
        name, policy = next(iter(checkpoint_policies(ck, env).items()))
        out = Path(args.out or Path(args.checkpoint).parent / "episode.gif")
        title = f"{name} on {network.name}/{run['regime']}"
    else:
        if args.policy not in REFERENCE_POLICIES:
            raise SystemExit(f"unknown --policy {args.policy!r}; choose one of {sorted(REFERENCE_POLICIES)} (or give --checkpoint)")
        choice = args.check_scenario()
        network, env, params = load_scenario(choice.scenario, choice.regime, n_agents=choice.n_agents)
        reference = REFERENCE_POLICIES[args.policy]
        policy = lambda key, obs: reference(key, obs, params)  # noqa: E731
        out = Path(args.out or f"runs/render_{network.name}-{choice.regime}.gif")
        label = "shortest-time" if args.policy == "shortest" else args.policy
        title = f"{label} agents on {network.name}/{choice.regime}"
    episode = record_episode(env, params, policy, jax.random.PRNGKey(args.key), args.seconds or None)
    frames = animate(network, params, episode, out, title=title, every=args.every, fps=args.fps)
    arrived = int(episode.agent_arrived[episode.seconds - 1].sum()) if episode.seconds else 0
    print(f"wrote {out}: {frames} frames, {episode.seconds} s simulated, {arrived}/{env.n_agents} agents arrived")
    return out


if __name__ == "__main__":
    from sim.cli import usage_errors

    with usage_errors():
        main(tyro.cli(RenderArgs, description=__doc__))
