"""A city district the project has never seen, from extract to training and SUMO, timed (issue 20's done-when).

    python -m benchmarks.new_extract                       # cut a district, train --preset smoke on it, export it to SUMO

Cuts a district out of a committed OSM file by bounding box (every way with a node inside, whole, and the
box as the file's bounds: osmium's "complete ways" strategy), writes it as a new .osm.bz2, then times, each
as its own process with an empty network cache (a first run on this extract):

    python -m reled_jax.train --osm DISTRICT.osm.bz2 --preset smoke --out ... --test-episodes 0
    python -m sim.export_sumo --osm DISTRICT.osm.bz2 --out ...

Writes benchmarks/results/new_extract.json (junctions, seconds of each command, and a second, cached train
start). The default district is the south-west of the Aguascalientes extract, outside the `grid` crop's
centre: 136 junctions.
"""

from __future__ import annotations

import bz2
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import tyro

from benchmarks.common import RESULTS, machine, write_json
from sim.scenarios import DATA_DIR, ScenarioSpec, load_network


@dataclasses.dataclass(frozen=True)
class Args:
    source: str = str(DATA_DIR / "aguascalientes_centro.osm.bz2")
    bbox: tuple[float, float, float, float] = (-102.2799, 21.8626, -102.2710, 21.8700)  # min_lon, min_lat, max_lon, max_lat
    out: str = str(RESULTS / "new_extract.json")


def cut_extract(source: Path, bbox: tuple[float, float, float, float], out: Path) -> Path:
    """The ways of `source` with a node inside `bbox`, whole, with their nodes, and `bbox` as the bounds."""
    with bz2.open(source) if source.suffix == ".bz2" else open(source, "rb") as fh:
        root = ET.parse(fh).getroot()
    inside = set()
    for node in root.iter("node"):
        lon, lat = float(node.get("lon")), float(node.get("lat"))
        if bbox[0] <= lon <= bbox[2] and bbox[1] <= lat <= bbox[3]:
            inside.add(node.get("id"))
    ways = [w for w in root.iter("way") if any(nd.get("ref") in inside for nd in w.iter("nd"))]
    keep = {nd.get("ref") for w in ways for nd in w.iter("nd")}
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', f'<osm version="0.6" generator="reled-jax benchmarks.new_extract (cut of {source.name})">',
             f'  <bounds minlon="{bbox[0]}" minlat="{bbox[1]}" maxlon="{bbox[2]}" maxlat="{bbox[3]}"/>']
    lines += ["  " + ET.tostring(n, encoding="unicode").strip() for n in root.iter("node") if n.get("id") in keep]
    lines += ["  " + ET.tostring(w, encoding="unicode").strip() for w in ways]
    lines.append("</osm>")
    out.parent.mkdir(parents=True, exist_ok=True)
    with bz2.open(out, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return out


def timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr[-1500:]}")
    return round(time.perf_counter() - t0, 2)


def main(args: Args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        district = cut_extract(Path(args.source), args.bbox, tmp / "district.osm.bz2")
        env = dict(os.environ, RELED_CACHE_DIR=str(tmp / "cache"))
        train = [sys.executable, "-m", "reled_jax.train", "--osm", str(district), "--preset", "smoke", "--test-episodes", "0"]
        first = timed([*train, "--out", str(tmp / "run1")], env)
        export = timed([sys.executable, "-m", "sim.export_sumo", "--osm", str(district), "--out", str(tmp / "sumo")], env)
        cached = timed([*train, "--out", str(tmp / "run2")], env)
        os.environ["RELED_CACHE_DIR"] = str(tmp / "cache")
        network = load_network(ScenarioSpec.for_osm(district))
        result = {
            "benchmark": "new_extract", "source": Path(args.source).name, "bbox": list(args.bbox), "junctions": network.n_nodes,
            "edges": network.n_edges, "m_out": network.m_out, "extract_bytes": district.stat().st_size,
            "train_smoke_first_run_s": first, "export_sumo_s": export, "train_smoke_cached_network_s": cached,
            "sumo_files": sorted(p.name for p in (tmp / "sumo").iterdir()),
            "commands": ["python -m reled_jax.train --osm DISTRICT.osm.bz2 --preset smoke --test-episodes 0 (empty cache, then again)",
                         "python -m sim.export_sumo --osm DISTRICT.osm.bz2 --out DIR"],
            "command": "python -m benchmarks.new_extract", "machine": machine(),
        }
    write_json(Path(args.out), result)
    print(f"{result['junctions']} junctions: train --preset smoke {first} s (first run), {cached} s (cached network); export_sumo {export} s; wrote {args.out}")
    return result


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
