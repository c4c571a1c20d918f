"""Scenarios as data: which map, which crop, which traffic rules, and the demand regimes (paper IV-A1).

A scenario is a small TOML file (the built-ins are `data/scenarios/*.toml`):

    name = "shatin"
    description = "Hong Kong, Sha Tin"
    [network]
    osm = "../osm/hk_shatin_2017.osm.bz2"     # a local extract (.osm, .osm.bz2, .osm.xml), relative to this file
    # place = "Sha Tin, Hong Kong"            # or online (osmnx, needs internet once, then cached): a place name,
    # bbox = [114.18, 22.37, 114.20, 22.39]   # a bounding box (min_lon, min_lat, max_lon, max_lat),
    # point = [22.38, 114.19]                 # or a point (lat, lon) and radius_m
    crop = [114.1857, 22.3760, 114.2036, 22.3912]  # optional (min_lon, min_lat, max_lon, max_lat); default: the file's bounds
    lefthand = true                           # traffic drives on the left (SUMO's netconvert --lefthand)
    m_out = 0                                 # action slots per junction; 0: the widest junction's outgoing roads
    max_table_gib = 4.0                       # refuse networks whose all-pairs tables (N^2) would need more
    [signals]                                 # sim.network.SignalConfig
    min_legs = 3
    [od]
    n_pairs = 40                              # the predefined origin-destination set
    min_trip_frac = 0.35                      # OD pairs at least this share of the largest trip apart
    [regimes.moderate]
    n_background = 90
    arterial_boost = 1.0
    [regimes.congested]
    n_background = 190
    arterial_boost = 3.0
    [agents]
    n_agents = 10
    t_max = 2400                              # seconds per episode (T_max)

Everything but the network source has a default, so an OSM extract alone is a scenario too.
`load_scenario(scenario, regime, n_agents, seed)` is the one call the rest of the project makes;
`scenario` is a built-in name, a scenario file, an OSM extract or a `ScenarioSpec`. It returns
the RoadNetwork, the static-size RouteChoiceEnv and its EnvParams. Agent origin-destination
pairs are drawn once per scenario seed from the scenario's OD set, so they are identical for every
method. Built networks are cached on disk by content (`load_network`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Annotated

import numpy as np
import tyro

from sim.env import EnvParams, RouteChoiceEnv, TrafficModel, make_env, make_params
from sim.network import RoadNetwork, SignalConfig, network_from_graph, read_network, write_network
from sim.osm import NetworkError, graph_from_query, load_osm_graph, read_bounds

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "data" / "osm"
SCENARIO_DIR = ROOT / "data" / "scenarios"
OSM_SUFFIXES = (".osm", ".osm.bz2", ".osm.xml", ".osm.gz", ".xml", ".xml.bz2")


@dataclasses.dataclass(frozen=True)
class Regime:
    n_background: int  # background vehicles
    arterial_boost: float  # weight multiplier for arterial origins and placement on arterial roads


# The paper's two regimes (IV-A1): moderate, 90 background vehicles placed in proportion to edge length;
# congested, 190 with arterial edges and arterial origins weighted 3x.
DEFAULT_REGIMES = (("moderate", Regime(90, 1.0)), ("congested", Regime(190, 3.0)))


@dataclasses.dataclass(frozen=True)
class NetworkSource:
    """Where the road network comes from: a local OSM extract, or (online, cached) an osmnx query."""

    osm: str = ""  # path of a local extract
    place: str = ""  # online: a place name for osmnx ("Sha Tin, Hong Kong")
    bbox: tuple[float, float, float, float] | None = None  # online: (min_lon, min_lat, max_lon, max_lat)
    point: tuple[float, float] | None = None  # online: (lat, lon), with radius_m
    radius_m: float = 1000.0

    def check(self, where: str) -> None:
        given = [k for k in ("osm", "place", "bbox", "point") if getattr(self, k)]
        if len(given) != 1:
            raise NetworkError(f"{where}: [network] needs exactly one source of osm (a local extract), place, bbox or point; got {given or 'none'}")
        if self.bbox is not None and (len(self.bbox) != 4 or not (self.bbox[0] < self.bbox[2] and self.bbox[1] < self.bbox[3])):
            raise NetworkError(f"{where}: bbox must be [min_lon, min_lat, max_lon, max_lat] with min < max, got {list(self.bbox)}")
        if self.point is not None and (len(self.point) != 2 or not self.radius_m > 0):
            raise NetworkError(f"{where}: point must be [lat, lon] with radius_m > 0, got {list(self.point)} and {self.radius_m}")

    @property
    def online(self) -> bool:
        return not self.osm


@dataclasses.dataclass(frozen=True)
class ScenarioSpec:
    name: str
    source: NetworkSource
    description: str = ""
    crop: tuple[float, float, float, float] | None = None  # (min_lon, min_lat, max_lon, max_lat); None: the file's bounds
    lefthand: bool = False
    m_out: int = 0  # action slots per junction; 0: the widest junction's outgoing roads; more: padded
    max_table_gib: float = 4.0  # refuse a network whose all-pairs tables would need more memory than this
    signals: SignalConfig = SignalConfig()
    n_od_pairs: int = 40  # size of the predefined origin-destination set
    min_trip_frac: float = 0.35  # OD pairs are at least this share of the network's largest trip apart
    regimes: tuple[tuple[str, Regime], ...] = DEFAULT_REGIMES
    n_agents: int = 10  # default agent count (a command's --n-agents overrides it)
    t_max: int = 2400  # seconds per episode

    def regime(self, name: str) -> Regime:
        for key, regime in self.regimes:
            if key == name:
                return regime
        raise NetworkError(f"scenario {self.name!r} has no regime {name!r}; choose one of {[k for k, _ in self.regimes]}")

    def check(self, where: str = "") -> ScenarioSpec:
        """Every value in range, or a NetworkError naming the field and what it needs."""
        where = where or f"scenario {self.name!r}"
        self.source.check(where)
        if self.crop is not None and (len(self.crop) != 4 or not (self.crop[0] < self.crop[2] and self.crop[1] < self.crop[3])):
            raise NetworkError(f"{where}: crop must be [min_lon, min_lat, max_lon, max_lat] with min < max, got {list(self.crop)}")
        bad = [f"{k} = {v}" for k, v in (("m_out", self.m_out), ("max_table_gib", self.max_table_gib), ("n_pairs", self.n_od_pairs),
                                          ("n_agents", self.n_agents), ("t_max", self.t_max)) if v < (0 if k == "m_out" else 1e-9)]
        bad += [f"min_trip_frac = {self.min_trip_frac}"] if not 0 <= self.min_trip_frac < 1 else []
        bad += [f"regimes.{k}: n_background = {r.n_background}, arterial_boost = {r.arterial_boost}" for k, r in self.regimes
                if r.n_background < 0 or r.arterial_boost <= 0]
        if bad or not self.regimes:
            raise NetworkError(f"{where}: out of range: {', '.join(bad) or 'no regimes'} (counts at least 1, m_out >= 0, 0 <= min_trip_frac < 1, "
                               "n_background >= 0, arterial_boost > 0)")
        return self

    # ---- TOML ----------------------------------------------------------------------------------------------

    def to_dict(self, relative_to: Path | None = None) -> dict:
        """The scenario file's tables (paths relative to `relative_to`, the file's folder, where it has one)."""
        source = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self.source).items() if v and k != "radius_m"}
        if self.source.point is not None:
            source["radius_m"] = self.source.radius_m
        if self.source.osm and relative_to is not None:
            source["osm"] = os.path.relpath(Path(self.source.osm).resolve(), relative_to.resolve())
        network = {**source, "lefthand": self.lefthand, "m_out": self.m_out, "max_table_gib": self.max_table_gib}
        if self.crop is not None:
            network["crop"] = list(self.crop)
        return {"name": self.name, "description": self.description, "network": network, "signals": dataclasses.asdict(self.signals),
                "od": {"n_pairs": self.n_od_pairs, "min_trip_frac": self.min_trip_frac},
                "regimes": {k: dataclasses.asdict(r) for k, r in self.regimes}, "agents": {"n_agents": self.n_agents, "t_max": self.t_max}}

    @classmethod
    def from_dict(cls, data: dict, base: Path = Path("."), where: str = "scenario") -> ScenarioSpec:
        """A scenario from the tables of a scenario file; relative paths are relative to `base`. Unknown
        tables or keys, and values of the wrong type or range, are errors that name them."""
        data = dict(data)
        tables = {"network": {}, "signals": {}, "od": {}, "regimes": {}, "agents": {}}
        _unknown(where, "", data, {"name", "description", *tables})
        for name in tables:
            if not isinstance(data.get(name, {}), dict):
                raise NetworkError(f"{where}: [{name}] must be a table")
        network, od, agents = data.get("network", {}), data.get("od", {}), data.get("agents", {})
        source_keys = {f.name for f in dataclasses.fields(NetworkSource)}
        _unknown(where, "network.", network, source_keys | {"crop", "lefthand", "m_out", "max_table_gib"})
        _unknown(where, "signals.", data.get("signals", {}), {f.name for f in dataclasses.fields(SignalConfig)})
        _unknown(where, "od.", od, {"n_pairs", "min_trip_frac"})
        _unknown(where, "agents.", agents, {"n_agents", "t_max"})
        source = {k: (tuple(v) if isinstance(v, list) else v) for k, v in network.items() if k in source_keys}
        if source.get("osm"):
            source["osm"] = str((base / source["osm"]).resolve())
        regimes = data.get("regimes") or dict(DEFAULT_REGIMES)
        try:
            parsed = []
            for key, value in regimes.items():
                if isinstance(value, Regime):
                    parsed.append((key, value))
                    continue
                _unknown(where, f"regimes.{key}.", value, {"n_background", "arterial_boost"})
                parsed.append((key, Regime(int(value["n_background"]), float(value["arterial_boost"]))))
            spec = cls(
                name=str(data.get("name") or "scenario"), description=str(data.get("description", "")), source=NetworkSource(**source),
                crop=tuple(network["crop"]) if network.get("crop") is not None else None, lefthand=bool(network.get("lefthand", False)),
                m_out=int(network.get("m_out", 0)), max_table_gib=float(network.get("max_table_gib", cls.max_table_gib)),
                signals=SignalConfig(**data.get("signals", {})), n_od_pairs=int(od.get("n_pairs", cls.n_od_pairs)),
                min_trip_frac=float(od.get("min_trip_frac", cls.min_trip_frac)), regimes=tuple(parsed),
                n_agents=int(agents.get("n_agents", cls.n_agents)), t_max=int(agents.get("t_max", cls.t_max)),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise NetworkError(f"{where}: a value has the wrong type or is missing ({type(err).__name__}: {err})") from None
        return spec.check(where)

    @classmethod
    def from_toml(cls, path: str | Path) -> ScenarioSpec:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise NetworkError(f"scenario file not found: {path}. Give a .toml scenario file, a built-in name ({', '.join(builtin_scenarios())}) or an OSM extract.") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            raise NetworkError(f"scenario file {path} is not valid TOML ({err}); see data/scenarios/*.toml for the format") from None
        return cls.from_dict(data, base=path.parent, where=f"scenario file {path}")

    def to_toml(self, path: str | Path) -> Path:
        import tomli_w

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".toml.tmp")
        tmp.write_text(tomli_w.dumps(self.to_dict(relative_to=path.parent)))
        os.replace(tmp, path)
        return path

    @classmethod
    def for_osm(cls, path: str | Path) -> ScenarioSpec:
        """An OSM extract as a scenario: every other field at its default, named after the file."""
        path = Path(path)
        name = path.name
        for suffix in sorted(OSM_SUFFIXES, key=len, reverse=True):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        return cls(name=name, source=NetworkSource(osm=str(path.resolve())), description=f"OSM extract {path.name}").check()


def _unknown(where: str, prefix: str, table: dict, known: set[str]) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise NetworkError(f"{where}: unknown key(s) {[prefix + k for k in unknown]}; known: {sorted(known)}")


def builtin_scenarios() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def scenario_spec(scenario: str | Path | ScenarioSpec) -> ScenarioSpec:
    """A built-in name, a scenario file (.toml) or an OSM extract (.osm, .osm.bz2, .osm.xml) as a ScenarioSpec."""
    if isinstance(scenario, ScenarioSpec):
        return scenario
    text = str(scenario)
    if (SCENARIO_DIR / f"{text}.toml").is_file() and "/" not in text:
        return _builtin(text)
    if text.endswith(".toml"):
        return ScenarioSpec.from_toml(text)
    if text.endswith(OSM_SUFFIXES):
        if not Path(text).is_file():
            raise NetworkError(f"OSM file not found: {text}. Pass the path of an .osm, .osm.bz2 or .osm.xml extract.")
        return ScenarioSpec.for_osm(text)
    raise NetworkError(f"unknown scenario {text!r}: give a built-in name ({', '.join(builtin_scenarios())}), a scenario file (.toml) "
                       f"or an OSM extract ({', '.join(OSM_SUFFIXES[:3])})")


@functools.lru_cache(maxsize=16)
def _builtin(name: str) -> ScenarioSpec:
    return ScenarioSpec.from_toml(SCENARIO_DIR / f"{name}.toml")


@dataclasses.dataclass(frozen=True)
class ScenarioChoice:
    """Which scenario a command runs on, taken the same way by every CLI that builds one: a base class of
    their argument dataclasses (and TrainConfig's env group)."""

    scenario: Annotated[str, tyro.conf.arg(aliases=("--osm",), help=(
        "a built-in scenario (grid, hongkong, oakland), a scenario file (.toml: data/scenarios/ shows the format) or an OSM "
        "extract (.osm, .osm.bz2, .osm.xml; --osm FILE), whose other settings are the defaults"))] = "hongkong"
    regime: str = "moderate"  # a regime of the scenario's (built-ins: moderate, congested)
    n_agents: int | None = None  # default: the scenario's (10 for the built-ins)

    def spec(self) -> ScenarioSpec:
        """The scenario, or a one-line exit naming the problem."""
        try:
            return scenario_spec(self.scenario)
        except NetworkError as err:
            raise SystemExit(str(err)) from None

    def check_scenario(self) -> ScenarioChoice:
        """This choice with the agent count filled in from the scenario; a one-line exit naming a bad choice."""
        spec = self.spec()
        if self.regime not in dict(spec.regimes):
            raise SystemExit(f"unknown --regime {self.regime!r} for scenario {spec.name!r}; choose one of {[k for k, _ in spec.regimes]}")
        n_agents = spec.n_agents if self.n_agents is None else self.n_agents
        if n_agents < 1:
            raise SystemExit(f"--n-agents must be at least 1, got {n_agents}")
        return dataclasses.replace(self, n_agents=n_agents)

    @property
    def scenario_name(self) -> str:
        """The scenario's short name (a file's name, not its path): for run directories and titles."""
        return self.spec().name


# ---- the network, built once and cached on disk -------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def load_network(scenario: str | ScenarioSpec, signals: SignalConfig | None = None) -> RoadNetwork:
    """A scenario's road network (cached per process, and on disk).

    Parsing and simplifying an extract takes seconds (7.5 s for hongkong, most of a short run's start), so the
    built network is kept in $RELED_CACHE_DIR (default ~/.cache/reled-jax) as a data-only .npz, keyed by the
    extract's bytes (or the online query), the crop, the signal rules, m_out and the source of the code that
    builds it: a changed file, spec or builder never reads a stale network. RELED_CACHE_DIR="" turns it off. A
    cache file that cannot be read is said on stderr and rebuilt.
    """
    spec = scenario_spec(scenario)
    if signals is not None:
        spec = dataclasses.replace(spec, signals=signals)
    cache = _network_cache_path(spec)
    if cache is not None and cache.is_file():
        try:
            return read_network(cache)
        except (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile) as err:
            print(f"reled-jax: warning: cached network {cache} is unreadable ({type(err).__name__}); rebuilding it", file=sys.stderr)
    network = build_scenario_network(spec)
    if cache is not None:
        try:
            write_network(cache, network)  # whole or not at all, also with several processes writing
        except OSError:
            pass  # a read-only home costs only the time
    return network


def build_scenario_network(spec: ScenarioSpec) -> RoadNetwork:
    """OSM (file or query) -> drivable graph -> RoadNetwork, with the scenario's crop, rules and limits."""
    source = spec.source
    if source.online:
        graph = graph_from_query(place=source.place, bbox=source.bbox, point=source.point, radius_m=source.radius_m,
                                 cache_dir=Path(_cache_root() or "cache") / "osmnx", crop=spec.crop)
    else:
        path = Path(source.osm)
        if spec.crop is not None and path.is_file():
            bounds = read_bounds(path)
            if bounds is not None and (spec.crop[2] <= bounds[0] or spec.crop[0] >= bounds[2] or spec.crop[3] <= bounds[1] or spec.crop[1] >= bounds[3]):
                raise NetworkError(f"scenario {spec.name!r}: crop {list(spec.crop)} lies outside the extract {path.name}, whose bounds are "
                                   f"{list(bounds)}; move the crop inside them")
        graph = load_osm_graph(path, bbox=spec.crop)
    return network_from_graph(spec.name, graph, signals=spec.signals, lefthand=spec.lefthand, m_out=spec.m_out, max_table_gib=spec.max_table_gib)


def _cache_root() -> str:
    return os.environ.get("RELED_CACHE_DIR", str(Path.home() / ".cache" / "reled-jax"))


def _network_cache_path(spec: ScenarioSpec) -> Path | None:
    root = _cache_root()
    if not root:
        return None
    import sim.network
    import sim.osm

    key = hashlib.sha256()
    if spec.source.online:
        key.update(repr(dataclasses.replace(spec.source)).encode())
        stem = "query"
    else:
        path = Path(spec.source.osm)
        if not path.is_file():
            return None
        key.update(path.read_bytes())
        stem = path.name
    for part in (repr(spec.crop), repr(spec.signals), repr((spec.lefthand, spec.m_out, spec.max_table_gib, spec.name)),
                 Path(sim.osm.__file__).read_text(), Path(sim.network.__file__).read_text()):
        key.update(part.encode())
    return Path(root) / "networks" / f"{stem}-{key.hexdigest()[:20]}.npz"


def od_pairs(network: RoadNetwork, n_pairs: int, min_trip_frac: float, seed: int) -> np.ndarray:
    """The scenario's predefined OD set: [K, 2] distinct junction pairs, reachable and not too close."""
    rng = np.random.default_rng(seed)
    dist = network.shortest_dist
    finite = np.isfinite(dist)
    threshold = min_trip_frac * dist[finite].max()
    origins, dests = np.nonzero(finite & (dist >= threshold) & (dist > 0))
    if len(origins) < n_pairs:
        raise NetworkError(
            f"network {network.name!r}: its largest strongly connected component has {network.n_nodes} junctions and only {len(origins)} "
            f"junction pairs at least {threshold:.0f} m apart, too few for an OD set of {n_pairs}; lower [od] n_pairs or min_trip_frac, "
            "or use a larger extract or crop")
    pick = rng.choice(len(origins), size=n_pairs, replace=False)
    return np.stack([origins[pick], dests[pick]], axis=1)


def load_scenario(
    scenario: str | ScenarioSpec = "hongkong",
    regime: str = "moderate",
    n_agents: int | None = None,
    seed: int = 0,
    *,
    n_background: int | None = None,
    t_max: int | None = None,
    signals: SignalConfig | None = None,
    traffic: TrafficModel = TrafficModel(),
) -> tuple[RoadNetwork, RouteChoiceEnv, EnvParams]:
    """Network, environment and params for a scenario (built-in name, scenario file, OSM extract or spec) and
    one of its regimes. `n_agents`, `n_background`, `t_max` and `signals` default to the scenario's."""
    spec = scenario_spec(scenario)
    reg = spec.regime(regime)
    n_agents = spec.n_agents if n_agents is None else n_agents
    network = load_network(spec, signals)
    pairs = od_pairs(network, spec.n_od_pairs, spec.min_trip_frac, seed)
    rng = np.random.default_rng(seed + 1_000_003)
    agent_pairs = pairs[rng.choice(len(pairs), size=n_agents, replace=n_agents > len(pairs))]
    arterial_origin = np.zeros(network.n_nodes, bool)
    arterial_origin[network.edge_from[network.edge_arterial]] = True
    od_weight = np.where(arterial_origin[pairs[:, 0]], reg.arterial_boost, 1.0)
    edge_weight = np.where(network.edge_arterial, reg.arterial_boost, 1.0)
    n_bg = reg.n_background if n_background is None else n_background
    env = make_env(network, n_agents, n_bg)
    params = make_params(
        network,
        agent_pairs[:, 0],
        agent_pairs[:, 1],
        pairs[:, 0],
        pairs[:, 1],
        od_weight=od_weight,
        edge_weight=edge_weight,
        n_background=n_bg,
        t_max=spec.t_max if t_max is None else t_max,
        traffic=traffic,
    )
    return network, env, params
