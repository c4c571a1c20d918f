"""Every training method by name, and the switches that make it what it is: the one place a method's
name is decoded (trainer, CLIs, sweeps and the report all read `METHODS`).

The paper's methods are RELED and Table IV's four ablations of it, and the baselines IPPO, MAPPO and
QMIX (Section V). `reled-va*` are ours, not the paper's: the same five with the expert advantage
measured against the agent's value V^a (uncentred) instead of Eq. 28's V^e; see `reled_jax/reled.py`.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    label: str  # how tables and plots name it
    colour: str  # matplotlib colour in the report's figures
    trainer: str = "hpo"  # "hpo": reled_jax/reled.py's epoch (RELED, IPPO, MAPPO); "qmix": reled_jax/qmix.py
    expert: str | None = "planner"  # the expert service's backend it is trained with; None: no expert
    refine: bool = True  # the expert refines its plans from feedback every q epochs (Section III-C)
    fixed_alpha: float | None = None  # Table IV's fixed alpha (its meaning depends on the alpha reading)
    agent_baseline: bool = False  # A^e = R^e - V^a(o^e), uncentred (ours), instead of Eq. 28's R^e - V^e(o^e)
    centralised_critic: bool = False  # MAPPO: V^a sees the global state beside the agent's observation
    paper_form: str = ""  # the paper's method this one is a form of ("" for itself): reled-va-logit -> reled-logit

    @property
    def uses_expert(self) -> bool:
        return self.expert is not None

    @property
    def in_paper(self) -> bool:
        """One of the paper's methods (our variants are reported apart and never counted as a baseline)."""
        return not self.agent_baseline

    @property
    def variant(self) -> str:
        """Table IV's name of the paper's form of this method."""
        return self.paper_form or self.name


def _paper_reled() -> list[Method]:
    return [
        Method("reled", "RELED (full)", "tab:red"),
        Method("reled-norefine", "RELED w/o refn.", "tab:orange", refine=False),
        Method("reled-alpha0.2", "RELED-α0.2", "tab:brown", fixed_alpha=0.2),
        Method("reled-alpha0.5", "RELED-α0.5", "tab:pink", fixed_alpha=0.5),
        Method("reled-logit", "RELED-Logit", "tab:olive", expert="logit"),
    ]


def _on_agent_baseline(m: Method) -> Method:
    """The same variant with our expert advantage: "reled-alpha0.2" -> "reled-va-alpha0.2"."""
    colour = "darkred" if m.name == "reled" else m.colour
    label = "RELED-Vᵃ (not in paper)" if m.name == "reled" else m.label.replace("RELED", "RELED-Vᵃ")
    return dataclasses.replace(m, name=m.name.replace("reled", "reled-va", 1), label=label, colour=colour, agent_baseline=True, paper_form=m.name)


_ALL = [
    *_paper_reled(),
    *(_on_agent_baseline(m) for m in _paper_reled()),
    Method("ippo", "IPPO", "tab:blue", expert=None),
    Method("mappo", "MAPPO", "tab:green", expert=None, centralised_critic=True),
    Method("qmix", "QMIX", "tab:purple", trainer="qmix", expert=None),
]
METHODS: dict[str, Method] = {m.name: m for m in _ALL}
PAPER_RELED = tuple(m.name for m in _ALL if m.uses_expert and m.in_paper)  # Table IV's variants
VA_RELED = tuple(m.name for m in _ALL if m.agent_baseline)  # the same, on our expert advantage
EXPERT_FREE = tuple(m.name for m in _ALL if not m.uses_expert)
PAPER_BASELINES = ("reled", "ippo", "mappo", "qmix")  # Fig. 4 and Fig. 8's methods


def method(name: str) -> Method:
    """The method called `name`, or a clear error listing the choices."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {tuple(METHODS)}")
    return METHODS[name]
