"""The training configuration: one nested tree, every default declared once, every field a flag.

    TrainConfig
    ├── env      ScenarioChoice   scenario, regime, n_agents                      (sim.scenarios)
    ├── method   str              reled | ippo | ... (reled_jax.methods decides what it switches)
    ├── ppo      HybridPPOConfig  budget, PPO, RELED's hybrid objective, speed     (reled_jax.reled)
    ├── sed      SEDConfig        expert refreshes: q, m, demonstrations            (reled_jax.sed)
    ├── qmix     QMixConfig       QMIX's own fields; its budget is ppo's            (reled_jax.qmix)
    ├── expert   ExpertConfig     backend, LLM endpoint, sandbox, isolation         (llm.service)
    ├── cluster  ClusterConfig    several hosts as one device mesh                  (reled_jax.cluster)
    └── run      RunConfig        seeds, preset, output, resume, progress, closing test

The groups are the algorithm modules' own dataclasses, so a default exists in one place only. On the
command line (tyro) the flags of `env`, `ppo`, `sed` and `run` keep their short names (`--epochs`,
`--q`, `--seed`); the others carry their group (`--qmix.buffer-size`, `--expert.backend`,
`--cluster.enabled`). A field's *flag name* is that flag without dashes: `epochs`, `qmix.buffer_size`,
`expert.llm.base_url`. Presets, `explicit`, `TrainConfig.of(...)` and `TrainConfig.set(...)` speak flag
names; a run directory's `config.json` and a TOML `--config` file are the nested tree (`[ppo]`, `[sed]`,
...), and a flat file of flag names (the layout before the tree) reads the same.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any

import tyro

from llm.client import LLMConfig, LLMError
from llm.service import ExpertConfig
from reled_jax.cluster import ClusterConfig
from reled_jax.evaluate import TEST_SEED
from reled_jax.methods import METHODS, method
from reled_jax.qmix import SHARED_WITH_PPO, QMixConfig
from reled_jax.reled import HybridPPOConfig
from reled_jax.sed import SEDConfig
from sim.scenarios import ScenarioChoice

PRESETS = {
    # Finishes on a 2-core CPU in a few minutes and visibly learns.
    "default": {},
    # Paper IV-A2: 500 epochs x 1,000 interaction steps. 64 environments in lockstep, carried from epoch
    # to epoch. 32 env steps made ~1,000 decisions an epoch of the first (random) policy on hongkong with
    # 10 agents, but a learned policy decides about half as often: 500 epochs x 32 steps made 240-257 k
    # interaction steps (benchmarks/results/train_throughput.json); 64 steps made 315 k in 203 s
    # (train_throughput_paper64.json), nearer the paper's 5 x 10^5 but not there: the count follows the
    # policy, and a fixed count needs a rollout that stops at a number of decisions (not built).
    # One environment x 864 steps of its own was ~13x slower.
    # PPO's epochs and minibatches are not in the paper: 4 x 2 give minibatches of ~50-100 decisions per
    # agent. benchmarks/train_throughput.py measures this preset.
    "paper": {"epochs": 500, "n_envs": 64, "rollout_steps": 64, "n_demo_envs": 1, "lockstep": True, "carry_envs": True,
              "update_epochs": 4, "n_minibatches": 2},
    # The paper budget as first run here: one environment of its own x 864 steps, fresh every epoch, 8 x 8 updates.
    "paper-1env": {"epochs": 500, "n_envs": 1, "rollout_steps": 864, "n_demo_envs": 1},
    # Seconds, for tests and smoke checks.
    "smoke": {"epochs": 4, "n_envs": 2, "rollout_steps": 32, "decision_share": 1.0},  # no probe, one update branch
}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The run: its seeds, budget preset, output directory, progress and closing test."""

    seed: int = 0
    seeds: int = 1  # seeds seed, seed+1, ... vmapped in one program
    # The scenario's own seed (its origin-destination pairs) and the decision-share probe's; unset: --seed. Set it
    # to train one seed of a group on the group's scenario: `--seed 3 --seeds 1 --scenario-seed 0` is seed 3 of
    # `--seed 0 --seeds 5` in a run of its own (the sweep's --seed-runs separate).
    scenario_seed: int | None = None
    preset: str = "default"  # default | paper | paper-1env | smoke (sets the budget fields you leave unset)
    out: str = ""  # default runs/<scenario's name>-<regime>-<method>-s<seed>
    resume: bool = False
    # auto: the bar moves after every epoch when it is shown on a terminal, after every compiled chunk otherwise.
    # A per-epoch host callback keeps JAX's persistent compilation cache from storing the chunk (tests rely on it).
    progress: str = "auto"  # auto | epoch | chunk
    test_episodes: int = 10  # the CLI ends with this many test episodes per policy on one set of keys (0: none)
    test_seed: int = TEST_SEED  # their keys (the sweep's and evaluate's)
    shard_seeds: bool = True  # split the seed axis across all visible devices when they divide it
    # QMIX only: checkpoints hold the replay buffer (~150 MB at the default size), so an unfinished run can
    # resume to the same result. Off: checkpoints hold the networks only, and only a finished run resumes.
    qmix_keep_buffer: bool = False


