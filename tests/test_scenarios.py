"""Scenarios from data (issue 20): scenario files, extracts the project has never seen, the on-disk network cache,
and a clear error for every bad map. The extracts are OSM XML this file writes itself (a few ways)."""

import dataclasses
import json
import socket

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sim import scenarios
from sim.network import SignalConfig
from sim.osm import NetworkError
from sim.scenarios import NetworkSource, Regime, ScenarioSpec, load_network, load_scenario, scenario_spec

LAT0, LON0 = 37.8000, -122.2700  # somewhere; the grid spacing below is ~110 m
STEP = 0.001


def write_osm(path, rows=4, cols=4, highway="residential", star_legs=0, bounds=True):
    """An OSM XML extract of a rows x cols street grid (two-way ways along every row and column). With
    `star_legs`, one more junction east of the grid with that many extra two-way spokes (a wide junction)."""
    nodes, ways = [], []
    nid = lambda r, c: 1 + r * cols + c  # noqa: E731
    for r in range(rows):
        for c in range(cols):
            nodes.append((nid(r, c), LAT0 + r * STEP, LON0 + c * STEP))
    wid = 1000
    for r in range(rows):
        ways.append((wid := wid + 1, [nid(r, c) for c in range(cols)], highway))
    for c in range(cols):
        ways.append((wid := wid + 1, [nid(r, c) for r in range(rows)], highway))
    if star_legs:
        hub = (500, LAT0, LON0 + (cols + 1) * STEP)
        nodes.append(hub)
        ways.append((wid := wid + 1, [nid(0, cols - 1), 500], highway))
        for k in range(star_legs - 1):
            angle = np.pi / 2 + np.pi * (k + 1) / star_legs
            leaf = (600 + k, hub[1] + STEP * np.sin(angle) * -1, hub[2] + STEP * abs(np.cos(angle)))
            nodes.append(leaf)
            ways.append((wid := wid + 1, [500, leaf[0]], highway))
    lats, lons = [n[1] for n in nodes], [n[2] for n in nodes]
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', '<osm version="0.6" generator="reled-jax tests">']
    if bounds:
        lines.append(f'  <bounds minlat="{min(lats) - 1e-4}" minlon="{min(lons) - 1e-4}" maxlat="{max(lats) + 1e-4}" maxlon="{max(lons) + 1e-4}"/>')
    for i, lat, lon in nodes:
        lines.append(f'  <node id="{i}" version="1" lat="{lat:.7f}" lon="{lon:.7f}"/>')
    for i, refs, hw in ways:
        lines.append(f'  <way id="{i}" version="1">' + "".join(f'<nd ref="{r}"/>' for r in refs) + f'<tag k="highway" v="{hw}"/></way>')
    lines.append("</osm>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RELED_CACHE_DIR", str(tmp_path / "cache"))
    load_network.cache_clear()
    yield tmp_path / "cache"
    load_network.cache_clear()


def test_a_scenario_file_round_trips_and_the_builtins_are_such_files(tmp_path):
    extract = write_osm(tmp_path / "maps" / "town.osm")
    spec = ScenarioSpec(name="town", source=NetworkSource(osm=str(extract)), description="a test town", crop=(LON0, LAT0, LON0 + 0.0025, LAT0 + 0.0025),
                        lefthand=True, m_out=6, max_table_gib=0.5, signals=SignalConfig(min_legs=4, green_s=30), n_od_pairs=7, min_trip_frac=0.2,
                        regimes=(("quiet", Regime(5, 1.0)), ("busy", Regime(20, 2.5))), n_agents=3, t_max=900)
    path = spec.to_toml(tmp_path / "specs" / "town.toml")
    assert 'osm = "../maps/town.osm"' in path.read_text()  # relative to the file, so the pair can move together
    assert ScenarioSpec.from_toml(path) == spec
    online = dataclasses.replace(spec, source=NetworkSource(point=(22.38, 114.19), radius_m=750.0))
    assert ScenarioSpec.from_toml(online.to_toml(tmp_path / "online.toml")) == online
    for name in scenarios.builtin_scenarios():
        builtin = scenario_spec(name)
        assert ScenarioSpec.from_toml(builtin.to_toml(tmp_path / f"{name}.toml")) == builtin
    assert scenarios.builtin_scenarios() == ["grid", "hongkong", "oakland"]
    hk, grid = scenario_spec("hongkong"), scenario_spec("grid")
    assert (hk.lefthand, grid.lefthand, grid.crop, scenario_spec("oakland").n_od_pairs) == (True, False, (-102.27695, 21.86485, -102.26642, 21.87294), 12)


