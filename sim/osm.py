"""OpenStreetMap extract -> projected, drivable, strongly connected road graph.

This is the first stage of the data flow (OSM -> network arrays -> env params):
it only uses osmnx/networkx and knows nothing about JAX. Offline `.osm` and
`.osm.bz2` files are the default; `graph_from_query` is an optional online path
(cached on disk) for users with internet, never used by tests or defaults.
"""

from __future__ import annotations

import bz2
import gzip
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import networkx as nx

# Way types a car may use. osmnx's "drive" filter is an Overpass query string and
# does not apply to XML files, so the same rule is applied here to parsed ways.
DRIVABLE_HIGHWAYS = frozenset(
    {
        "motorway", "motorway_link", "trunk", "trunk_link",
        "primary", "primary_link", "secondary", "secondary_link",
        "tertiary", "tertiary_link", "unclassified", "residential", "living_street",
    }
)


class NetworkError(ValueError):
    """A road network could not be built; the message names the problem and the fix."""


def _first(value):
    return value[0] if isinstance(value, list) else value


def read_bounds(path: str | Path) -> tuple[float, float, float, float] | None:
    """The extract's `<bounds>` as (min_lon, min_lat, max_lon, max_lat), or None if absent."""
    opener = {".bz2": bz2.open, ".gz": gzip.open}.get(Path(path).suffix, open)
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            head = fh.read(8192)
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise NetworkError(f"cannot read OSM file {path}: {err}. Give an OSM XML file (.osm or .osm.bz2).") from err
    match = re.search(r"<bounds\b([^>]*)/?>", head)
    if not match:
        return None
    attrs = dict(re.findall(r'(\w+)="([-\d.]+)"', match.group(1)))
    try:
        return (float(attrs["minlon"]), float(attrs["minlat"]), float(attrs["maxlon"]), float(attrs["maxlat"]))
    except KeyError:
        return None


def load_osm_graph(
    path: str | Path,
    bbox: tuple[float, float, float, float] | None = None,
) -> nx.MultiDiGraph:
    """Load an OSM XML extract offline into a projected (metres) drivable graph.

    Steps: parse with osmnx (unsimplified), keep drivable ways only, crop to
    `bbox` (min_lon, min_lat, max_lon, max_lat; default: the file's `<bounds>`),
    simplify to junction-to-junction edges, keep the largest strongly connected
    component (so every origin reaches every destination), project to UTM.

    Raises NetworkError for a missing, malformed or empty file, or one with no
    drivable roads inside the bounds.
    """
    import osmnx as ox

    path = Path(path)
    if not path.is_file():
        raise NetworkError(f"OSM file not found: {path}. Pass the path of an .osm or .osm.bz2 extract.")
    if bbox is None:
        bbox = read_bounds(path)
    try:
        graph = ox.graph_from_xml(path, simplify=False, retain_all=True)
    except (ET.ParseError, EOFError, OSError, UnicodeDecodeError) as err:
        raise NetworkError(
            f"malformed OSM XML in {path}: {err}. Re-export the extract as OSM XML (e.g. from the OSM website or osmium)."
        ) from err
    except ValueError as err:  # osmnx: "...no nodes..." / empty graph
        raise NetworkError(f"OSM file {path} holds no usable map data ({err}). Check that the extract covers roads.") from err
    return drivable_graph(graph, bbox=bbox, source=str(path))


def drivable_graph(
    graph: nx.MultiDiGraph,
    bbox: tuple[float, float, float, float] | None,
    source: str = "graph",
) -> nx.MultiDiGraph:
    """Filter an unsimplified, unprojected osmnx graph to the largest drivable SCC, in metres."""
    import osmnx as ox

    if graph.number_of_nodes() == 0:
        raise NetworkError(f"{source} contains no OSM nodes. Check that the extract is not empty.")
    non_drivable = [
        (u, v, k) for u, v, k, d in graph.edges(keys=True, data=True) if _first(d.get("highway")) not in DRIVABLE_HIGHWAYS
    ]
    graph = graph.copy()
    graph.remove_edges_from(non_drivable)
    graph.remove_nodes_from([n for n in list(graph.nodes) if graph.degree(n) == 0])
    if graph.number_of_edges() == 0:
        raise NetworkError(
            f"{source} has no drivable roads (highway=primary/residential/...). "
            "Use an extract that contains streets, not only footways or buildings."
        )
    if bbox is not None:
        try:
            graph = ox.truncate.truncate_graph_bbox(graph, bbox)
        except ValueError as err:
            raise NetworkError(f"no drivable roads of {source} lie inside the bounds {bbox}: {err}. Widen the bounds.") from err
        if graph.number_of_edges() == 0:
            raise NetworkError(f"no drivable roads of {source} lie inside the bounds {bbox}. Widen the bounds.")
    graph = ox.simplify_graph(graph)
    graph = ox.truncate.largest_component(graph, strongly=True)
    if graph.number_of_nodes() < 2:
        raise NetworkError(
            f"the drivable roads of {source} form no strongly connected network of 2+ junctions. "
            "Use a larger extract or wider bounds."
        )
    return ox.project_graph(graph)


def graph_from_query(
    place: str = "",
    bbox: tuple[float, float, float, float] | None = None,
    point: tuple[float, float] | None = None,
    radius_m: float = 1000.0,
    cache_dir: str | Path = "cache/osmnx",
    crop: tuple[float, float, float, float] | None = None,
) -> nx.MultiDiGraph:
    """Optional online path: a drive network from an osmnx query (a place name, a bounding box, or a point and
    radius), for users with internet. osmnx caches the raw responses under `cache_dir`, so the same query
    then works offline. Never used by tests or defaults; without internet it is a NetworkError that says so.
    """
    import osmnx as ox
    import requests

    ox.settings.use_cache = True
    ox.settings.cache_folder = str(cache_dir)
    what = f"place {place!r}" if place else (f"bbox {list(bbox)}" if bbox else f"point {list(point)} within {radius_m:g} m")
    try:
        if place:
            graph = ox.graph_from_place(place, network_type="drive", simplify=False, retain_all=True)
        elif bbox:
            graph = ox.graph_from_bbox(tuple(bbox), network_type="drive", simplify=False, retain_all=True)
        else:
            graph = ox.graph_from_point(tuple(point), dist=radius_m, network_type="drive", simplify=False, retain_all=True)
    except requests.exceptions.RequestException as err:
        raise NetworkError(
            f"the online query for {what} needs internet, and it failed ({type(err).__name__}). Download an OSM extract of the area "
            "(e.g. from the OSM website's Export or a Geofabrik extract cut with osmium) and pass it with --osm FILE or osm = \"FILE\" in the scenario"
        ) from None
    except (ValueError, TypeError) as err:  # osmnx: geocoding found nothing, or the query area is empty
        raise NetworkError(f"the online query for {what} returned no usable road network ({err}); check the place name or area") from None
    return drivable_graph(graph, bbox=crop, source=what)