# Groups whose flags keep their short names (tyro omits the group's prefix).
SHORT_FLAG_GROUPS = ("env", "ppo", "sed", "run")
# Fields that decide nothing about a run's result: where it is written, whether it resumes, how it shows progress.
NOT_RESULT = frozenset({"out", "resume", "shard_seeds", "progress", "test_episodes", "test_seed", "qmix_keep_buffer", "preset"})
NOT_RESULT_GROUPS = ("cluster",)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    env: Annotated[ScenarioChoice, tyro.conf.OmitArgPrefixes] = ScenarioChoice()
    method: str = "reled"  # reled | reled-norefine | reled-alpha0.2 | reled-alpha0.5 | reled-logit | reled-va (and -norefine, -alpha0.2, -alpha0.5, -logit) | ippo | mappo | qmix
    ppo: Annotated[HybridPPOConfig, tyro.conf.OmitArgPrefixes] = HybridPPOConfig()
    sed: Annotated[SEDConfig, tyro.conf.OmitArgPrefixes] = SEDConfig()
    qmix: QMixConfig = QMixConfig()
    expert: ExpertConfig = ExpertConfig()
    cluster: ClusterConfig = ClusterConfig()
    run: Annotated[RunConfig, tyro.conf.OmitArgPrefixes] = RunConfig()
    # Flag names the user set (the CLI fills it from the command line and --config): the preset never
    # overrides them, even where they equal the default (`--preset paper --epochs 40` trains 40 epochs).
    # Cleared once resolved.
    explicit: tyro.conf.Suppress[tuple[str, ...]] = ()

    @classmethod
    def of(cls, **flags) -> TrainConfig:
        """A configuration from flag names (`TrainConfig.of(scenario="grid", epochs=3, **{"qmix.buffer_size": 64})`);
        the fields named count as given, so a preset does not override them."""
        return cls().set(**flags)

    def set(self, **flags) -> TrainConfig:
        """This configuration with the fields of these flag names replaced (and counted as given)."""
        cfg = self
        for name, value in flags.items():
            try:
                cfg = _replace_path(cfg, _path(name), value)
            except ValueError as err:  # a group's own check (HybridPPOConfig, ExpertConfig): a one-line exit like the CLI's
                raise SystemExit(str(err)) from None
        return dataclasses.replace(cfg, explicit=tuple(dict.fromkeys((*self.explicit, *flags))))

    def get(self, name: str) -> Any:
        """The value of a field by its flag name."""
        value = self
        for part in _path(name):
            value = getattr(value, part)
        return value

    def flags(self) -> dict[str, Any]:
        """Every settable field by its flag name (nested dataclasses flattened)."""
        return {name: self.get(name) for name in FLAG_PATHS}

    def resolved(self) -> TrainConfig:
        """The preset applied (to fields left at their defaults and not given), the method's switches set,
        the LLM endpoint completed from the environment, and every choice checked (a one-line exit)."""
        run = self.run
        if run.preset not in PRESETS:
            raise SystemExit(f"unknown preset {run.preset!r}; choose one of {sorted(PRESETS)}")
        if self.method not in METHODS:
            raise SystemExit(f"unknown method {self.method!r}; choose one of {tuple(METHODS)}")
        spec = method(self.method)
        env = self.env.check_scenario()  # the scenario's agent count where none is given
        preset = PRESETS[run.preset]
        if spec.trainer == "qmix" and preset.get("carry_envs"):
            # QMIX's rollouts start from fresh resets every epoch: its paper budget is one environment x 864 steps.
            preset = PRESETS[f"{run.preset}-1env"]
        defaults = TrainConfig()
        cfg = self
        for name, value in preset.items():
            if name not in self.explicit and self.get(name) == defaults.get(name):
                cfg = _replace_path(cfg, _path(name), value)
        cfg = dataclasses.replace(cfg, explicit=(), env=env, ppo=dataclasses.replace(cfg.ppo, method=self.method),
                                  sed=dataclasses.replace(cfg.sed, refine=spec.refine))
        if spec.expert not in (None, "planner"):  # the method fixes its expert (reled-logit: the Logit model)
            cfg = dataclasses.replace(cfg, expert=dataclasses.replace(cfg.expert, backend=spec.expert))
        if cfg.expert.backend == "llm":
            # Flags win; RELED_LLM_BASE_URL / RELED_LLM_MODEL / RELED_LLM_API_KEY fill what they leave empty.
            llm, env = cfg.expert.llm, LLMConfig.from_env()
            llm = dataclasses.replace(llm, base_url=llm.base_url or env.base_url, model=llm.model or env.model, api_key=llm.api_key or env.api_key)
            try:
                llm.check()
            except LLMError as err:
                raise SystemExit(str(err)) from None
            cfg = dataclasses.replace(cfg, expert=dataclasses.replace(cfg.expert, llm=llm))
        ppo, sed = cfg.ppo, cfg.sed
        if spec.trainer == "qmix" and (ppo.lockstep or ppo.carry_envs):
            raise SystemExit("--lockstep and --carry-envs are PPO-family options; QMIX rolls out with vmap(step) and fresh resets")
        if ppo.stagger_steps and not ppo.carry_envs:
            raise SystemExit(f"--stagger-steps {ppo.stagger_steps} needs --carry-envs (without it every epoch starts all environments from fresh resets)")
        if cfg.run.test_episodes < 0:
            raise SystemExit(f"--test-episodes must be >= 0 (0: no closing test), got {cfg.run.test_episodes}")
        if cfg.run.progress not in ("auto", "epoch", "chunk"):
            raise SystemExit(f"unknown --progress {cfg.run.progress!r}; choose auto, epoch or chunk")
        counts = ("n_agents", "epochs", "n_envs", "rollout_steps", "q", "m", "n_demo_envs", "demo_steps", "seeds", "update_epochs", "n_minibatches",
                  "qmix.updates_per_epoch", "qmix.target_every")
        bad = [f"--{k.replace('_', '-')} {cfg.get(k)}" for k in counts if cfg.get(k) < 1]
        if bad:
            raise SystemExit(f"{', '.join(bad)}: counts must be at least 1")
        if sed.m > cfg.env.n_agents:
            raise SystemExit(f"--m {sed.m} agent subsets for {cfg.env.n_agents} agents: need 1 <= m <= n_agents")
        if not (ppo.lr > 0 and ppo.entropy_coef >= 0):
            raise SystemExit(f"--lr must be positive and --entropy-coef not negative (got {ppo.lr:g}, {ppo.entropy_coef:g})")
        for path in (cfg.out_dir, *cfg.out_dir.parents):
            if path.exists() and not path.is_dir():
                raise SystemExit(f"--out {cfg.out_dir}: {path} is a file, not a directory; choose another --out")
        return cfg

    @property
    def spec(self):
        """What the method is (reled_jax/methods.py)."""
        return method(self.method)

    @property
    def scenario_seed(self) -> int:
        """The seed the scenario is built with (`load_scenario`): --scenario-seed, else --seed."""
        return self.run.seed if self.run.scenario_seed is None else self.run.scenario_seed

    @property
    def out_dir(self) -> Path:
        return Path(self.run.out or f"runs/{self.env.scenario_name}-{self.env.regime}-{self.method}-s{self.run.seed}")

    def ppo_config(self) -> HybridPPOConfig:
        """The PPO family's configuration of this method (`make_epoch`)."""
        return dataclasses.replace(self.ppo, method=self.method)

    def sed_config(self) -> SEDConfig:
        return dataclasses.replace(self.sed, refine=self.spec.refine)

    def qmix_config(self) -> QMixConfig:
        """QMIX with the PPO methods' budget (epochs, environments, steps), learning rate, gamma, clipping and
        reward scale, and its own fields from the qmix group."""
        per_epoch = self.ppo.n_envs * self.ppo.rollout_steps  # small budgets (smoke) sample smaller batches
        shared = {name: getattr(self.ppo, name) for name in SHARED_WITH_PPO}
        return dataclasses.replace(self.qmix, **shared, batch_size=min(self.qmix.batch_size, per_epoch))


