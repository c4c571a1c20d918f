"""The experiment sweep and its report: cells, seed-vmapped evaluation, reuse of finished runs, CI verdicts."""

import dataclasses
import json
import subprocess
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest

from benchmarks import report
from benchmarks.expert_agreement import AgreementConfig, agreement
from benchmarks.sweep import SweepConfig, grid_key, sweep
from reled_jax.evaluate import EvalConfig
from reled_jax.evaluate import main as evaluate


@pytest.mark.slow
def test_sweep_evaluates_every_seed_like_evaluate_and_reuses_finished_runs(tmp_path, monkeypatch):
    cfg = SweepConfig(experiment="fig4", budget="smoke", seeds=2, methods=("ippo",), scenarios=("oakland",), regimes=("moderate",), n_agents=(4,),
                      episodes=3, max_steps=300, runs_dir=str(tmp_path / "runs"), out=str(tmp_path / "sweep.json"))
    result = sweep(cfg)
    assert [c["method"] for c in result["cells"]] == ["ippo"]  # MAPPO's training has tests of its own (test_mappo)
    ippo = result["cells"][0]
    # Curves are [seed][epoch]; the smoke preset trains 4 epochs.
    assert np.array(ippo["curves"]["episode_reward"]).shape == (2, 4)
    assert np.all(np.diff(np.array(ippo["curves"]["interaction_steps"]), axis=1) > 0)
    # The seed-vmapped test episodes give what `python -m reled_jax.evaluate` gives policy by policy on the same keys.
    ck = tmp_path / "runs" / "smoke" / "oakland-moderate-a4-ippo-x2" / "checkpoint.npz"
    single = evaluate(EvalConfig(checkpoint=str(ck), episodes=3, max_steps=300, seed=cfg.eval_seed))
    assert json.loads((ck.parent / "evaluation.json").read_text())["results"].keys() == single.keys()
    assert single["shortest"]["arrival_rate"] > single["random"]["arrival_rate"]
    per_seed = [v["reward_per_agent"][0] for k, v in single.items() if k.startswith("ippo")]
    np.testing.assert_allclose([t["reward"] for t in ippo["test"]], per_seed, rtol=1e-5)
    assert result["references"]["oakland/moderate/a4"]["shortest"]["reward"] == pytest.approx(single["shortest"]["reward_per_agent"][0], rel=1e-5)
    # Sampled actions too, on the same keys (evaluate plays the other mode as "sampled: ..."), and the
    # untrained networks both ways beside the references.
    sampled = [v["reward_per_agent"][0] for k, v in single.items() if k.startswith("sampled: ippo")]
    assert len(sampled) == 2
    np.testing.assert_allclose([t["reward"] for t in ippo["test_sampled"]], sampled, rtol=1e-5)
    refs = result["references"]["oakland/moderate/a4"]
    assert refs["untrained greedy"]["reward"] == pytest.approx(single["untrained greedy"]["reward_per_agent"][0], rel=1e-5)
    assert refs["untrained sampled"]["reward"] == pytest.approx(single["untrained sampled"]["reward_per_agent"][0], rel=1e-5)
    assert refs["untrained greedy"]["reward"] != refs["untrained sampled"]["reward"]

    # A second sweep reuses the finished runs: nothing retrains and the results are the same.
    mtime = ck.stat().st_mtime_ns
    again = sweep(cfg)
    assert ck.stat().st_mtime_ns == mtime
    assert json.dumps(again["cells"]) == json.dumps(result["cells"])
    # --refresh-curves re-reads a finished cell's curves from its run directory, and nothing else.
    assert np.isfinite(np.array(ippo["curves"]["entropy"])).all()
    stale = json.loads((tmp_path / "sweep.json").read_text())
    stale["cells"][0]["curves"] = {"episode_reward": [[0.0]]}
    (tmp_path / "sweep.json").write_text(json.dumps(stale))
    assert sweep(cfg)["cells"][0]["curves"] == {"episode_reward": [[0.0]]}
    refreshed = sweep(dataclasses.replace(cfg, refresh_curves=True))
    assert json.dumps(refreshed["cells"]) == json.dumps(result["cells"]) and ck.stat().st_mtime_ns == mtime

    # Fig. 6 from the trained run: the flows, written with the model they were played on and the one the run trained on.
    from benchmarks.flow_map import FlowArgs
    from benchmarks.flow_map import main as flow_map
    from sim.env import simulator_model

    fig6 = flow_map(FlowArgs(checkpoint=str(ck), episodes=2, steps=300, out=str(tmp_path / "fig6.png")))
    saved = json.loads((tmp_path / "fig6.json").read_text())
    assert saved["simulator"] == saved["trained_on"] == simulator_model() and saved["agreement"] == fig6["agreement"]
    assert sum(saved["flow_expert"]) > 0 and sum(saved["flow_agents"]) > 0 and (tmp_path / "fig6.png").stat().st_size > 0

    # Runs trained under another simulator model are not reused, even into a new results file: the run
    # directory's checkpoint records the model, and resuming it under other dynamics is refused.
    import reled_jax.train

    other = reled_jax.train.simulator_model() | {"storage": "one car per edge"}
    monkeypatch.setattr(reled_jax.train, "simulator_model", lambda: other)
    with pytest.raises(SystemExit, match="trained on another simulator model.*another --out"):
        sweep(dataclasses.replace(cfg, out=str(tmp_path / "other.json")))
    assert ck.stat().st_mtime_ns == mtime and not (tmp_path / "other.json").exists()
    monkeypatch.undo()

    # Expert agreement on the same runs: its test rewards are the sweep's (same keys), and the report tables it.
    agree = agreement(AgreementConfig(budget="smoke", scenario="oakland", n_agents=4, seeds=2, methods=("ippo", "reled"), episodes=2, demo_steps=300,
                                      test_episodes=3, max_steps=300, runs_dir=str(tmp_path / "runs"), out=str(tmp_path / "expert_agreement_smoke.json")))
    assert list(agree["methods"]) == ["initial", "ippo"]  # reled has no run here: skipped
    for cell in result["cells"]:
        rows = agree["methods"][cell["method"]]["per_seed"]
        np.testing.assert_allclose([r["test_reward"] for r in rows], [t["reward"] for t in cell["test"]], rtol=1e-5)
        assert all(0.0 <= r["argmax_agreement"] <= 1.0 and 0.0 < r["p_expert_action"] <= 1.0 and r["decisions"] > 0 for r in rows)
    assert (tmp_path / "expert_agreement_smoke.png").exists()
    lines, claims = report.section_agreement({"expert_agreement_smoke": agree})
    assert sum(line.startswith(("| untrained", "| IPPO")) for line in lines) == 2 and claims == []  # no RELED run, no claim


