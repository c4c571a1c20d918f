"""The method registry is the one place a method's name is decoded: every consumer agrees with it."""

import pytest

from benchmarks import report, sweep
from reled_jax.methods import EXPERT_FREE, METHODS, PAPER_BASELINES, PAPER_RELED, VA_RELED, method
from reled_jax.reled import HybridPPOConfig
from reled_jax.train import TrainConfig


def test_every_method_is_decoded_from_its_registry_entry_alone():
    for name, m in METHODS.items():
        hpo, run = HybridPPOConfig(method=name), TrainConfig(method=name).resolved()
        assert hpo.uses_expert == (name not in EXPERT_FREE) == m.uses_expert
        assert hpo.centralised_critic == (name == "mappo")
        assert hpo.fixed_alpha == (1.0 if not m.uses_expert else m.fixed_alpha)
        assert hpo.expert_advantage_baseline == ("agent" if name in VA_RELED else "expert")
        if m.uses_expert:
            assert run.expert.backend == m.expert
        assert (report.LABELS[name], report.COLOURS[name]) == (m.label, m.colour)
    assert [METHODS[n].fixed_alpha for n in PAPER_RELED] == [None, None, 0.2, 0.5, None]
    assert [METHODS[n].refine for n in VA_RELED] == [True, False, True, True, True]
    assert sweep.EXPERIMENTS["fig4"]["methods"][:4] == PAPER_BASELINES and sweep.EXPERIMENTS["table4"]["methods"] == (*PAPER_RELED, "ippo")
    assert len({m.label for m in METHODS.values()}) == len(METHODS)  # no two methods share a table row name


def test_an_unknown_method_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="unknown method 'reled-x'; choose one of .*'reled-va-logit'"):
        method("reled-x")
    with pytest.raises(SystemExit, match="unknown method 'reled-x'"):
        TrainConfig(method="reled-x").resolved()
