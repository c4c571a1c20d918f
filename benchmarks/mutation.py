"""Mutation testing of the method's core: which one-line bugs do the tests catch?

    make mutation                                    # every scoped module (hours on 2 CPU cores)
    python -m benchmarks.mutation --modules reled_jax/dtw.py llm/client.py
    python -m benchmarks.mutation --rerun survivors  # after adding tests: re-test only what survived
    python -m benchmarks.mutation --rerun none       # rewrite the report from the last verdicts
    python -m benchmarks.mutation --sample 60        # a seeded random 60 mutants per module (+ every
                                                     # mutant of the groups below): a score with a 95 % interval

A mutant is the code with one small change (an operator, a constant, a comparison, an
argument dropped or set to None, ...); the tests *kill* it when at least one fails. The score of
a module is (killed + timed out) / (mutants - equivalent), where equivalent mutants are the ones
that cannot change any observable behaviour, each listed below (EQUIVALENT) with the reason.

Tool: mutmut 3 (PyPI). It writes every mutant of a function into one copy of the code behind a
switch, and runs each mutant's covering tests (found by one statistics run) in a child process
forked from a server that has imported only third-party modules (pyproject's [tool.mutmut]). So
every child imports the project, traces and compiles its JAX programs anew, and a program traced
under another mutant can never hide this one. pytest-gremlins runs mutants in subprocesses too
but has no mutation of `&`, `|`, `~`, unary minus, constants or call arguments, the operators
JAX code lives on; cosmic-ray reruns the whole test command per mutant.

Speed, without weakening a verdict: JAX's persistent compilation cache (a program that a mutant
changed hashes differently, so it is always compiled anew), XLA with most optimisations off
(JAX_DISABLE_MOST_OPTIMIZATIONS), the covering tests fastest first (benchmarks/mutation_order.py),
and tests marked `slow` (training runs, sweeps, multi-process runs) left out: the score is what
the fast tests alone catch, a lower bound on the suite's.

Writes benchmarks/results/mutation.json (per module: mutants, killed, survived, timed out,
equivalent, score, every survivor with its diff, every equivalent mutant with its reason) and
mutation.png.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import tyro
from benchmarks.common import machine

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT / "mutants"

# The functions that carry the method, per module (issue 15). "Class.method" or "function"; a
# function's nested closures (the jitted epoch's rollout, update, ...) are mutated with it.
SCOPE: dict[str, tuple[str, ...]] = {
    "sim/env.py": (
        "RouteChoiceEnv.step", "RouteChoiceEnv.step_env", "RouteChoiceEnv.step_batch", "RouteChoiceEnv._consume_actions",
        "RouteChoiceEnv._ticking", "RouteChoiceEnv._finish_step", "RouteChoiceEnv.tick", "edge_speed",
        "RouteChoiceEnv._settle_rewards", "RouteChoiceEnv._truncation_reward", "eq32_reward",
    ),
    "reled_jax/reled.py": (
        "decision_returns", "masked_mean", "clipped_surrogate", "entropy", "dtw_alpha", "hybrid_alpha", "agent_loss",
        "policy_apply", "make_epoch", "agent_rows", "trajectory_points", "episode_in_progress", "_append_path",
        "update_capacities", "decision_rows", "take_rows", "compact_rows", "rollout_statistics", "_episode_sums",
        "make_optimizer", "_moments", "minibatch_stats", "expert_share", "block_trips", "blockwise",
    ),
    "reled_jax/qmix.py": ("_q_values", "td_target", "qmix_loss", "make_update", "make_epoch", "epsilon"),
    "reled_jax/sed.py": ("SED.refresh", "partition_agents", "expert_samples", "_own_subset"),
    "reled_jax/dtw.py": ("dtw", "dtw_batch"),
    "llm/compile.py": ("compile_plans", "expert_actions", "_live_shortest_time_slot"),
    "llm/feedback.py": (
        "external_step_rewards", "volatility_threshold", "build_feedback", "agent_routes", "_as_numpy", "_route",
        "_summary", "_edge_end", "_text", "merge_feedback",
    ),
    "llm/service.py": (
        "ExpertService.plan", "ExpertService._absorb", "ExpertService.compiled_current",
        "ExpertService.state_dict", "ExpertService.load_state_dict",
    ),
    "llm/client.py": ("ChatClient.complete", "ChatClient.complete_many", "ChatClient._payload", "_parse_completion", "_retry_after"),
}
# Parts of a module with a target of their own.
GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "sim/env.py reward code (Eq. 32)": ("sim/env.py", ("RouteChoiceEnv._settle_rewards", "RouteChoiceEnv._truncation_reward", "eq32_reward")),
}
TARGETS = {"reled_jax/reled.py": 0.9, "sim/env.py reward code (Eq. 32)": 0.9}
DEFAULT_TARGET = 0.8


@dataclasses.dataclass(frozen=True)
class Equivalent:
    """A mutant that cannot change behaviour: matched by module, function and the exact line it changes."""

    module: str
    function: str
    original: str  # the source line, stripped
    mutated: str  # the mutant's line, stripped
    reason: str


_NO_FLOAT = "the other operand is a float (terminal_bonus, the reward difference), so NumPy's result is float64 whatever this dtype"
_INT32 = "every caller passes integer lengths (or none), and with 64-bit mode off jnp.asarray makes them int32 anyway"
_CLAMP = "JAX clamps out-of-range gather indices to the last element, which is what the upper clip bound does"
_FLOAT32 = "dtype None is JAX's default float, float32 (64-bit mode is off in this project)"
EQUIVALENT: tuple[Equivalent, ...] = (
    # llm/client.py
    Equivalent("llm/client.py", "_retry_after", 'return float(response.headers.get("retry-after", ""))',
               'return float(response.headers.get("RETRY-AFTER", ""))', "httpx looks headers up case-insensitively"),
    Equivalent("llm/client.py", "_retry_after", 'return float(response.headers.get("retry-after", ""))',
               'return float(response.headers.get("retry-after", "XXXX"))', "a missing header fails float() either way ('' and 'XXXX'), giving None"),
    # llm/service.py
    *(Equivalent("llm/service.py", "ExpertService._absorb", 'self.errors[a] = p.error or "no plan"', f'self.errors[a] = p.error or "{m}"',
                 "unreachable: parse_response gives every plan it does not execute a reason, so `p.error` is never empty here")
      for m in ("XXno planXX", "NO PLAN")),
    *(Equivalent("llm/service.py", "ExpertService.compiled_current",
                 'AgentPlan(a, self.current[a]) if a in self.current else fallback_plan(a, self.dest[a], "no executed plan yet")',
                 f'AgentPlan(a, self.current[a]) if a in self.current else fallback_plan(a, self.dest[a], {m})',
                 "compile_plans reads only a plan's instructions; the reason of this fallback plan is never read or shown")
      for m in ("None", '"XXno executed plan yetXX"', '"NO EXECUTED PLAN YET"')),
    # sim/env.py
    Equivalent("sim/env.py", "RouteChoiceEnv._truncation_reward",
               "reward = eq32_reward(state.t.astype(jnp.float32), state.agent_last_t, state.agent_last_d, d_now, params.omega_d)",
               "reward = eq32_reward(state.t.astype(None), state.agent_last_t, state.agent_last_d, d_now, params.omega_d)",
               _FLOAT32),
    Equivalent("sim/env.py", "RouteChoiceEnv._settle_rewards", "t_f = t_new.astype(jnp.float32)", "t_f = t_new.astype(None)",
               _FLOAT32),
    Equivalent("sim/env.py", "RouteChoiceEnv._settle_rewards",
               "completes = (arrived_now | (awaits_now & ~departs)) & (state.agent_decisions > 0)",
               "completes = (arrived_now | (awaits_now & ~departs)) & (state.agent_decisions >= 0)",
               "an agent that has never decided is in its depot (tick): it cannot arrive or reach a stop line, and its only "
               "way to start awaiting is its departure, which `~departs` excludes; the guard is defensive"),
    *(Equivalent("sim/env.py", "RouteChoiceEnv.tick", "idx = jnp.arange(n_veh, dtype=jnp.int32)", m,
                 "jnp.arange of a Python int is int32 with 64-bit mode off, the dtype asked for")
      for m in ("idx = jnp.arange(n_veh, dtype=None)", "idx = jnp.arange(n_veh, )")),
    *(Equivalent("sim/env.py", "RouteChoiceEnv.tick", "a_depot = (new_edge[:n_ag] < 0) & ~state.agent_arrived & ~a_arrive & (new_next[:n_ag] < 0)", m,
                 "a_depot is only read by a_start, which also needs agent_decisions == 0; an agent that has never decided has "
                 "no edge, no next edge (-1) and has not arrived, so a_depot is True for it under both lines")
      for m in ("a_depot = (new_edge[:n_ag] < 0) & ~state.agent_arrived | ~a_arrive & (new_next[:n_ag] < 0)",
                "a_depot = (new_edge[:n_ag] < 0) & ~state.agent_arrived & ~a_arrive & (new_next[:n_ag] < 1)")),
    *(Equivalent("sim/env.py", "RouteChoiceEnv.tick", "count = jnp.zeros((n_edges,), jnp.float32).at[edge].add(on_edge.astype(jnp.float32))", m,
                 _FLOAT32)
      for m in ("count = jnp.zeros((n_edges,), None).at[edge].add(on_edge.astype(jnp.float32))",
                "count = jnp.zeros((n_edges,), jnp.float32).at[edge].add(on_edge.astype(None))")),
    Equivalent("sim/env.py", "RouteChoiceEnv._consume_actions",
               "chosen = jnp.take_along_axis(slot_edges, jnp.clip(actions, 0, self.m_out - 1)[:, None], axis=1)[:, 0]",
               "chosen = jnp.take_along_axis(slot_edges, jnp.clip(actions, 0, self.m_out - 1)[:, None], )[:, 0]",
               "slot_edges is [A, M]: take_along_axis's default axis, -1, is axis 1"),
    # reled_jax/reled.py
    Equivalent("reled_jax/reled.py", "make_epoch", "updates, o = tx.update(grads, o, p)", "updates, o = tx.update(grads, o, )",
               "the optimiser (clip_by_global_norm then adam, make_optimizer) never reads the parameters; only weight decay would"),
    Equivalent("reled_jax/reled.py", "masked_mean", "mask = mask.astype(x.dtype)", "mask = mask.astype(None)",
               "every x averaged here is float32, JAX's default float, which astype(None) gives"),
    Equivalent("reled_jax/reled.py", "make_epoch", "v = jax.vmap(lambda p, x: value.apply(p, x)[..., 0])(value_params, x)  # [A, N]",
               "v = jax.vmap(lambda p, x: value.apply(p, x)[..., 1])(value_params, x)  # [A, N]",
               "the value network has one output: JAX clamps the out-of-range static index 1 to 0"),
    # reled_jax/qmix.py
    Equivalent("reled_jax/qmix.py", "qmix_loss", 'held_q = jnp.take_along_axis(q_target, batch["action"][..., None], axis=-1)[..., 0]',
               'held_q = jnp.take_along_axis(q_target, batch["action"][..., None], axis=-1)[..., 1]',
               "take_along_axis with one index per row leaves an axis of size 1: JAX clamps the static index 1 to 0"),
    # reled_jax/dtw.py
    *(Equivalent("reled_jax/dtw.py", "dtw", o, m, r) for o, m, r in (
        ("a_len = jnp.asarray(n if a_len is None else a_len, jnp.int32)", "a_len = jnp.asarray(n if a_len is None else a_len, )", _INT32),
        ("a_len = jnp.asarray(n if a_len is None else a_len, jnp.int32)", "a_len = jnp.asarray(n if a_len is None else a_len, None)", _INT32),
        ("b_len = jnp.asarray(m if b_len is None else b_len, jnp.int32)", "b_len = jnp.asarray(m if b_len is None else b_len, )", _INT32),
        ("b_len = jnp.asarray(m if b_len is None else b_len, jnp.int32)", "b_len = jnp.asarray(m if b_len is None else b_len, None)", _INT32),
        ("diff = a[:, None, :].astype(jnp.float32) - b[None, :, :].astype(jnp.float32)",
         "diff = a[:, None, :].astype(None) - b[None, :, :].astype(jnp.float32)", _FLOAT32),
        ("diff = a[:, None, :].astype(jnp.float32) - b[None, :, :].astype(jnp.float32)",
         "diff = a[:, None, :].astype(jnp.float32) - b[None, :, :].astype(None)", _FLOAT32),
        ("result = jnp.where(done, current[jnp.clip(a_len - 1, 0, n - 1)], result)", "result = jnp.where(done, current[jnp.clip(a_len - 1, 0, )], result)", _CLAMP),
        ("result = jnp.where(done, current[jnp.clip(a_len - 1, 0, n - 1)], result)", "result = jnp.where(done, current[jnp.clip(a_len - 1, 0, None)], result)", _CLAMP),
        *(("skewed = jnp.where(valid, cost[rows[None, :], jnp.clip(cols, 0, m - 1)], inf)", f"skewed = jnp.where(valid, cost[rows[None, :], jnp.clip(cols, 0, {hi})], inf)", _CLAMP)
          for hi in ("m + 1", "None", "")),
        ("diags = jnp.arange(n + m - 1)", "diags = jnp.arange(n + m + 1)",
         "the result is taken on diagonal a_len + b_len - 2 <= n + m - 2; two more diagonals after the last change nothing"),
    )),
    # llm/compile.py. The Bellman-Ford loop of _live_shortest_time_slot relaxes every edge once per round (Jacobi),
    # so after r rounds every path of <= r edges is final, and N - 1 rounds settle every shortest path.
    *(Equivalent("llm/compile.py", "_live_shortest_time_slot",
                 "dist, _, _ = jax.lax.while_loop(lambda c: c[1] & (c[2] < n_nodes), relax, (dist0, jnp.bool_(True), 0))", m, r)
      for m, r in (("dist, _, _ = jax.lax.while_loop(lambda c: c[1] | (c[2] < n_nodes), relax, (dist0, jnp.bool_(True), 0))",
                    "rounds after convergence change no distance: the loop only runs longer (N rounds, not until nothing changes)"),
                   ("dist, _, _ = jax.lax.while_loop(lambda c: c[1] & (c[2] <= n_nodes), relax, (dist0, jnp.bool_(True), 0))",
                    "one round more than N - 1 + 1 changes no distance"),
                   ("dist, _, _ = jax.lax.while_loop(lambda c: c[1] & (c[2] < n_nodes), relax, (dist0, jnp.bool_(True), 1))",
                    "the cap becomes N - 1 rounds, which settle every shortest path (Bellman-Ford)"))),
    Equivalent("llm/compile.py", "expert_actions",
               "actions = jnp.select([mode == MODE_SHORTEST_TIME, mode == MODE_FOLLOW_EDGE, mode == MODE_SHORTEST_PATH], [slot_time, slot_edge, slot_path], slot_path)",
               "actions = jnp.select([mode == MODE_SHORTEST_TIME, mode == MODE_FOLLOW_EDGE, mode != MODE_SHORTEST_PATH], [slot_time, slot_edge, slot_path], slot_path)",
               "the other two modes are matched first, so this condition only decides between slot_path and the default, slot_path"),
    Equivalent("llm/compile.py", "expert_actions",
               "actions = jnp.select([mode == MODE_SHORTEST_TIME, mode == MODE_FOLLOW_EDGE, mode == MODE_SHORTEST_PATH], [slot_time, slot_edge, slot_path], slot_path)",
               "actions = jnp.select([mode == MODE_SHORTEST_TIME, mode == MODE_FOLLOW_EDGE, mode == MODE_SHORTEST_PATH], [slot_time, slot_edge, slot_path], )",
               "compile_plans writes only the three MODE_* values (Instruction.mode), so the default of the select is never taken"),
    *(Equivalent("llm/compile.py", "compile_plans", o, m, "NumPy makes these int64 and jnp.asarray then int32 (64-bit mode off): the tensors are int32 either way")
      for o, m in (("target = np.repeat(np.asarray(agent_dest, np.int32)[:, None], max_instructions, axis=1)",
                    "target = np.repeat(np.asarray(agent_dest, )[:, None], max_instructions, axis=1)"),
                   ("target = np.repeat(np.asarray(agent_dest, np.int32)[:, None], max_instructions, axis=1)",
                    "target = np.repeat(np.asarray(agent_dest, None)[:, None], max_instructions, axis=1)"),
                   ("mode = np.full((n_agents, max_instructions), MODE_SHORTEST_TIME, np.int32)",
                    "mode = np.full((n_agents, max_instructions), MODE_SHORTEST_TIME, None)"),
                   ("mode = np.full((n_agents, max_instructions), MODE_SHORTEST_TIME, np.int32)",
                    "mode = np.full((n_agents, max_instructions), MODE_SHORTEST_TIME, )"))),
    # reled_jax/sed.py
    *(Equivalent("reled_jax/sed.py", "SED.refresh", "nobody = jnp.zeros(n_agents, bool)", m,
                 "the mask is only read by jnp.where (make_demo_rollout), where float zeros are False like boolean ones")
      for m in ("nobody = jnp.zeros(n_agents, None)", "nobody = jnp.zeros(n_agents, )")),
    Equivalent("reled_jax/sed.py", "SED.refresh", "base = self._rollouts(k_base, policy_params, compiled[0].tensors, nobody)",
               "base = self._rollouts(k_base, policy_params, compiled[1].tensors, nobody)",
               "nobody follows plans in this rollout (expert mask all False), so whose plans ride along changes no action, "
               "and only its rewards are read (Eq. 17's threshold; test_sed recomputes it with other plans); with m = 1 it raises"),
    # llm/feedback.py
    *(Equivalent("llm/feedback.py", "_edge_end", o, m,
                 "slots are decided actions or argmaxes over the m_out logits, always in [0, m_out), so this out-of-range "
                 "branch is never taken (a slot without an edge returns -1 on the next line)")
      for o, m in (("if not 0 <= slot < network.m_out:", "if not 0 <= slot <= network.m_out:"), ("return -1", "return +1"))),
    *(Equivalent("llm/feedback.py", "external_step_rewards", "step = np.asarray(reward, float) - terminal_bonus * np.asarray(arrived_now, float)", m, _NO_FLOAT)
      for m in ("step = np.asarray(reward, None) - terminal_bonus * np.asarray(arrived_now, float)",
                "step = np.asarray(reward, ) - terminal_bonus * np.asarray(arrived_now, float)",
                "step = np.asarray(reward, float) - terminal_bonus * np.asarray(arrived_now, None)",
                "step = np.asarray(reward, float) - terminal_bonus * np.asarray(arrived_now, )")),
    Equivalent("llm/feedback.py", "_text", 'return seq[min(k, len(seq) - 1)].text if seq else "?"', 'return seq[min(k, len(seq) + 1)].text if seq else "?"',
               "the instruction pointer stops at the last instruction (expert_actions, tested), so k < len(seq) and the min never binds"),
    *(Equivalent("llm/feedback.py", "volatility_threshold", o, m, "NumPy (2.x) reads any negative dimension of a reshape as 'infer this one', so -2 is -1")
      for o, m in (("np.reshape(agent_arrived_now, (-1, agent_rewards.shape[-1])),", "np.reshape(agent_arrived_now, (-2, agent_rewards.shape[-1])),"),
                   ("np.reshape(agent_rewards, (-1, agent_rewards.shape[-1])),", "np.reshape(agent_rewards, (-2, agent_rewards.shape[-1])),"),
                   ("np.reshape(agent_valid, (-1,)),", "np.reshape(agent_valid, (-2,)),"))),
)

# mutmut's exit codes -> our categories (mutmut/stats.py). A child killed by a signal crashed under the mutant.
KILLED, TIMEOUT, SURVIVED, NO_TESTS, CRASHED, UNCHECKED = "killed", "timeout", "survived", "no tests", "crashed", "not checked"
STATUS = {1: KILLED, 3: KILLED, 36: TIMEOUT, 24: TIMEOUT, -24: TIMEOUT, 152: TIMEOUT, 255: TIMEOUT, -9: TIMEOUT,
          0: SURVIVED, 5: NO_TESTS, 33: NO_TESTS, -11: CRASHED, None: UNCHECKED}
DETECTED = (KILLED, TIMEOUT, CRASHED)


@dataclasses.dataclass(frozen=True)
class MutationConfig:
    modules: tuple[str, ...] = tuple(SCOPE)  # which scoped modules to test
    rerun: str = "all"  # all: every mutant | survivors: only those no test has killed yet | none: report only
    sample: int = 0  # 0: every scoped mutant; n > 0: a seeded random n per module, plus every mutant of GROUPS
    seed: int = 0  # which random sample
    max_children: int = os.cpu_count() or 2
    out: str = "benchmarks/results/mutation.json"


def mangled(function: str) -> str:
    """mutmut's name for a function ("x_f") or a method ("xǁClassǁm")."""
    if "." in function:
        cls, name = function.split(".")
        return f"xǁ{cls}ǁ{name}"
    return f"x_{function}"


