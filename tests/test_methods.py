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


def test_every_algorithm_field_is_declared_once_and_reaches_the_command_line():
    """The algorithm configs declare each default once; TrainConfig (the CLI) takes every one of their fields
    under the same name (QMIX's as qmix_<name>) with the same default, and hands a changed value on to them."""
    import dataclasses

    from reled_jax.qmix import QMixConfig
    from reled_jax.sed import SEDConfig

    train_fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    given_by_method = {"refine"}  # reled_jax/methods.py decides it, not a flag
    qmix_shares = ("epochs", "n_envs", "rollout_steps", "lr", "gamma", "max_grad_norm", "reward_scale")  # the PPO methods' budget and knobs
    configs = {HybridPPOConfig: "", SEDConfig: "", QMixConfig: "qmix_"}
    for cls, prefix in configs.items():
        for f in dataclasses.fields(cls):
            if f.name in given_by_method:
                continue
            name = f.name if not prefix or f.name in qmix_shares else prefix + f.name
            assert name in train_fields, f"{cls.__name__}.{f.name} cannot be set from the command line"
            assert train_fields[name] == f.default, f"TrainConfig.{name} = {train_fields[name]!r} but {cls.__name__}.{f.name} = {f.default!r}"
    # Same-named fields of any two configs agree (the pre-issue-19 trees had n_envs 8 against 16, and more).
    seen: dict[str, tuple[str, object]] = {}
    for cls in configs:
        for f in dataclasses.fields(cls):
            if f.name in seen:
                assert seen[f.name][1] == f.default, f"{f.name}: {seen[f.name][0]} says {seen[f.name][1]!r}, {cls.__name__} {f.default!r}"
            seen[f.name] = (cls.__name__, f.default)
    # A changed value reaches the config that uses it.
    changed = TrainConfig(method="qmix", gamma=0.9, clip_eps=0.3, n_demo_envs=3, q=4, dtw_scale_m=150.0, expert_baseline="agent",
                          qmix_buffer_size=1000, qmix_mixer_embed=8, n_envs=2, rollout_steps=10, qmix_batch_size=512)
    ppo, sed, q = changed.ppo_config(), changed.sed_config(), changed.qmix_config()
    assert (ppo.gamma, ppo.clip_eps, ppo.dtw_scale_m, ppo.expert_baseline, ppo.n_envs) == (0.9, 0.3, 150.0, "agent", 2)
    assert (sed.n_demo_envs, sed.q, sed.refine) == (3, 4, True)
    assert (q.gamma, q.buffer_size, q.mixer_embed, q.batch_size) == (0.9, 1000, 8, 20)  # one epoch's 2 x 10 transitions caps the batch
    assert TrainConfig(method="reled-norefine").sed_config().refine is False
