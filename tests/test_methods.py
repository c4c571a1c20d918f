"""The method registry is the one place a method's name is decoded: every consumer agrees with it."""

import pytest

from benchmarks import report, sweep
from reled_jax.methods import EXPERT_FREE, METHODS, PAPER_BASELINES, PAPER_RELED, VA_RELED, method
from reled_jax.reled import HybridPPOConfig
from reled_jax.train import TrainConfig


def test_every_method_is_decoded_from_its_registry_entry_alone():
    for name, m in METHODS.items():
        hpo, run = HybridPPOConfig(method=name), TrainConfig.of(method=name).resolved()
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
        TrainConfig.of(method="reled-x").resolved()


def test_the_config_tree_declares_every_default_once_and_every_field_reaches_the_command_line():
    """TrainConfig's groups are the algorithm modules' own dataclasses (nothing re-declares their fields); every
    leaf of the tree is a flag or is derived from one; QMIX's shared budget is the PPO group's; and a changed
    flag arrives in the config that uses it."""
    import dataclasses

    import tyro

    from llm.service import ExpertConfig
    from reled_jax.config import DERIVED_PATHS, FLAG_PATHS
    from reled_jax.qmix import SHARED_WITH_PPO, QMixConfig
    from reled_jax.sed import SEDConfig

    groups = {f.name: type(f.default) for f in dataclasses.fields(TrainConfig) if dataclasses.is_dataclass(f.default)}
    assert (groups["ppo"], groups["sed"], groups["qmix"], groups["expert"]) == (HybridPPOConfig, SEDConfig, QMixConfig, ExpertConfig)

    def leaves(obj, at=()):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            yield from leaves(value, (*at, f.name)) if dataclasses.is_dataclass(value) else [(*at, f.name)]

    assert set(leaves(TrainConfig())) - {("explicit",)} == set(FLAG_PATHS.values()) | DERIVED_PATHS
    assert not set(FLAG_PATHS.values()) & DERIVED_PATHS
    for name in SHARED_WITH_PPO:  # declared once: QMIX's defaults are HybridPPOConfig's
        assert getattr(QMixConfig(), name) == getattr(HybridPPOConfig(), name), name
    # A changed value reaches the config that uses it, through the command line.
    argv = ["--method", "qmix", "--gamma", "0.9", "--clip-eps", "0.3", "--n-demo-envs", "3", "--refresh-every", "4", "--dtw-scale-m", "150",
            "--expert-baseline", "agent", "--qmix.buffer-size", "1000", "--qmix.mixer-embed", "8", "--n-envs", "2", "--rollout-steps", "10",
            "--qmix.batch-size", "512", "--scenario", "grid", "--seeds", "3"]
    changed = tyro.cli(TrainConfig, args=argv)
    ppo, sed, q = changed.ppo_config(), changed.sed_config(), changed.qmix_config()
    assert (ppo.gamma, ppo.clip_eps, ppo.dtw_scale_m, ppo.expert_baseline, ppo.n_envs, ppo.method) == (0.9, 0.3, 150.0, "agent", 2, "qmix")
    assert (sed.n_demo_envs, sed.q, sed.refine) == (3, 4, True)
    assert (q.gamma, q.buffer_size, q.mixer_embed, q.batch_size, q.n_envs) == (0.9, 1000, 8, 20, 2)  # one epoch's 2 x 10 transitions caps the batch
    assert (changed.env.scenario, changed.run.seeds) == ("grid", 3)
    assert TrainConfig.of(method="reled-norefine").sed_config().refine is False
    assert TrainConfig.of(method="reled-norefine").resolved().sed.refine is False