def mutant_prefix(module: str, function: str) -> str:
    return f"{module.removesuffix('.py').replace('/', '.')}.{mangled(function)}__mutmut_"


def function_of(module: str, mutant: str) -> str | None:
    for function in SCOPE[module]:
        prefix = mutant_prefix(module, function)
        if mutant.startswith(prefix) and mutant[len(prefix):].isdigit():
            return function
    return None


def mutant_diff(module: str, mutant: str, spans: dict) -> tuple[list[str], list[str]]:
    """(removed lines, added lines) of a mutant against the original function, each stripped."""
    lines = (MUTANTS / module).read_text().splitlines()
    name = mutant.rsplit(".", 1)[1]
    orig = name.rsplit("__mutmut_", 1)[0] + "__mutmut_orig"

    def body(fn: str) -> list[str]:
        start, end = spans[fn]
        return [line.replace(fn, "FN") for line in lines[start - 1 : end]]

    removed, added = [], []
    for line in difflib.ndiff(body(orig), body(name)):
        if line.startswith("- "):
            removed.append(line[2:].strip())
        elif line.startswith("+ "):
            added.append(line[2:].strip())
    return removed, added


# Mutations equivalent wherever they occur: (reason, test on the original and mutated line).
EQUIVALENT_RULES: tuple[tuple[str, Callable[[str, str], bool]], ...] = (
    ("jnp.take_along_axis's axis defaults to -1, so dropping `axis=-1` changes nothing",
     lambda o, m: "jnp.take_along_axis(" in o and m in (o.replace(", axis=-1)", ", )"), o.replace(", axis=-1)", ")"))),
)