def _cell(method: str, rewards: list[float]) -> dict:
    return {"method": method, "scenario": "grid", "regime": "moderate", "n_agents": 10,
            "test": [{"reward": r, "travel_time_s": 500.0, "arrival_rate": 1.0, "episode_reward": [r]} for r in rewards]}


def test_verdicts_follow_the_confidence_intervals():
    tight_high, tight_low = [1000.0, 1010.0, 990.0, 1005.0, 995.0], [500.0, 510.0, 490.0, 505.0, 495.0]
    wide = [200.0, 1800.0, 600.0, 1400.0, 1000.0]
    assert report.verdict_best([_cell("reled", tight_high), _cell("ippo", tight_low)])[0] == "holds"
    assert report.verdict_best([_cell("reled", tight_low), _cell("ippo", tight_high)])[0] == "does not hold"
    assert report.verdict_best([_cell("reled", tight_high), _cell("ippo", wide)])[0].startswith("not resolved")
    # Other RELED forms are not baselines: a variant above RELED does not decide the claim.
    assert report.verdict_best([_cell("reled", tight_high), _cell("ippo", tight_low), _cell("reled-va", [2000.0] * 5)])[0] == "holds"
    assert report.verdict_best([_cell("reled-va", tight_high), _cell("ippo", tight_low), _cell("reled", tight_low)], method="reled-va")[0] == "holds"
    # A RELED cell whose expert plans all fell back imitated the fallback (live shortest time): the verdict says so.
    refused = _cell("reled", tight_low) | {"expert": [{"plans_requested": 200, "plans_executed": 0}] * 2}
    verdict, detail = report.verdict_best([refused, _cell("ippo", tight_high)])
    assert verdict == "does not hold, with the fallback expert only" and "all 400 expert plans" in detail and "IPPO" in detail
    ran_once = _cell("reled", tight_high) | {"expert": [{"plans_requested": 200, "plans_executed": 0}, {"plans_requested": 200, "plans_executed": 3}]}
    assert report.verdict_best([ran_once, _cell("ippo", tight_low)])[0] == "holds"
    # A higher mean alone is not enough when another method's CI overlaps.
    assert report.verdict_best([_cell("reled", tight_high), _cell("ippo", tight_low), _cell("mappo", wide)])[0].startswith("not resolved")


def test_forward_fill_carries_the_last_finished_episode():
    filled = report.forward_fill([[np.nan, 1.0, np.nan, 3.0], [2.0, np.nan, np.nan, np.nan]])
    np.testing.assert_array_equal(filled[0, 1:], [1.0, 1.0, 3.0])
    assert np.isnan(filled[0, 0])
    np.testing.assert_array_equal(filled[1], [2.0, 2.0, 2.0, 2.0])


