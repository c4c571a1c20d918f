"""benchmarks.calibrate's scoring: mean travel-time error against SUMO, and the per-agent ranking it can weigh in."""

import numpy as np
import pytest

from benchmarks.calibrate import Args, plot, score


def _cell(mean, agents):
    return {"mean": mean, "agents": agents}


def test_score_adds_the_weighted_ranking_shortfall_to_the_mean_error():
    reference = {"grid/free": _cell(100.0, [90.0, 100.0, 110.0]), "grid/moderate": _cell(200.0, [150.0, 200.0, 250.0])}
    ours = {"grid/free": _cell(110.0, [99.0, 110.0, 121.0]),  # +10 %, same order
            "grid/moderate": _cell(180.0, [200.0, 190.0, 150.0])}  # -10 %, order reversed
    scored = score(ours, reference, rho_weight=0.0)
    assert scored["rel_error"] == pytest.approx({"grid/free": 0.10, "grid/moderate": -0.10})
    assert scored["spearman"] == pytest.approx({"grid/free": 1.0, "grid/moderate": -1.0})
    assert scored["objective"] == pytest.approx(0.10)  # weight 0: mean |error| alone, as before the option
    # Weighted: mean (1 - rho) over the cells is (0 + 2) / 2 = 1.
    assert score(ours, reference, rho_weight=0.05)["objective"] == pytest.approx(0.10 + 0.05)


def test_a_cell_that_ranks_nothing_costs_no_ranking_shortfall():
    reference = {"grid/free": _cell(100.0, [100.0, 100.0]), "grid/moderate": _cell(100.0, [90.0, 110.0])}
    ours = {"grid/free": _cell(100.0, [100.0, 100.0]), "grid/moderate": _cell(100.0, [95.0, 105.0])}
    scored = score(ours, reference, rho_weight=1.0)
    assert np.isnan(scored["spearman"]["grid/free"]) and scored["objective"] == pytest.approx(0.0)


def test_plot_draws_objective_and_loaded_rho(tmp_path):
    args = Args(turn_delay_s=(1.5, 3.0), startup_loss_s=(0.0, 0.75))
    rows = [{"traffic": {"turn_delay_s": td, "startup_loss_s": sl, "teleport_s": 120, "saturation_flow": 0.5, "critical_occupancy": 0.2, "min_speed_frac": 0.05},
             "objective": td / 10 + sl, "spearman": {"grid/free": 1.0, "grid/moderate": 0.5 + sl / 2}} for td in (1.5, 3.0) for sl in (0.0, 0.75)]
    plot(rows, args, tmp_path / "calibration.png")
    assert (tmp_path / "calibration.png").stat().st_size > 10_000


def test_sumo_times_are_reused_only_from_a_calibration_of_the_same_cells_and_keys(tmp_path):
    import json

    from benchmarks.calibrate import reused_reference

    earlier = tmp_path / "earlier.json"
    config = {"scenarios": ["grid"], "regimes": ["free", "moderate"], "episodes": 4, "seed": 777, "n_agents": 10}
    earlier.write_text(json.dumps({"config": config, "sumo_travel_time_s": {"grid/free": 100.0, "grid/moderate": 200.0},
                                   "sumo_agent_travel_time_s": {"grid/free": [90.0, 110.0], "grid/moderate": [150.0, 250.0]}}))
    same = Args(scenarios=("grid",), regimes=("free", "moderate"), reuse_sumo=str(earlier))
    assert reused_reference(same) == {"grid/free": _cell(100.0, [90.0, 110.0]), "grid/moderate": _cell(200.0, [150.0, 250.0])}
    with pytest.raises(SystemExit, match="episodes=4"):
        reused_reference(Args(scenarios=("grid",), regimes=("free", "moderate"), episodes=8, reuse_sumo=str(earlier)))
