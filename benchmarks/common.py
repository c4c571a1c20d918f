"""What every benchmark writes beside its numbers: the machine, and an atomic JSON write."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import jax
import numpy as np
from scipy import stats

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    device = jax.devices()[0]
    return {
        "device": f"{device.platform}: {device.device_kind}",
        "n_devices": len(jax.devices()),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "jax": jax.__version__,
    }


def write_json(path: Path, payload: dict) -> None:
    """Write through a temporary file, so an interrupted run never leaves half a result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def ci95(values) -> tuple[float, float]:
    """Mean and the half-width of its 95 % Student-t confidence interval (NaN half-width for one value)."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    if v.size == 1:
        return float(v[0]), float("nan")
    return float(v.mean()), float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
