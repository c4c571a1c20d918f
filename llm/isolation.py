"""Plans checked and run in a worker process under OS limits: the guarantee behind the interpreter's budgets.

`llm.sandbox` bounds steps, time, sizes and nesting itself, but it runs in the
trainer's process, where one C-level operation it did not foresee could still
hang or exhaust memory. `PlanWorker` runs `llm.plans.iter_plans` in a separate
Python process (`python -m llm.isolation`) that

* may grow its address space by at most `memory_mb` beyond what it holds after
  its imports (RLIMIT_AS; an allocation past it is a MemoryError there, which
  the interpreter turns into a rejection),
* may spend at most `cpu_s` CPU seconds per response (RLIMIT_CPU: the kernel
  kills it past that),
* must send each agent's plan within `deadline_s` of the previous one (wall
  clock, measured here), or it is killed.

A killed or crashed worker is replaced by a fresh one for the next response;
the agents it did not answer for are rejected with the reason, so the expert
service counts them and falls back. The worker is started once and reused,
so the cost of isolation is one process start per run (and per kill), plus
pickling the network once. Requests travel as pickles from this process (our
data); results come back as JSON lines (`plan_to_json`), never as pickles,
so even a subverted worker cannot make this process run code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Sequence

import numpy as np

from llm.plans import AgentPlan, PlanRequestContext, plan_from_json

_HEADER = struct.Struct("<Q")
STARTUP_S = 60.0  # for a worker to import and load the network


@dataclasses.dataclass(frozen=True)
class IsolationLimits:
    deadline_s: float = 3.0  # wall clock per agent's plan (the first also covers parsing the response)
    memory_mb: int = 256  # address space the worker may add to what it holds after its imports
    cpu_s: int = 30  # CPU seconds per response, a backstop the kernel enforces

    def __post_init__(self):
        if not (self.deadline_s > 0 and self.memory_mb > 0 and self.cpu_s > 0):
            raise ValueError(f"isolation limits must be positive, got {self}")


class PlanWorker:
    """One reusable worker process that answers `parse(text, agents, edge_time)` like `llm.plans.parse_response`."""

    def __init__(self, ctx: PlanRequestContext, limits: IsolationLimits = IsolationLimits()):
        self.ctx = dataclasses.replace(ctx, edge_time=None)
        self.limits = limits
        self.proc: subprocess.Popen | None = None
        self.ready = False
        self._ended = False
        self.started = 0  # worker processes started so far (1 + kills and crashes)
        self.killed = 0
        self.peak_mb = 0.0  # largest resident memory any worker reached (benchmarks/sandbox_hostile.py)
        self._buffer = b""

    # ------------------------------------------------------------- process
    def _spawn(self) -> None:
        """Start a worker and hand it the network; it says "ready" when it has loaded it (`_await_ready`)."""
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
        self.proc = subprocess.Popen([sys.executable, "-m", "llm.isolation"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, env=env, cwd=_package_root())
        self.started += 1
        self._buffer, self._ended = b"", False
        self._send({"ctx": self.ctx, "memory_mb": self.limits.memory_mb, "cpu_s": self.limits.cpu_s})
        self.ready = False

    def _await_ready(self) -> None:
        # Starting (imports, the network) is not the plan's time: wait for the worker to say it is ready.
        if self._line(time.perf_counter() + STARTUP_S) != b"ready":
            self._kill()
            raise OSError(f"the plan worker did not start within {STARTUP_S:g} s")
        self.ready = True

    def _send(self, message: dict) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self.proc.stdin.write(_HEADER.pack(len(data)) + data)
        self.proc.stdin.flush()

    def _note_peak(self) -> None:
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                hwm = next(line for line in f if line.startswith("VmHWM:"))
            self.peak_mb = max(self.peak_mb, int(hwm.split()[1]) / 1024)
        except (OSError, StopIteration, ValueError):
            pass

    def _kill(self) -> None:
        if self.proc is not None:
            self._note_peak()
            self.proc.kill()
            self.proc.wait()
            for pipe in (self.proc.stdin, self.proc.stdout):
                pipe.close()
        self.proc = None

    def close(self) -> None:
        self._kill()

    def __del__(self):
        try:
            self._kill()
        except Exception:
            pass

    def _line(self, deadline: float) -> bytes | None:
        """The worker's next output line, or None if it passed the deadline or ended."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.perf_counter()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:  # the worker ended
                self._ended = True
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    # ------------------------------------------------------------- requests
    def parse(self, text: str, agents: Sequence[int], edge_time: np.ndarray | None = None) -> dict[int, AgentPlan]:
        agents = [int(a) for a in agents]
        try:
            if self.proc is None or self.proc.poll() is not None:
                self._spawn()
            if not self.ready:
                self._await_ready()
            self._send({"text": text, "agents": agents, "edge_time": None if edge_time is None else np.asarray(edge_time, float)})
        except OSError as err:  # BrokenPipeError included
            self._kill()
            return {a: AgentPlan(a, error=f"plan worker could not be reached ({err})") for a in agents}
        plans: dict[int, AgentPlan] = {}
        for a in agents:
            line = self._line(time.perf_counter() + self.limits.deadline_s)
            if line is None:
                why = self._why_stopped()
                self.killed += 1
                self._kill()
                self._spawn()  # the replacement starts now, while training goes on, not at the next request
                plans[a] = AgentPlan(a, error=f"plan {why} (agent {a}); the worker was replaced")
                for rest in agents[agents.index(a) + 1 :]:
                    plans[rest] = AgentPlan(rest, error=f"not run: the response's plan for agent {a} {why}")
                return plans
            try:
                data = json.loads(line)
            except ValueError:
                data = {}
            plans[a] = plan_from_json(data, a)
        self._note_peak()
        return plans

    def _why_stopped(self) -> str:
        # Its output can close a moment before its exit status exists: wait for that when it ended.
        code = self.proc.wait(timeout=10) if self._ended else self.proc.poll()
        if code is None:
            return f"ran past its {self.limits.deadline_s:g} s deadline"
        if code < 0 and -code == signal.SIGXCPU:
            return f"used up its {self.limits.cpu_s} s of CPU"
        if code < 0:
            return f"stopped the worker (signal {signal.Signals(-code).name})"
        return f"stopped the worker (exit {code}, likely out of its {self.limits.memory_mb} MB)"