def equivalent_reason(module: str, function: str, removed: list[str], added: list[str]) -> str | None:
    for e in EQUIVALENT:
        if (e.module, e.function) == (module, function) and removed == [e.original] and added == [e.mutated]:
            return e.reason
    if len(removed) == len(added) == 1:
        for reason, same in EQUIVALENT_RULES:
            if same(removed[0], added[0]):
                return reason
    return None


def scoped_mutants(module: str) -> list[str]:
    """Every mutant mutmut generated for the scoped functions of a module, sorted."""
    data = json.loads((MUTANTS / (module + ".meta")).read_text())
    return sorted(n for n in data["exit_code_by_key"] if function_of(module, n) is not None)


def sampled_mutants(module: str, n: int, seed: int) -> list[str]:
    """A seeded random n of a module's scoped mutants (all when n is 0), plus every mutant of its GROUPS.

    Drawn with NumPy's generator seeded by (seed, module name), so a sample is the same on every
    machine and each module's is independent of which other modules are run.
    """
    import numpy as np  # noqa: PLC0415

    names = scoped_mutants(module)
    if n <= 0 or n >= len(names):
        return names
    rng = np.random.default_rng([seed, *module.encode()])
    chosen = {names[i] for i in rng.choice(len(names), size=n, replace=False)}
    grouped = {x for m, fns in GROUPS.values() if m == module for x in names if function_of(module, x) in fns}
    return sorted(chosen | grouped)