def test_an_extract_never_seen_builds_simulates_exports_to_sumo_and_trains(tmp_path, cache_dir, monkeypatch, capsys):
    import sys

    from reled_jax import train as train_module
    from sim.export_sumo import main as export_main, Args as ExportArgs

    extract = write_osm(tmp_path / "village.osm", rows=3, cols=4)
    network, env, params = load_scenario(str(extract), "moderate", n_agents=3, n_background=6)
    assert (network.name, network.n_nodes, network.lefthand) == ("village", 3 * 4 - 4, False)  # osmnx merges the corners into their roads
    assert network.m_out == 4 and env.n_agents == 3 and params.t_max == ScenarioSpec.t_max
    obs, state = env.reset(jax.random.PRNGKey(0), params)
    for k in range(20):
        obs, state, reward, done, info = env.step(jax.random.PRNGKey(k), state, jnp.zeros(3, jnp.int32), params)
    assert int(state.t) > 0 and int(state.agent_decisions.sum()) > 0 and np.isfinite(np.asarray(reward)).all()
    # SUMO: one junction per junction, through the export CLI's --osm
    export_main(ExportArgs(scenario=str(extract), regime="moderate", n_agents=3, out=str(tmp_path / "sumo")))
    net_xml = (tmp_path / "sumo" / "village-moderate.net.xml").read_text()
    assert net_xml.count("<junction ") >= network.n_nodes and 'lefthand="true"' not in net_xml
    # Training through the CLI's --osm (IPPO, two epochs: that it runs and writes its run directory)
    out = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["prog", "--osm", str(extract), "--n-agents", "3", "--method", "ippo", "--preset", "smoke", "--epochs", "2",
                                      "--out", str(out), "--test-episodes", "1"])
    train_module.main()
    assert json.loads((out / "config.json").read_text())["env"]["scenario"] == str(extract)
    assert "ippo on village/moderate" in capsys.readouterr().out


def test_networks_are_cached_by_content_and_spec_and_a_corrupt_cache_is_said_and_rebuilt(tmp_path, cache_dir, monkeypatch, capsys):
    extract = write_osm(tmp_path / "town.osm")
    spec = ScenarioSpec.for_osm(extract)
    built = load_network(spec)
    (cached_file,) = (cache_dir / "networks").glob("town.osm-*.npz")
    parsed = []
    real = scenarios.load_osm_graph
    monkeypatch.setattr(scenarios, "load_osm_graph", lambda *a, **k: parsed.append(1) or real(*a, **k))
    load_network.cache_clear()
    again = load_network(spec)
    assert parsed == []  # from disk, every field as built
    for f in dataclasses.fields(built):
        assert np.array_equal(getattr(again, f.name), getattr(built, f.name)), f.name
    # Another crop, other signal rules or another m_out is another network; so is a changed file.
    load_network.cache_clear()
    changed = [load_network(dataclasses.replace(spec, m_out=6)), load_network(dataclasses.replace(spec, signals=SignalConfig(enabled=False))),
               load_network(dataclasses.replace(spec, crop=(LON0 - 1e-4, LAT0 - 1e-4, LON0 + 0.0021, LAT0 + 0.0031)))]
    assert [n.m_out for n in changed] == [6, 4, 4] and not changed[1].node_signalized.any() and changed[2].n_nodes == 4 * 3 - 4
    assert len(parsed) == 3 and len(list((cache_dir / "networks").glob("*.npz"))) == 4
    # A cut-short cache file: said on stderr, rebuilt, and written again whole.
    cached_file.write_bytes(cached_file.read_bytes()[:100])
    load_network.cache_clear()
    capsys.readouterr()
    rebuilt = load_network(spec)
    err = capsys.readouterr().err
    assert f"cached network {cached_file} is unreadable" in err and "rebuilding it" in err and len(parsed) == 4
    assert np.array_equal(rebuilt.out_edges, built.out_edges) and scenarios.read_network(cached_file).n_nodes == built.n_nodes
    write_osm(extract, rows=5)
    load_network.cache_clear()
    assert load_network(ScenarioSpec.for_osm(extract)).n_nodes == 5 * 4 - 4 and len(parsed) == 5