def test_curves_read_at_a_step_count_average_seeds_and_skip_a_metric_never_logged():
    curves = {"interaction_steps": [[100, 200, 300], [100, 200, 300]], "entropy": [[1.0, 0.5, 0.2], [0.8, np.nan, 0.4]],
              "qmix_entropy": [[np.nan] * 3, [np.nan] * 3]}
    assert report.curve_at(curves, "entropy", 150) == 0.5  # the first epoch at or past 150 steps; a NaN seed is skipped
    assert report.curve_at(curves, "entropy", 300) == pytest.approx(0.3)
    assert report.curve_mean(curves, "entropy", 250) == pytest.approx((0.9 + 0.5) / 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an all-NaN metric gives NaN without numpy's empty-slice warning
        assert np.isnan(report.curve_at(curves, "qmix_entropy", 150)) and np.isnan(report.curve_mean(curves, "qmix_entropy", 250))
    assert np.isnan(report.curve_at(curves, "absent", 150))


def test_report_tables_every_cell_and_draws_the_figures(tmp_path):
    cells = []
    for method, base in (("reled", 900.0), ("ippo", 400.0)):
        for regime in ("moderate", "congested"):
            c = _cell(method, [base + d for d in (0.0, 5.0, -5.0)])
            # Sampled actions rank the other way round: the sampled verdict must read test_sampled, not test.
            c["test_sampled"] = _cell(method, [1300.0 - base + d for d in (0.0, 5.0, -5.0)])["test"]
            c.update(regime=regime, train_wall_s=100.0, seeds=3, interaction_steps_per_seed=3000, curves={
                "interaction_steps": [[1000, 2000, 3000]] * 3, "wall_s": [[10, 20, 30]] * 3,
                "episode_reward": [[np.nan, base / 2, base]] * 3, "travel_time": [[900, 700, 500]] * 3,
                "dtw_m": [[9000, 5000, 3000]] * 3, "alpha": [[1.0, 0.6, 0.3]] * 3})
            cells.append(c)
    ref = {"travel_time_s": 300.0, "arrival_rate": 1.0, "episode_reward": [1000.0]}
    refs = {f"grid/{r}/a10": {"shortest": {**ref, "reward": 1000.0}, "random": {**ref, "reward": -1442.0},
                              "untrained greedy": {**ref, "reward": -2024.0}, "untrained sampled": {**ref, "reward": -1450.0}} for r in ("moderate", "congested")}
    sweep_json = {"experiment": "fig4", "budget": "smoke", "seeds": 3, "episodes": 1, "command": "python -m benchmarks.sweep",
                  "budget_config": {"epochs": 3, "n_envs": 1, "rollout_steps": 8, "alpha_schedule": "text", "center_expert_advantages": False},
                  "machine": {"device": "cpu: cpu", "n_devices": 1, "cpu_count": 2, "jax": "x"}, "cells": cells, "references": refs}
    (tmp_path / "sweep_fig4_smoke.json").write_text(json.dumps(sweep_json))
    text = report.write_report(report.ReportConfig(results=str(tmp_path))).read_text()
    # Each sweep says which simulator model it ran on; this one predates the record.
    assert "`sweep_fig4_smoke`: 3 epochs" in text and "Simulator model: unrecorded: made before issue 21's storage fix" in text
    for regime in ("moderate", "congested"):
        assert f"| Fig. 4: RELED converges to the highest reward — Grid (Orlando's stand-in) – {regime} (smoke budget) | holds |" in text
        assert f"| Fig. 4, sampled actions: RELED converges to the highest reward — Grid (Orlando's stand-in) – {regime} (smoke budget) | does not hold |" in text
    # Greedy and sampled returns for every method, and the references (random beside the untrained networks) on one row.
    assert "greedy 900 ± 5 [±12]<br>sampled 400 ± 5 [±12]" in text
    assert "shortest 1,000 (300 s)<br>random -1,442<br>untrained -2,024 / -1,450 | holds / does not hold |" in text
    assert "9.00 km → 3.00 km (-67%)" in text and "| Fig. 7: DTW drops and stays low — Grid (Orlando's stand-in) – moderate | holds |" in text
    for fig in ("fig4", "fig5", "fig7"):
        assert (tmp_path / f"fig4_smoke_{fig}.png").stat().st_size > 10_000
    # Ablations on RELED-Va: "full" is reled-va, and each variant is set beside the paper's number for its paper form.
    ablation_cells = []
    for method, rewards in (("reled-va", [1000.0, 1010.0, 990.0]), ("reled-va-alpha0.5", [400.0, 410.0, 390.0]), ("ippo", [0.0, 1500.0, 800.0])):
        c = _cell(method, rewards)
        c.update(seeds=3, interaction_steps_per_seed=3000, train_wall_s=100.0, curves={
            "interaction_steps": [[1000, 2000, 3000]] * 3, "wall_s": [[10, 20, 30]] * 3, "episode_reward": [[0.0, 1.0, 2.0]] * 3})
        ablation_cells.append(c)
    (tmp_path / "sweep_table4-va_smoke.json").write_text(json.dumps({**sweep_json, "experiment": "table4-va", "cells": ablation_cells}))
    text = report.write_report(report.ReportConfig(results=str(tmp_path))).read_text()
    claim = "| Table IV with our variant (A^e against V^a, not Eq. 28): RELED-Vᵃ (not in paper) beats"
    assert f"{claim} RELED-Vᵃ-α0.5 — Grid (Orlando's stand-in) | holds | 1,000 vs 400 |" in text
    assert f"{claim} IPPO — Grid (Orlando's stand-in) | not resolved (CIs overlap) |" in text
    assert "| RELED-Vᵃ-α0.5 | 400 ± 10 (-60.0%) | paper -76 (-109.7%); ours: below full |" in text
    assert (tmp_path / "table4-va_smoke_fig9.png").stat().st_size > 10_000
    # An ablation sweep that lacks RELED's own cell takes it from the Fig. 4 sweep of the same budget key (the
    # same runs), says so, and measures the drop against it; a Fig. 4 sweep of another key lends nothing.
    norefine = _cell("reled-norefine", [450.0, 455.0, 445.0]) | {"seeds": 3, "train_wall_s": 100.0, "interaction_steps_per_seed": 3000,
                                                                 "curves": {"interaction_steps": [[1000, 2000]] * 3, "wall_s": [[10, 20]] * 3, "episode_reward": [[0.0, 1.0]] * 3}}
    (tmp_path / "sweep_table4_smoke.json").write_text(json.dumps({**sweep_json, "experiment": "table4", "cells": [norefine]}))
    text = report.write_report(report.ReportConfig(results=str(tmp_path))).read_text()
    section = text[text.index("(`sweep_table4_smoke`)"):]
    assert "RELED (full) on Grid (Orlando's stand-in): from `sweep_fig4_smoke`" in section
    assert "| RELED w/o refn. | 450 ± 5 (-50.0%) |" in section
    (tmp_path / "sweep_table4_smoke.json").write_text(json.dumps({**sweep_json, "experiment": "table4", "episodes": 2, "cells": [norefine]}))
    section = report.write_report(report.ReportConfig(results=str(tmp_path))).read_text()
    section = section[section.index("(`sweep_table4_smoke`)"):]
    assert "from `sweep_fig4_smoke`" not in section and "| RELED w/o refn. | 450 ± 5 (+nan%) |" in section

    # Fig. 8 from two sweeps of one budget (say 5 agents on the CPU, 20 on a GPU): each section fills in the
    # other's agent counts and names the sweep each row comes from; a sweep of another budget is left out.
    def agents_cell(method: str, n: int, reward: float) -> dict:
        return {**_cell(method, [reward, reward + 5.0, reward - 5.0]), "n_agents": n, "train_wall_s": 50.0}

    fig8 = {**sweep_json, "experiment": "fig8", "references": {}}
    (tmp_path / "sweep_fig8_smoke.json").write_text(json.dumps({**fig8, "cells": [agents_cell("reled", 5, 700.0), agents_cell("ippo", 5, 600.0)]}))
    (tmp_path / "sweep_fig8_smoke_gpu.json").write_text(json.dumps({**fig8, "cells": [agents_cell("reled", 20, 300.0), {**agents_cell("ippo", 20, 200.0), "seed_runs": "separate"}]}))
    (tmp_path / "sweep_fig8_other.json").write_text(json.dumps({**fig8, "budget": "other", "cells": [agents_cell("reled", 50, -9.0)]}))
    text = report.write_report(report.ReportConfig(results=str(tmp_path))).read_text()
    cpu_section = text[text.index("### Fig. 8: agent counts (`sweep_fig8_smoke`)"):]
    cpu_section = cpu_section[:cpu_section.index("\n### ", 1)] if "\n### " in cpu_section[1:] else cpu_section
    assert "| 5 | 700 (100%) | 600 (100%) |" in cpu_section
    assert "| 10 (`sweep_fig4_smoke`) | 900 (100%) | 400 (100%) |" in cpu_section
    assert "| 20 (`sweep_fig8_smoke_gpu`) | 300 (100%) | 200 (100%) |" in cpu_section
    assert "\n| 50" not in cpu_section and "| -9 " not in cpu_section
    # A cell whose seeds trained one at a time is marked, and the mark explained.
    assert "| 50 / 50† |" in cpu_section and "| 50 / 50 |" in cpu_section and "† its seeds trained one at a time" in cpu_section
    assert "| Fig. 8: RELED has the highest reward with 5 agents | holds |" in text


def _fig4_cell(method: str, reward: float, **extra) -> dict:
    c = _cell(method, [reward, reward + 5.0, reward - 5.0])
    c.update(seeds=3, train_wall_s=100.0, interaction_steps_per_seed=3000, **extra, curves={
        "interaction_steps": [[1000, 2000]] * 3, "wall_s": [[10, 20]] * 3, "episode_reward": [[0.0, reward]] * 3,
        "travel_time": [[900, 700]] * 3, "dtw_m": [[9000, 5000]] * 3, "alpha": [[0.4, 1.0]] * 3})
    return c


def test_report_marks_old_method_sweeps_and_shows_the_readings_and_what_changed(tmp_path):
    base = {"experiment": "fig4", "budget": "smoke", "seeds": 3, "episodes": 1, "command": "python -m benchmarks.sweep", "references": {},
            "machine": {"device": "cpu: cpu", "n_devices": 1, "cpu_count": 2, "jax": "x"}}
    new_form = {"epochs": 2, "n_envs": 1, "rollout_steps": 8, "alpha_schedule": "text", "center_expert_advantages": False}
    old_form = {"epochs": 2, "n_envs": 1, "rollout_steps": 8}  # sweeps before issue 17 keyed neither field
    (tmp_path / "pre_issue17").mkdir()
    (tmp_path / "pre_issue17" / "sweep_fig4_smoke.json").write_text(json.dumps(
        {**base, "budget_config": old_form, "cells": [_fig4_cell("reled", -2000.0), _fig4_cell("ippo", 300.0)]}))
    (tmp_path / "sweep_fig4_smoke.json").write_text(json.dumps({**base, "budget_config": new_form, "cells": [_fig4_cell("reled", 900.0), _fig4_cell("ippo", 310.0)]}))
    (tmp_path / "sweep_fig8_smoke.json").write_text(json.dumps({**base, "experiment": "fig8", "budget_config": old_form, "cells": [_fig4_cell("reled", 5.0, n_agents=5), _fig4_cell("ippo", 1.0, n_agents=5)]}))
    readings = tmp_path / "alpha_schedule"
    readings.mkdir()
    (readings / "sweep_table4_smoke_alpha-eq30.json").write_text(json.dumps({**base, "experiment": "table4", "budget_config": {**new_form, "alpha_schedule": "eq30"},
                                                                             "cells": [_fig4_cell("reled", -400.0, test_sampled=_cell("reled", [55.0] * 3)["test"])]}))
    (readings / "expert_agreement_smoke_grid-moderate_alpha-eq30.json").write_text(json.dumps({"methods": {
        "reled": {"p_expert_action": [0.601, 0.01], "argmax_agreement": [0.640, 0.01]}, "initial": {"p_expert_action": [0.540, 0.0], "argmax_agreement": [0.568, 0.0]}}}))
    text = report.write_report(report.ReportConfig(results=str(tmp_path))).read_text()
    # Today's method carries no mark; a sweep of the old method says so on every claim it makes.
    assert "| Fig. 4: RELED converges to the highest reward — Grid (Orlando's stand-in) – moderate (smoke budget) | holds |" in text
    assert "| Fig. 8: RELED has the highest reward with 5 agents; pre-issue-17 RELED: eq30, centred A^e |" in text
    assert "| `sweep_fig4_smoke` | Grid (Orlando's stand-in) – moderate | -2,000 → 900 | – | 300 → 310 |" in text
    assert "| `eq30` | Grid (Orlando's stand-in) | 0.601 / 0.640 | 0.540 / 0.568 | -400 ± 5 | 55 ± 0 | 1.00 |" in text


def test_agreement_scores_count_the_experts_decisions_only():
    """Two environments, three steps, two agents: five valid expert decisions, the policy's favourite is the
    expert's action at three of them; rows after an episode's end (valid False) and non-decisions do not count."""
    from benchmarks.expert_agreement import agreement_scores

    decided = np.array([[[1, 0], [1, 1], [0, 1]], [[1, 1], [0, 0], [1, 1]]], bool)
    valid = np.array([[True, True, False], [True, True, True]])
    action = np.array([[[2, 0], [1, 3], [0, 0]], [[0, 1], [2, 2], [1, 1]]])
    best = np.array([[[2, 1], [0, 3], [0, 0]], [[0, 0], [2, 2], [1, 3]]])  # equal at (0,0,0) (0,1,1) (1,0,0) (1,2,0) and off-decision rows
    p = np.array([[[0.5, 0.9], [0.2, 0.6], [1.0, 1.0]], [[0.7, 0.1], [1.0, 1.0], [0.4, 0.3]]])
    p_expert, agree, n = agreement_scores(decided, valid, np.log(p), best, action)
    # Counted decisions: (0,0,0) (0,1,0) (0,1,1) (1,0,0) (1,0,1) (1,2,0) (1,2,1) -> 7; agreeing: 4 of them.
    assert int(n) == 7
    assert float(agree) == pytest.approx(4 / 7)
    assert float(p_expert) == pytest.approx((0.5 + 0.2 + 0.6 + 0.7 + 0.1 + 0.4 + 0.3) / 7)
    _, none_agree, _ = agreement_scores(decided, valid, np.log(p), best + 10, action)
    assert float(none_agree) == 0.0


def test_sweep_and_agreement_refuse_counts_below_one_before_anything_runs(tmp_path):
    with pytest.raises(SystemExit, match=r"--episodes, --max-steps and --n-agents must be at least 1 \(got 20, 3000, \[0\]\)"):
        SweepConfig(experiment="fig4", budget="smoke", n_agents=(0,), runs_dir=str(tmp_path / "runs")).grid()
    with pytest.raises(SystemExit, match="--seeds 0, --test-episodes 0: counts must be at least 1"):
        agreement(AgreementConfig(budget="smoke", seeds=0, test_episodes=0, runs_dir=str(tmp_path / "runs")))
    assert not (tmp_path / "runs").exists()


def test_what_we_learned_sets_the_paper_budget_beside_the_small_one_and_each_reading(tmp_path):
    base = {"experiment": "fig4", "seeds": 3, "episodes": 1, "command": "python -m benchmarks.sweep", "references": {},
            "machine": {"device": "cpu: cpu", "n_devices": 1, "cpu_count": 2, "jax": "x"}}
    form = {"epochs": 2, "n_envs": 1, "rollout_steps": 8, "alpha_schedule": "text", "center_expert_advantages": False}

    def cell(method, reward, entropy):
        c = _fig4_cell(method, reward, scenario="hongkong")
        c["curves"].update(interaction_steps=[[40_000, 90_000]] * 3, entropy=[entropy] * 3, alpha=[[0.2, 0.6]] * 3)
        return c

    (tmp_path / "sweep_fig4_small.json").write_text(json.dumps({**base, "budget": "small", "budget_config": form,
                                                                "cells": [cell("reled", 100.0, [0.5, 0.4]), cell("ippo", 200.0, [0.5, 0.4])]}))
    (tmp_path / "sweep_fig4_paper.json").write_text(json.dumps({**base, "budget": "paper", "budget_config": form,
                                                                "cells": [cell("reled", -500.0, [0.3, 0.1]) | {"interaction_steps_per_seed": 300_000, "train_wall_s": 1500.0},
                                                                          cell("ippo", 700.0, [0.45, 0.2]) | {"interaction_steps_per_seed": 900_000, "train_wall_s": 3000.0}]}))
    (tmp_path / "sweep_fig4_paper_eq30.json").write_text(json.dumps({**base, "budget": "paper", "budget_config": {**form, "alpha_schedule": "eq30"},
                                                                     "cells": [cell("reled", 1000.0, [0.5, 0.3]) | {"interaction_steps_per_seed": 500_000}]}))
    text = report.write_report(report.ReportConfig(results=str(tmp_path))).read_text()
    learned = text[text.index("## What we learned"):text.index("## Setting")]
    # Entropy is read where the interaction steps first reach 50 k and 100 k (the second epoch, and past the end: the last).
    assert "| Hong Kong – moderate | RELED (full) | 100 ± 12 | -500 ± 12 |" in learned and "| 0.10 / 0.10 |" in learned
    assert "| Hong Kong – moderate | IPPO | 200 ± 12 | 700 ± 12 |" in learned
    assert "| Hong Kong – moderate | RELED (full) (Eq. 30 read eq30) | – | 1,000 ± 12 |" in learned  # no small-budget cell of that reading
    assert "RELED tests at -500 and IPPO at 700** (small budget: 100 and 200)" in learned and "does not hold here at 500 epochs" in learned
    assert "α averages 0.40, so the expert's loss carries weight 0.60" in learned  # both epochs lie below 100 k steps
    assert "RELED tests at 1,000 ± 12 on Hong Kong – moderate against the text reading's -500, above IPPO's (700 ± 12)" in learned
    # The ranges of interaction steps and training minutes come from the paper-budget cells (both files).
    assert "(500 epochs, 3.0–9.0 × 10⁵ steps" in learned and "(2–50 minutes of training per cell" in learned
    # Coverage counts today's RELED's paper-budget cells against each experiment's grid, whichever file holds them (not eq30's).
    assert "counts): fig4 2 of 20, table4 2 of 12, table4-va 1 of 12, fig8 2 of 28." in learned
    # An experiment missing only a few cells names them (in grid order); one missing more, or none, does not.
    table4 = SweepConfig(experiment="table4").grid()
    every = [{"scenario": sc, "regime": rg, "n_agents": n, "method": m} for sc, rg, n, m in table4]
    coverage = report.paper_coverage({"t": {"budget": "paper", "budget_config": form, "cells": every[2:]}})
    first, second = (grid_key(*c) for c in table4[:2])
    assert f"table4 10 of 12 (not {first}, {second})," in coverage and coverage.count("(not") == 1
    full = report.paper_coverage({"t": {"budget": "paper", "budget_config": form, "cells": every}})
    assert "table4 12 of 12," in full and "(not" not in full


def test_two_sweeps_writing_one_file_keep_each_others_cells(tmp_path):
    from benchmarks.sweep import write_merged
    from sim.env import simulator_model

    out, budget = tmp_path / "sweep.json", {"epochs": 3}

    def results(command, methods, budget=budget, simulator=simulator_model()):
        cells = [{"scenario": "grid", "regime": "moderate", "n_agents": 2, "method": m, "test": [{"reward": float(len(m))}]} for m in methods]
        return {"budget_config": budget, "seeds": 2, "episodes": 1, "simulator": simulator, "command": command, "cells": cells, "references": {f"ref-{command}": {}}}

    write_merged(out, results("sweep A", ["reled"]))
    # B started before A wrote, so it does not hold A's cell; its write must keep it, and its own cell wins for a shared key.
    merged = write_merged(out, results("sweep B", ["ippo", "reled"]))
    on_disk = json.loads(out.read_text())
    assert on_disk == merged
    assert sorted(c["method"] for c in on_disk["cells"]) == ["ippo", "reled"]
    assert on_disk["command"] == "sweep A; sweep B" and set(on_disk["references"]) == {"ref-sweep A", "ref-sweep B"}
    write_merged(out, results("sweep A", ["mappo"]))  # A writes again: B's cells survive, commands are not repeated
    on_disk = json.loads(out.read_text())
    assert sorted(c["method"] for c in on_disk["cells"]) == ["ippo", "mappo", "reled"] and on_disk["command"] == "sweep A; sweep B"
    # A sweep under another simulator model (or a file from before models were recorded) is refused and
    # writes nothing: its cells would sit beside cells of other dynamics.
    before = out.read_text()
    other = simulator_model() | {"storage": "one car per edge"}
    with pytest.raises(SystemExit, match="another simulator model.*--tag"):
        write_merged(out, results("sweep D", ["qmix"], simulator=other))
    assert out.read_text() == before
    unrecorded = {k: v for k, v in json.loads(before).items() if k != "simulator"}  # a file from before models were recorded
    out.write_text(json.dumps(unrecorded))
    with pytest.raises(SystemExit, match="unrecorded: made before"):
        write_merged(out, results("sweep D", ["qmix"]))
    assert json.loads(out.read_text()) == unrecorded
    # A file of another budget is replaced, as a fresh sweep replaces it.
    write_merged(out, results("sweep C", ["qmix"], budget={"epochs": 500}))
    assert [c["method"] for c in json.loads(out.read_text())["cells"]] == ["qmix"]


def test_a_qmix_only_sweep_is_keyed_by_the_same_budget_as_the_others():
    """QMIX resolves a budget to its own rollout shape; the results file's key must not follow it, or a sweep of
    QMIX alone replaces the cells the other methods' sweeps wrote to the same file."""
    from benchmarks.sweep import budget_key

    base = SweepConfig(experiment="fig4", budget="paper", scenarios=("oakland",), regimes=("moderate",), n_agents=(4,))
    keys = {m: budget_key(dataclasses.replace(base, methods=(m,))) for m in ("qmix", "ippo", "reled", "mappo")}
    assert keys["qmix"] == keys["ippo"] == keys["reled"] == keys["mappo"]
    assert keys["qmix"]["n_envs"] == 64 and keys["qmix"]["epochs"] == 500  # the paper preset's PPO shape
    assert budget_key(dataclasses.replace(base, budget="small", methods=("qmix",))) != keys["qmix"]  # and budgets still differ


def test_the_setting_gives_a_range_of_interaction_steps_when_maps_differ():
    """Maps make different numbers of decisions per env step: a sweep over two is described by its range, one map by its mean."""
    def sweep(steps):
        return {"budget_config": {"epochs": 500, "n_envs": 64, "rollout_steps": 64}, "seeds": 5, "machine": {"device": "cpu", "n_devices": 1, "cpu_count": 2, "jax": "0"},
                "cells": [{"n_agents": 10, "interaction_steps_per_seed": s} for s in steps]}

    two_maps, one_map = report.setting({"two_maps": sweep([500_000, 1_400_000]), "one_map": sweep([600_000, 700_000])})[2:4]
    assert "500,000–1,400,000 interaction steps with 10 agents, 100%–280% of the paper's" in two_maps
    assert "≈650,000 interaction steps with 10 agents, 130% of the paper's" in one_map


def test_a_partial_cells_pace_is_its_latest_stretch_else_its_average():
    from benchmarks.sweep import RECENT_EPOCHS, recent_pace

    # 30 epochs at 1 s, then 50 at 3 s: the agents learned and each epoch simulates more traffic.
    rows = [{"epoch": e, "wall_s": float(min(e, 30) + 3 * max(e - 30, 0))} for e in range(1, 81)]
    assert RECENT_EPOCHS == 50
    pace, basis = recent_pace(rows, 80, rows[-1]["wall_s"])
    assert pace == pytest.approx(3.0) and basis == "its pace over epochs 31-80"
    assert recent_pace(rows[:20], 20, 20.0)[0] == pytest.approx(1.0)  # fewer epochs than the window: from the start
    assert recent_pace([], 80, 180.0) == (pytest.approx(180.0 / 80), "its own pace")  # an old checkpoint without rows


def test_the_plan_says_what_each_cell_has_and_estimates_the_training_left(tmp_path, capsys, monkeypatch):
    """`--plan` trains nothing: tested cells from the results file, partial ones from their checkpoint's epoch and
    recent pace, foreign checkpoints named, cells not started priced at the mean of this budget's tested cells of their method at
    the nearest agent count, in proportion to the agents."""
    from benchmarks import sweep as sweep_module
    from benchmarks.sweep import budget_key, plan, print_plan
    from reled_jax import checkpoint
    from reled_jax.config import saved_config
    from sim.env import simulator_model

    results = tmp_path / "results"
    results.mkdir()
    cfg = SweepConfig(experiment="table4", budget="small", seeds=2, methods=("reled", "reled-logit", "ippo", "mappo"), scenarios=("oakland",),
                      regimes=("moderate",), n_agents=(4,), runs_dir=str(tmp_path / "runs"), out=str(results / "sweep_table4_small.json"), qmix_keep_buffer=True)
    assert cfg.train_config("oakland", "moderate", 4, "qmix").run.qmix_keep_buffer  # an interrupted QMIX cell can resume

    def cell(method, wall, run, n_agents=4):
        return {"scenario": "oakland", "regime": "moderate", "n_agents": n_agents, "method": method, "train_wall_s": wall, "run_dir": run}

    def sweep_file(name, cells, seeds=2, simulator=simulator_model()):
        (results / name).write_text(json.dumps({"budget_config": budget_key(cfg), "seeds": seeds, "episodes": cfg.episodes, "simulator": simulator, "cells": cells}))

    sweep_file("sweep_table4_small.json", [cell("reled", 30.0, "r")])
    # ippo's pace comes from the other files of these settings; a run two files share counts once, another seed count not at all.
    sweep_file("sweep_fig4_small.json", [cell("ippo", 10.0, "a"), cell("ippo", 20.0, "b")])
    sweep_file("sweep_fig8_small.json", [cell("ippo", 10.0, "a"), cell("ippo", 500.0, "d", n_agents=16)])  # 16 agents: not the nearest count
    sweep_file("sweep_fig4_small_x3.json", [cell("ippo", 1_000.0, "c")], seeds=3)

    def write_checkpoint(method, epoch, wall, rows=(), **flags):
        tcfg = cfg.train_config("oakland", "moderate", 4, method).resolved()
        saved = tcfg.set(**flags)  # as train() saves it: the measured decision share filled in
        tcfg.out_dir.mkdir(parents=True)
        checkpoint.write(tcfg.out_dir / checkpoint.FILENAME, {"config": saved_config(saved), "epoch": epoch, "wall": wall, "rows": list(rows)}, {})

    # The partial cell slowed down: 1 s an epoch, then 3.5; its last two epochs price the 15 left.
    write_checkpoint("reled-logit", 5, 10.0, rows=[{"epoch": e, "wall_s": w} for e, w in enumerate((1.0, 2.0, 3.0, 6.5, 10.0), 1)], decision_share=0.3)
    monkeypatch.setattr(sweep_module, "RECENT_EPOCHS", 2)
    write_checkpoint("mappo", 5, 10.0, lr=1e-3)
    p = plan(cfg)
    rows = {r["cell"].split("/")[-1]: r for r in p["rows"]}
    assert {m: r["state"] for m, r in rows.items()} == {"reled": "tested", "reled-logit": "partial", "ippo": "not started", "mappo": "foreign"}
    assert rows["reled-logit"]["epoch"] == 5 and rows["reled-logit"]["left_s"] == pytest.approx(3.5 * (20 - 5))
    assert "wall" not in rows["reled-logit"]  # a row's times are the time left, not the time spent
    assert rows["ippo"]["left_s"] == pytest.approx(15.0)
    assert rows["mappo"]["left_s"] is None and "another configuration" in rows["mappo"]["basis"]
    assert p["tested"] == 1 and p["unknown"] == 1 and p["left_s"] == pytest.approx(52.5 + 15.0) and not p["other_model"]
    print_plan(cfg, p)
    printed = capsys.readouterr().out
    assert "1 of 4 cells tested" in printed and "trained to epoch 5 of 20" in printed and "1 cell(s) with no estimate" in printed
    # A count with no tested cell of its own: the nearest count's mean, in proportion to the agents.
    wider = dataclasses.replace(cfg, n_agents=(6, 32))
    priced = {r["cell"]: r for r in plan(wider)["rows"] if r["cell"].endswith("/ippo")}
    assert priced["oakland/moderate/a6/ippo"]["left_s"] == pytest.approx(15.0 * 6 / 4) and "at 4 agents, scaled x1.5" in priced["oakland/moderate/a6/ippo"]["basis"]
    assert priced["oakland/moderate/a32/ippo"]["left_s"] == pytest.approx(500.0 * 32 / 16)
    # A cell trained one seed at a time: the started seeds' time left, and a seed not started at their mean.
    apart = dataclasses.replace(cfg, seed_runs="separate", methods=("ippo",))
    seed0, seed1 = (t.resolved() for t in apart.seed_configs("oakland", "moderate", 4, "ippo"))
    assert seed1.out_dir == tmp_path / "runs" / "small" / "oakland-moderate-a4-ippo-x2-separate" / "seed1" and seed1.run.seeds == 1
    for tcfg, epoch, wall in ((seed0, 20, 40.0), (seed1, 10, 30.0)):
        tcfg.out_dir.mkdir(parents=True)
        rows = [{"epoch": e, "wall_s": wall * e / epoch} for e in range(1, epoch + 1)]
        checkpoint.write(tcfg.out_dir / checkpoint.FILENAME, {"config": saved_config(tcfg.set(decision_share=0.3)), "epoch": epoch, "wall": wall, "rows": rows}, {})
        if tcfg is seed0:
            (row,) = plan(apart)["rows"]
            assert row["state"] == "partial" and row["left_s"] == pytest.approx(40.0) and "seed 0 trained; 1 not started" in row["basis"]
    (row,) = plan(apart)["rows"]
    assert row["state"] == "partial" and row["epoch"] == 10 and row["left_s"] == pytest.approx(3.0 * 10) and "seed 1 at epoch 10" in row["basis"]
    print_plan(apart, plan(apart))
    assert "seeds in part trained, separately" in capsys.readouterr().out
    # A file of another simulator model: the plan still reads it, and says this code will not add to it.
    sweep_file("sweep_table4_small.json", [cell("reled", 30.0, "r")], simulator=simulator_model() | {"storage": "one car per edge"})
    assert plan(cfg)["other_model"]


def test_the_flow_map_section_names_the_model_it_was_played_on_and_the_one_the_policy_trained_on(tmp_path):
    from sim.env import describe_model, simulator_model

    base = {"command": "python -m benchmarks.flow_map", "method": "reled", "epoch": 40, "agents": "sampled", "expert": "planner", "episodes": 2,
            "scenario": "hongkong", "regime": "moderate",
            "agreement": {"cosine": 0.9, "roads_expert": 10, "roads_agents": 9, "roads_both": 8, "expert_flow_on_agent_roads": 0.95}}
    other = simulator_model() | {"storage": "one car per edge"}
    for stem, extra in {"fig6_same": {"simulator": simulator_model(), "trained_on": simulator_model()}, "fig6_other": {"simulator": simulator_model(), "trained_on": other},
                        "fig6_old": {}}.items():
        (tmp_path / f"{stem}.json").write_text(json.dumps(base | extra))
    lines, claims = report.section_flow_maps(tmp_path)
    text = "\n".join(lines)
    now = describe_model(simulator_model())
    assert f"simulator model: {now}; the policy trained on the same model)" in text
    assert f"simulator model: {now}; the policy trained on {describe_model(other)})" in text
    assert f"simulator model: {describe_model(None)})" in text  # a file from before the record
    assert len(claims) == 3 and all("| holds |" in c for c in claims)


def test_the_agreement_lesson_ranks_methods_by_agreement_against_reward_and_names_untaught_ones_closer_to_the_expert():
    def run(budget, label, rows):
        methods = {"initial": {"argmax_agreement": [0.5, 0.01], "test_reward": [-2000.0, 10.0]}}
        methods |= {m: {"argmax_agreement": [a, 0.01], "test_reward": [r, 10.0]} for m, (a, r) in rows.items()}
        return {"budget": budget, "label": label, "scenario": "grid", "regime": "moderate", "methods": methods}

    rows = {"reled": (0.70, -1000.0), "ippo": (0.80, -500.0), "qmix": (0.95, 700.0), "reled-va": (0.90, 500.0)}
    [line] = report.agreement_lesson({"a": run("paper", "", rows)})
    assert line.startswith("- **Ending close to the expert goes with a high reward.**") and "Grid (Orlando's stand-in) ρ = 1.00 over 4 methods" in line
    # IPPO and QMIX never see a demonstration and agree more than RELED; RELED-Vᵃ does see them, so it is not named.
    assert "(Grid (Orlando's stand-in): IPPO 0.80, QMIX 0.95 against RELED (full)'s 0.70)" in line
    reversed_rows = {m: (a, -r) for m, (a, r) in rows.items()} | {"reled": (0.99, 1000.0)}
    [line] = report.agreement_lesson({"a": run("paper", "", reversed_rows)})
    assert "does not predict their reward" in line and "ρ = 0.20 over 4 methods" in line
    assert "never saw a demonstration" not in line  # RELED now agrees most
    # Only the plain paper-budget runs with at least three trained methods speak.
    assert report.agreement_lesson({"a": run("small", "", rows), "b": run("paper", "a variant", rows),
                                    "c": run("paper", "", {"reled": (0.7, 1.0), "ippo": (0.8, 2.0)})}) == []


def test_the_qmix_window_lesson_sets_each_counts_reach_beside_qmixs_test_arrival():
    def qmix(n, rewards, arrivals):
        return {"method": "qmix", "n_agents": n, "test": [{"reward": r, "arrival_rate": a} for r, a in zip(rewards, arrivals)]}

    fig8 = {"budget": "paper", "experiment": "fig8", "cells": [qmix(100, [30.0, 40.0], [0.61, 0.68]), qmix(10, [1000.0, 1000.0], [1.0, 1.0]),
                                                              {"method": "ippo", "n_agents": 20, "test": [{"reward": 5.0, "arrival_rate": 0.5}] * 2}]}
    small = {"budget": "small", "experiment": "fig8", "cells": [qmix(20, [1.0, 1.0], [0.3, 0.3])]}
    window = {"rollout_steps": 864, "cells": [
        {"n_agents": 10, "policy": "random", "t_max": 2400, "ended_share": 1.0, "clock_mean_s": 2400.0},
        {"n_agents": 10, "policy": "shortest", "t_max": 2400, "ended_share": 1.0, "clock_mean_s": 420.0},
        {"n_agents": 100, "policy": "random", "t_max": 2400, "ended_share": 0.0, "clock_mean_s": 881.4},
        {"n_agents": 100, "policy": "shortest", "t_max": 2400, "ended_share": 1.0, "clock_mean_s": 707.0}]}
    [line] = report.qmix_window_lesson({"sweep_fig8_paper": fig8, "sweep_fig8_small": small}, window)
    assert "one environment × 864 interaction steps" in line
    assert "reaches the episode's end within those steps at 10 agents; it reaches 881 s at 100 of T_max = 2,400 s" in line
    assert "the shortest-time policy ends every episode" in line
    # QMIX's paper-budget cells only, by agent count: the greedy mean and the seeds' arrival range.
    assert "agent count: 10: 1,000 at 100 % arrival; 100: 35 at 61–68 % arrival." in line
    window["cells"][3]["ended_share"] = 0.8
    assert "ends not every episode" in report.qmix_window_lesson({"a": fig8}, window)[0]
    # Nothing to say without the window measurement or a paper-budget QMIX cell.
    assert report.qmix_window_lesson({"a": fig8}, None) == [] and report.qmix_window_lesson({"b": small}, window) == []


@pytest.mark.slow
def test_a_cell_trained_one_seed_at_a_time_matches_its_seeds_trained_together(tmp_path):
    """--seed-runs separate: each seed in a run of its own on the cell's scenario, one after another, for cells whose
    seeds do not fit memory together. With the update's row count fixed (the smoke preset's one branch) the seeds
    learn what they learn vmapped together, to float rounding, and the cell is tested the same way."""
    from benchmarks.sweep import plan

    cfg = SweepConfig(experiment="fig8", budget="smoke", seeds=2, methods=("ippo",), scenarios=("oakland",), regimes=("moderate",), n_agents=(4,),
                      episodes=3, max_steps=300, runs_dir=str(tmp_path / "runs"), out=str(tmp_path / "joint.json"))
    joint = sweep(cfg)["cells"][0]
    apart = dataclasses.replace(cfg, seed_runs="separate", out=str(tmp_path / "separate.json"))
    result = sweep(apart)
    cell = result["cells"][0]
    base = tmp_path / "runs" / "smoke" / "oakland-moderate-a4-ippo-x2-separate"
    assert cell["seed_runs"] == "separate" and cell["run_dir"] == str(base) and "--seed-runs separate" in result["command"]
    for k in range(2):  # seed k alone, on the scenario of seed 0 (the cell's), not seed k's own
        saved = json.loads((base / f"seed{k}" / "config.json").read_text())["run"]
        assert (saved["seed"], saved["seeds"], saved["scenario_seed"]) == (k, 1, 0)
    assert cell["train_wall_s"] == pytest.approx(sum(cell["train_wall_s_per_seed"])) and len(cell["train_wall_s_per_seed"]) == 2
    assert cell["interaction_steps_per_seed"] == joint["interaction_steps_per_seed"]
    for name in ("episode_reward", "travel_time", "entropy", "interaction_steps"):
        np.testing.assert_allclose(cell["curves"][name], joint["curves"][name], rtol=1e-3, err_msg=name)
    for mode in ("test", "test_sampled"):
        np.testing.assert_allclose([t["reward"] for t in cell[mode]], [t["reward"] for t in joint[mode]], rtol=1e-3, err_msg=mode)
    assert len({t["reward"] for t in cell["test"]}) == 2  # two seeds, two policies: not one seed's twice
    # A seed's run read on its own (evaluate, and the flow map, render and SUMO validation through run_identity)
    # plays the scenario it trained on, the cell's, not that of its own seed.
    alone = evaluate(EvalConfig(checkpoint=str(base / "seed1" / "checkpoint.npz"), episodes=3, max_steps=300, seed=cfg.eval_seed))
    (trained,) = [v for k, v in alone.items() if k.startswith("ippo")]
    assert trained["reward_per_agent"][0] == pytest.approx(cell["test"][1]["reward"], rel=1e-5)
    # Finished, the cell is reused: nothing retrains, and the plan counts it tested.
    mtime = (base / "seed1" / "checkpoint.npz").stat().st_mtime_ns
    assert json.dumps(sweep(apart)["cells"]) == json.dumps(result["cells"])
    assert (base / "seed1" / "checkpoint.npz").stat().st_mtime_ns == mtime
    assert [r["state"] for r in plan(apart)["rows"]] == ["tested"]


def test_the_old_model_patch_applies_to_its_base_commit(tmp_path):
    """docs/experiments.md trains the paper-budget cells whose seeds do not fit memory together on the old model:
    99de60a plus benchmarks/old_model_separate_seeds.patch (the planner fix and `--seed-runs separate` backported).
    A clone carries no branch of that checkout, so the patch is the record: it must apply to 99de60a and give it the
    option and `train --scenario-seed`."""
    repo = Path(__file__).resolve().parents[1]
    patch = repo / "benchmarks" / "old_model_separate_seeds.patch"
    if subprocess.run(["git", "-C", str(repo), "cat-file", "-e", "99de60a^{commit}"], capture_output=True).returncode != 0:
        pytest.skip("no git history here (a shallow clone or a source archive)")
    touched = sorted({line.split(" b/")[1] for line in patch.read_text().splitlines() if line.startswith("diff --git ")})
    tar = tmp_path / "base.tar"
    subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", "-o", str(tar), "99de60a", "--", *touched], check=True)
    base = tmp_path / "base"
    with tarfile.open(tar) as t:
        t.extractall(base, filter="data")
    assert "seed_runs" not in (base / "benchmarks" / "sweep.py").read_text()
    applied = subprocess.run(["git", "apply", str(patch)], cwd=base, capture_output=True, text=True)
    assert applied.returncode == 0, applied.stderr
    sweep_py, config_py = (base / "benchmarks" / "sweep.py").read_text(), (base / "reled_jax" / "config.py").read_text()
    assert 'seed_runs: str = "joint"' in sweep_py and "def seed_configs" in sweep_py and "scenario_seed" in config_py