# ---- flag names <-> paths in the tree ------------------------------------------------------------------------


def _flag_paths(cls, prefix: tuple[str, ...] = (), flag: str = "") -> dict[str, tuple[str, ...]]:
    """Every settable leaf field of `cls` by flag name -> its path (tyro's suppressed fields are not flags)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    paths = {}
    for f in dataclasses.fields(cls):
        args = typing.get_args(hints[f.name]) if typing.get_origin(hints[f.name]) is Annotated else ()
        if tyro.conf.Suppress in args:
            continue
        if dataclasses.is_dataclass(f.default):
            short = cls is TrainConfig and f.name in SHORT_FLAG_GROUPS
            paths |= _flag_paths(type(f.default), (*prefix, f.name), flag if short else f"{flag}{f.name}.")
        else:
            paths[flag + f.name] = (*prefix, f.name)
    return paths


FLAG_PATHS: dict[str, tuple[str, ...]] = _flag_paths(TrainConfig)
# Leaves that are not flags: ppo.method and sed.refine (the method decides them), QMIX's budget (the PPO group's).
DERIVED_PATHS = frozenset({("ppo", "method"), ("sed", "refine"), *(("qmix", name) for name in SHARED_WITH_PPO)})
FLAG_ALIASES = {"refresh_every": "q", "subsets": "m"}  # descriptive names of the paper-symbol flags


def _path(name: str) -> tuple[str, ...]:
    name = FLAG_ALIASES.get(name, name)
    if name not in FLAG_PATHS:
        raise SystemExit(f"unknown configuration field {name!r}; `python -m reled_jax.train --help` lists them")
    return FLAG_PATHS[name]


def _replace_path(obj, path: tuple[str, ...], value):
    if len(path) == 1:
        return dataclasses.replace(obj, **{path[0]: value})
    return dataclasses.replace(obj, **{path[0]: _replace_path(getattr(obj, path[0]), path[1:], value)})


def flags_given(argv: list[str]) -> tuple[str, ...]:
    """The flag names `argv` sets (`--n-envs 8`, `--n_envs=8`, `--lockstep`, `--no-lockstep`, `--refresh-every 5`
    for q, `--qmix.buffer-size 64`)."""
    given = []
    for arg in argv:
        if arg.startswith("--"):
            name = arg.split("=", 1)[0][2:].replace("-", "_")
            # tyro spells a boolean's off switch --no-NAME, or --GROUP.no-NAME
            for candidate in (name, name.removeprefix("no_"), ".".join((*name.split(".")[:-1], name.split(".")[-1].removeprefix("no_")))):
                candidate = FLAG_ALIASES.get(candidate, candidate)
                if candidate in FLAG_PATHS:
                    given.append(candidate)
                    break
    return tuple(dict.fromkeys(given))


# ---- saving and reading configurations ----------------------------------------------------------------------

CONFIG_FILE = "config.json"  # in every run directory: `python -m reled_jax.train --config runs/NAME/config.json --out ...` reruns it


def saved_config(cfg: TrainConfig) -> dict:
    """The resolved configuration as a run directory and its checkpoint keep it: the nested tree as tables,
    never an API key (a resumed or rerun LLM run takes it from the flags or the environment again)."""
    data = dataclasses.asdict(without_api_key(cfg))
    data.pop("explicit", None)
    return data


def without_api_key(cfg: TrainConfig) -> TrainConfig:
    """The configuration with its LLM API key blanked: the one form in which a configuration is kept or compared."""
    return _replace_path(cfg, FLAG_PATHS["expert.llm.api_key"], "")


def write_config(path: Path, cfg: TrainConfig) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(saved_config(cfg), indent=1))
    os.replace(tmp, path)


def read_config(path: str | Path) -> TrainConfig:
    """A TrainConfig from a JSON file (a run directory's config.json) or a TOML file: the nested tree
    (`[ppo]`, `[sed]`, `[expert.llm]`, ...) or flag names at the top level (`epochs = 3`, `"qmix.buffer_size" = 64`).
    The fields it sets count as given, like flags. Unknown fields are an error that names them."""
    path = Path(path)
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as err:
        raise SystemExit(f"--config {path}: cannot read it ({type(err).__name__}: {str(err)[:100]}); pass a .json or .toml file") from None
    if not isinstance(data, dict):
        raise SystemExit(f"--config {path}: expected a table of TrainConfig fields, got {type(data).__name__}")
    return config_from_dict(data, f"--config {path}")


def config_from_dict(data: dict, where: str = "configuration") -> TrainConfig:
    """A TrainConfig from a saved configuration: the nested tree, or flag names (a checkpoint written before the
    tree was flat: `scenario`, `epochs`, `qmix_buffer_size`, with `expert` and `cluster` tables). A field it
    lacks takes its default; the fields it names count as given."""
    flags: dict[str, Any] = {}
    by_path = {path: name for name, path in FLAG_PATHS.items()}

    def walk(table: dict, at: tuple[str, ...]) -> None:
        for key, value in table.items():
            path = (*at, key)
            if path in by_path:
                flags[by_path[path]] = tuple(value) if isinstance(value, list) else value
            elif path in DERIVED_PATHS or path == ("explicit",):
                continue  # filled in from other fields (the method's switches, QMIX's budget): saved trees carry them
            elif isinstance(value, dict) and any(p[: len(path)] == path for p in by_path):
                walk(value, path)
            elif not at and (name := _legacy_name(key)) is not None:
                flags[name] = tuple(value) if isinstance(value, list) else value
            else:
                raise SystemExit(f"{where}: unknown field {'.'.join(path)!r}; `python -m reled_jax.train --help` lists them")

    walk(data, ())
    try:
        return TrainConfig.of(**flags)
    except (TypeError, ValueError) as err:
        raise SystemExit(f"{where}: {err}") from None


def _legacy_name(name: str) -> str | None:
    """The flag name of a field of the flat layout (before the tree): itself (`epochs`), or QMIX's `qmix_buffer_size`."""
    name = FLAG_ALIASES.get(name, name)
    if name in FLAG_PATHS:
        return name
    if name.startswith("qmix_") and f"qmix.{name[5:]}" in FLAG_PATHS:
        return f"qmix.{name[5:]}"
    return None


def comparable(config: dict | TrainConfig) -> dict:
    """The fields that decide a run's result (not where it is written, whether it resumes or how it shows
    progress), by flag name. A field a saved configuration lacks (written before the field existed) counts as
    its default; API keys are never kept, so they never count."""
    cfg = config if isinstance(config, TrainConfig) else config_from_dict(config, "checkpoint configuration")
    return {k: v for k, v in saved_flags(cfg).items() if k.split(".")[0] not in NOT_RESULT_GROUPS and k not in NOT_RESULT}


def saved_flags(cfg: TrainConfig) -> dict[str, Any]:
    """`cfg.flags()` as JSON keeps them (tuples as lists), API key blanked."""
    return json.loads(json.dumps(without_api_key(cfg).flags()))