def test_every_bad_map_is_a_clear_error(tmp_path, cache_dir, monkeypatch):
    good = write_osm(tmp_path / "good.osm")
    spec = ScenarioSpec.for_osm(good)
    cases = {
        "no drivable roads": (ScenarioSpec.for_osm(write_osm(tmp_path / "paths.osm", highway="footway")), "has no drivable roads"),
        "OD set too large": (dataclasses.replace(spec, n_od_pairs=500), "only .* junction pairs at least .* too few for an OD set of 500"),
        "crop outside": (dataclasses.replace(spec, crop=(10.0, 10.0, 10.01, 10.01)), r"crop \[10.0, 10.0, 10.01, 10.01\] lies outside the extract good.osm"),
        "too wide a junction": (dataclasses.replace(ScenarioSpec.for_osm(write_osm(tmp_path / "star.osm", star_legs=6)), m_out=3),
                                "has 6 outgoing roads but m_out = 3 action slots; set m_out >= 6"),
        "too many junctions for memory": (dataclasses.replace(spec, max_table_gib=1e-9), r"12 junctions need about 6.4e-06 GiB .* max_table_gib = 1e-09; crop"),
    }
    for name, (bad, match) in cases.items():
        with pytest.raises(NetworkError, match=match):
            load_scenario(bad, "moderate", n_agents=2, n_background=2)
    # A wider m_out than needed pads the action slots.
    padded, env, _ = load_scenario(dataclasses.replace(spec, m_out=7), "moderate", n_agents=2, n_background=2)
    assert padded.m_out == env.m_out == 7 and (padded.out_edges[:, 4:] == -1).all()
    # Files: not OSM, broken TOML, unknown keys, no source, a missing extract.
    (tmp_path / "broken.osm").write_text("<osm><node id='1'")
    (tmp_path / "broken.toml").write_text("name = [")
    (tmp_path / "typo.toml").write_text('[network]\nosm = "good.osm"\nlefthandd = true\n')
    (tmp_path / "nosource.toml").write_text('name = "x"\n[agents]\nn_agents = 2\n')
    for ref, match in [(tmp_path / "broken.osm", "malformed OSM XML"), (tmp_path / "broken.toml", "is not valid TOML"),
                       (tmp_path / "typo.toml", r"unknown key\(s\) \['network.lefthandd'\]"), (tmp_path / "nosource.toml", "needs exactly one source"),
                       (tmp_path / "missing.osm.bz2", "OSM file not found"), ("atlantis", "unknown scenario 'atlantis': give a built-in name")]:
        with pytest.raises(NetworkError, match=match):
            load_scenario(str(ref))
    # A place query without internet (osmnx pointed at a port nobody listens on: nothing leaves this machine).
    import osmnx as ox

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(ox.settings, "nominatim_url", f"http://127.0.0.1:{port}/nominatim")
    monkeypatch.setattr(ox.settings, "overpass_url", f"http://127.0.0.1:{port}/api")
    online = ScenarioSpec(name="online", source=NetworkSource(place="Sha Tin, Hong Kong"))
    with pytest.raises(NetworkError, match="needs internet, and it failed .* pass it with --osm FILE"):
        load_scenario(online)


def test_every_entry_point_takes_a_scenario_file_or_an_extract_the_same_way(tmp_path):
    """--scenario FILE.toml and --osm FILE reach the same ScenarioChoice in every CLI that builds one."""
    import tyro

    from benchmarks.expert_agreement import AgreementConfig
    from benchmarks.sweep import SweepConfig
    from benchmarks.vs_sumo import Args as VsSumoArgs
    from reled_jax.config import TrainConfig
    from reled_jax.evaluate import EvalConfig
    from reled_jax.validate_sumo import ValidateConfig
    from sim.export_sumo import Args as ExportArgs

    extract = write_osm(tmp_path / "hamlet.osm")
    spec_file = ScenarioSpec(name="hamlet", source=NetworkSource(osm=str(extract)), n_agents=4, n_od_pairs=10).to_toml(tmp_path / "hamlet.toml")
    for cls in (TrainConfig, ValidateConfig, ExportArgs, VsSumoArgs, AgreementConfig, EvalConfig):
        for flag, value in (("--osm", extract), ("--scenario", spec_file)):
            parsed = tyro.cli(cls, args=[flag, str(value)])
            assert (parsed.env if cls is TrainConfig else parsed).scenario == str(value), (cls, flag)
    cfg = TrainConfig.of(scenario=str(spec_file)).resolved()
    assert cfg.env.n_agents == 4 and cfg.out_dir.name == "hamlet-moderate-reled-s0"  # the file's agent count and name
    assert TrainConfig.of(scenario=str(extract)).resolved().env.n_agents == 10
    with pytest.raises(SystemExit, match="unknown --regime 'rush' for scenario 'hamlet'"):
        TrainConfig.of(scenario=str(spec_file), regime="rush").resolved()
    sweep = SweepConfig(scenarios=(str(spec_file),), seeds=2)
    assert sweep.train_config(*sweep.grid()[0]).out_dir.name.startswith("hamlet-moderate-a10-")
