"""pytest plugin for mutation runs only (benchmarks/mutation.py loads it through mutmut's pytest arguments).

A mutant's test run stops at its first failure (`-x`), so running the covering tests fastest
first finds most kills in seconds instead of after a minute-long test. Durations come from
mutmut's statistics run (mutmut-stats.json in the mutants directory); tests it has not timed yet
(new ones) go first. Outside a mutation run there is no statistics file and nothing is reordered.
"""

from __future__ import annotations

import json
from pathlib import Path


def pytest_collection_modifyitems(session, config, items) -> None:
    stats = Path("mutmut-stats.json")
    if not stats.exists():
        return
    duration = json.loads(stats.read_text()).get("duration_by_test", {})
    items.sort(key=lambda item: duration.get(item.nodeid, 0.0))