def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- the worker
def _read(stream) -> dict | None:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    return pickle.loads(stream.read(_HEADER.unpack(header)[0]))  # from the parent process: our own data


def _address_space_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _worker_main() -> None:
    import resource

    # Past its CPU seconds the kernel sends SIGXCPU, whose default action ends the process. A parent thread
    # that ignores or blocks the signal passes that on through exec (test runners' threads do), so undo both.
    signal.signal(signal.SIGXCPU, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGXCPU})

    from llm.plans import iter_plans, plan_to_json

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    setup = _read(stdin)
    if setup is None:
        return
    ctx: PlanRequestContext = setup["ctx"]
    ctx.time_graph()  # warm what the first plan would import and allocate, before the limit is measured
    cap = _address_space_bytes() + setup["memory_mb"] * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    stdout.write(b"ready\n")
    stdout.flush()
    while (job := _read(stdin)) is not None:
        used = resource.getrusage(resource.RUSAGE_SELF)
        budget = int(used.ru_utime + used.ru_stime) + setup["cpu_s"]
        resource.setrlimit(resource.RLIMIT_CPU, (budget, resource.RLIM_INFINITY))
        job_ctx = dataclasses.replace(ctx, edge_time=job["edge_time"])
        try:
            for _, plan in iter_plans(job["text"], job["agents"], job_ctx):
                stdout.write(json.dumps(plan_to_json(plan)).encode() + b"\n")
                stdout.flush()
        except MemoryError:
            return  # the parent sees the worker end and rejects what is left


if __name__ == "__main__":
    _worker_main()
