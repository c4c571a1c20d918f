"""Imported once by the mutmut fork server (benchmarks/mutation_preload.txt): parse the scenario networks the fast
tests use, so that each mutant's child inherits them instead of parsing the OSM extracts again (~2 s each).

Safe for the verdicts: a network depends only on sim/osm.py and sim/network.py, which no mutant changes (the
scope is in benchmarks/mutation.py), and nothing here traces or compiles a JAX program.
"""

from sim.scenarios import load_network
from sim.network import SignalConfig

for name in ("oakland", "grid", "hongkong"):
    load_network(name, SignalConfig())