def forget_verdicts(module: str, names: list[str]) -> None:
    """Mark a module's scoped mutants unchecked, so that a verdict from older tests is never reported."""
    path = MUTANTS / (module + ".meta")
    data = json.loads(path.read_text())
    keep = set(names)
    for name in data["exit_code_by_key"]:
        if function_of(module, name) is not None and name not in keep:
            data["exit_code_by_key"][name] = None
            data.get("durations_by_key", {}).pop(name, None)
    path.write_text(json.dumps(data))


def generate_mutants() -> None:
    """Have mutmut write (or refresh) the mutant copies without testing any, so a sample can be drawn."""
    code = ("from mutmut.__main__ import *; set_mutant_under_test('mutant_generation'); copy_src_dir(); "
            "copy_also_copy_files(); setup_source_paths(); store_lines_covered_by_tests(); create_mutants(max_children=2)")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def run_mutmut(cfg: MutationConfig) -> None:
    patterns: list[str] = []
    if cfg.rerun == "all":
        if cfg.sample:
            if not all((MUTANTS / (m + ".meta")).exists() for m in cfg.modules):
                generate_mutants()
            patterns = [x for m in cfg.modules for x in sampled_mutants(m, cfg.sample, cfg.seed)]
        else:
            patterns = [mutant_prefix(m, f) + "*" for m in cfg.modules for f in SCOPE[m]]
        for m in cfg.modules:  # what is not tested now must not keep a verdict of older tests
            forget_verdicts(m, [])
    elif cfg.rerun == "survivors":
        verdicts = read_verdicts()
        patterns = [name for m in cfg.modules for name, v in verdicts.get(m, {}).items()
                    if v["status"] in (SURVIVED, NO_TESTS) and v["function"] is not None]  # not the unchecked rest of a --sample
        if not patterns:
            print("nothing to re-test: every scoped mutant of these modules is already detected")
            return
    env = dict(
        os.environ,
        # Programs a mutant did not change are read back instead of compiled again; a changed one hashes anew.
        JAX_COMPILATION_CACHE_DIR=str(MUTANTS / ".jax-cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        JAX_DISABLE_MOST_OPTIMIZATIONS="1",
        PYTHONHASHSEED="0",
    )
    mutmut = Path(sys.executable).with_name("mutmut")
    print(f"mutmut run: {len(patterns)} pattern(s) over {', '.join(cfg.modules)}", flush=True)
    result = subprocess.run([str(mutmut), "run", "--max-children", str(cfg.max_children), *patterns], cwd=ROOT, env=env)
    if result.returncode not in (0, 1):  # mutmut exits 1 when some mutant survived
        raise SystemExit(f"mutmut failed (exit {result.returncode}); see its output above")


def read_verdicts() -> dict[str, dict[str, dict]]:
    """{module: {mutant: {function, status, seconds}}} from mutmut's per-file records."""
    out: dict[str, dict[str, dict]] = {}
    for module in SCOPE:
        meta = MUTANTS / (module + ".meta")
        if not meta.exists():
            continue
        data = json.loads(meta.read_text())
        durations = data.get("durations_by_key", {})
        out[module] = {
            name: {"function": function_of(module, name), "status": STATUS.get(code, CRASHED), "seconds": durations.get(name)}
            for name, code in data["exit_code_by_key"].items()
        }
    return out


def summarise(names: list[str], verdicts: dict, module: str, spans: dict, target: float) -> dict:
    counts = Counter()
    survivors, equivalent = [], []
    for name in names:
        v = verdicts[name]
        status = v["status"]
        if status in (SURVIVED, NO_TESTS):  # unchecked ones (outside a --sample) are only counted
            removed, added = mutant_diff(module, name, spans)
            reason = equivalent_reason(module, v["function"], removed, added) if status == SURVIVED else None
            entry = {"mutant": name, "function": v["function"], "status": status, "removed": removed, "added": added}
            if reason:
                equivalent.append({**entry, "reason": reason})
                counts["equivalent"] += 1
                continue
            survivors.append(entry)
        counts[status] += 1
    # The score counts checked mutants only: with --sample, the unchecked rest is what the sample stands for.
    counted = len(names) - counts[UNCHECKED] - counts["equivalent"]
    detected = sum(counts[s] for s in DETECTED)
    score = detected / counted if counted else float("nan")
    low, high = wilson_interval(detected, counted)
    if counts[UNCHECKED] == 0:  # every mutant checked: the score is exact, not an estimate
        low = high = score
    return {
        "mutants": len(names), "checked": len(names) - counts[UNCHECKED], "killed": counts[KILLED], "timed_out": counts[TIMEOUT],
        "crashed": counts[CRASHED], "survived": counts[SURVIVED], "no_tests": counts[NO_TESTS], "not_checked": counts[UNCHECKED],
        "equivalent": counts["equivalent"], "score": round(score, 4), "score_95ci": [round(low, 4), round(high, 4)],
        "target": target, "meets_target": bool(score >= target),
        "test_seconds": round(sum(verdicts[n]["seconds"] or 0.0 for n in names), 1),
        "survivors": survivors, "equivalent_mutants": equivalent,
    }


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k/n (the score of a random sample of mutants)."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def report(cfg: MutationConfig, wall_s: float) -> dict:
    verdicts = read_verdicts()
    modules, groups = {}, {}
    for module, functions in SCOPE.items():
        if module not in verdicts:
            continue
        spans = json.loads((MUTANTS / (module + ".spans")).read_text())["spans"]
        names = sorted(n for n, v in verdicts[module].items() if v["function"] is not None)
        row = summarise(names, verdicts[module], module, spans, TARGETS.get(module, DEFAULT_TARGET))
        row["functions"] = {f: sum(verdicts[module][n]["function"] == f for n in names) for f in functions}
        modules[module] = row
    for group, (module, functions) in GROUPS.items():
        if module not in verdicts:
            continue
        spans = json.loads((MUTANTS / (module + ".spans")).read_text())["spans"]
        names = sorted(n for n, v in verdicts[module].items() if v["function"] in functions)
        groups[group] = {"module": module, "functions": list(functions), **summarise(names, verdicts[module], module, spans, TARGETS.get(group, DEFAULT_TARGET))}
    matched = {(m, x["function"], x["removed"][0], x["added"][0]) for m, row in modules.items() for x in row["equivalent_mutants"]}
    stale = [dataclasses.asdict(e) for e in EQUIVALENT if (e.module, e.function, e.original, e.mutated) not in matched]
    import mutmut  # noqa: PLC0415

    out = ROOT / cfg.out
    previous = json.loads(out.read_text()) if out.exists() else {}
    command = "python -m benchmarks.mutation " + " ".join(sys.argv[1:])
    # Re-testing survivors (or only reporting) keeps the sample the verdicts were drawn for.
    sample, seed = (cfg.sample, cfg.seed) if cfg.rerun == "all" else (previous.get("sample_per_module", cfg.sample), previous.get("sample_seed", cfg.seed))
    runs = previous.get("runs", [])
    if cfg.rerun != "none":  # one line per invocation that tested mutants: how the scores moved as tests were added
        runs = [*runs, {
            "command": command, "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "wall_s": round(wall_s, 1),
            "sample_per_module": sample, "sample_seed": seed, "tests_at_commit": _tests_commit(),
            "scores": {name: {k: row[k] for k in ("score", "score_95ci", "checked", "survived", "equivalent")}
                       for name, row in [*modules.items(), *groups.items()]},
        }]
    result = {
        "benchmark": "mutation",
        "tool": f"mutmut {mutmut.__version__}",
        "command": command,
        "score": "(killed + timed out + crashed) / (checked mutants - equivalent); slow-marked tests excluded; "
                 "score_95ci: Wilson interval when only a random sample was checked (--sample), the score itself when all were",
        "sample_per_module": sample, "sample_seed": seed,
        "scope": {m: list(f) for m, f in SCOPE.items()},
        "machine": {**machine(), "python": platform.python_version()},
        "wall_s_this_invocation": round(wall_s, 1),
        "modules": modules,
        "groups": groups,
        "equivalent_not_matched": stale,  # catalogue entries no surviving mutant matches any more
        "runs": runs,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    os.replace(tmp, out)
    plot(result, out.with_suffix(".png"))
    ci = lambda r: f" [95% {r['score_95ci'][0]:.0%}-{r['score_95ci'][1]:.0%}, sampled]" if r["not_checked"] else " (all checked)"  # noqa: E731
    for name, row in [*modules.items(), *groups.items()]:
        print(f"{name:40s} {row['mutants']:5d} mutants  killed {row['killed'] + row['timed_out'] + row['crashed']:5d}  "
              f"survived {row['survived'] + row['no_tests']:4d}  equivalent {row['equivalent']:3d}  unchecked {row['not_checked']:4d}  "
              f"score {row['score']:.1%}{ci(row)} (target {row['target']:.0%})")
    print(f"wrote {out}")
    return result


def _tests_commit() -> str:
    """The commit whose tests a run used ("+modified" when tests/ had uncommitted changes)."""
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()  # noqa: E731
    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+modified" if git("status", "--porcelain", "--", "tests") else "")




def _run_label(run: dict) -> str:
    sample = f"sample {run['sample_per_module']}, seed {run['sample_seed']}" if run["sample_per_module"] else "all mutants"
    what = "survivors re-tested" if "survivors" in run["command"] else "whole sample tested"
    return f"{what} ({sample}), {run['finished_utc'][:16]}"


def plot(result: dict, path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rows = [*result["modules"].items(), *result["groups"].items()]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.2))
    for y, (name, r) in enumerate(reversed(rows)):
        counted = max(r["checked"] - r["equivalent"], 1)
        parts = [(r["killed"] + r["crashed"], "tab:green", "killed"), (r["timed_out"], "tab:olive", "timed out"),
                 (r["survived"] + r["no_tests"], "tab:red", "survived")]
        left = 0.0
        for n, color, label in parts:
            ax.barh(y, n / counted, left=left, color=color, label=label if y == 0 else None)
            left += n / counted
        low, high = r["score_95ci"]
        if high > low:
            ax.errorbar(r["score"], y, xerr=[[r["score"] - low], [high - r["score"]]], color="k", capsize=3, lw=1)
        ax.plot([r["target"]] * 2, [y - 0.4, y + 0.4], color="k", lw=1.5, ls=":")
        for run, marker in zip(result["runs"], "ovs^D*"):  # how the score moved, run by run
            if name in run["scores"]:
                ax.plot(run["scores"][name]["score"], y, marker, mfc="white", mec="k", ms=6, label=_run_label(run) if y == len(rows) - 1 else None)
        sampled = f" sampled of {r['mutants']}" if r["not_checked"] else ""
        ax.text(1.01, y, f"{r['score']:.0%} of {counted}{sampled} ({r['equivalent']} equivalent)", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [name for name, _ in reversed(rows)], fontsize=8)
    lowest = min([r["score"] for _, r in rows] + [run["scores"][n]["score"] for run in result["runs"] for n in run["scores"]])
    ax.set_xlim(min(0.6, lowest - 0.05), 1.0)  # the interesting part: scores sit between the targets and 100 %
    ax.set_xlabel("share of checked non-equivalent mutants detected (dotted: target; whisker: 95 % interval of a sampled score)")
    ax.legend(loc="lower left", fontsize=7, ncol=3, bbox_to_anchor=(0, 1.0))
    ax.set_title(f"Mutation score of the core ({result['tool']}, fast tests); markers: earlier runs", fontsize=10, pad=34)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(cfg: MutationConfig) -> dict:
    unknown = [m for m in cfg.modules if m not in SCOPE]
    if unknown or cfg.rerun not in ("all", "survivors", "none"):
        raise SystemExit(f"modules must be among {list(SCOPE)} (got {unknown}) and --rerun one of all, survivors, none (got {cfg.rerun!r})")
    try:
        import mutmut  # noqa: F401, PLC0415
    except ImportError:
        raise SystemExit("mutmut is not installed: pip install -e '.[mutation]' (or run `make mutation`)") from None
    start = time.perf_counter()
    if cfg.rerun != "none":
        run_mutmut(cfg)
    return report(cfg, time.perf_counter() - start)


if __name__ == "__main__":
    main(tyro.cli(MutationConfig, description=__doc__))
