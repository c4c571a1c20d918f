"""The plan sandbox: hostile or broken programs are rejected with a reason; valid ones yield instructions."""

import numpy as np
import pytest

from llm.interface import PlanError
from llm.plans import PlanRequestContext, parse_response
from llm.sandbox import SandboxLimits, parse_program, run_program

HOSTILE = [
    ("import os", "imports"),
    ("from os import path", "imports"),
    ("__import__('os')", "names starting with '_'"),
    ("().__class__.__bases__[0].__subclasses__()", "attribute access"),
    ("f = get_origin\nf.__globals__", "attribute access"),
    ("'{}'.format(1)", "attribute access"),
    ("open('/etc/passwd')", "`open` is not defined"),
    ("eval('1 + 1')", "`eval` is not defined"),
    ("exec('x = 1')", "`exec` is not defined"),
    ("getattr(get_origin, 'x')", "`getattr` is not defined"),
    ("type(1)", "`type` is not defined"),
    ("while True:\n    pass", "`while`"),
    ("for i in range(10**9):\n    pass", "step budget"),
    ("def f(n):\n    return f(n + 1)\nf(0)", "nested deeper"),
    ("x = [0] * 10**8", "exceed"),
    ("x = [[0] * 9000 for i in range(9000)]", "memory limit"),
    ("x = 'a' * 10**9", "exceed"),
    ("x = 10 ** 10 ** 10", "too large"),
    ("x = 7 ** 1000", "bits"),
    ("x = max(range(10**9))", "exceeds"),
    ("x = 'a' * 9000\ny = [x] * 200\nz = str(y)", "exceeds the limit"),
    ("move_to_by_shortest_time(99999)", "unknown node 99999"),
    ("move_to_by_shortest_time(-1)", "unknown node -1"),
    ("move_to_by_shortest_time('3')", "must be an integer"),
    ("move_to_by_shortest_time(1.5)", "must be an integer"),
    ("move_to_by_shortest_time(True)", "must be an integer"),
    ("move_to_by_shortest_time([1])", "must be an integer"),
    ("get_nearest_node('a', 0)", "finite numbers"),
    ("get_origin(1, 2, 3)", "argument"),
    ("for i in range(20):\n    move_to_by_shortest_time(i % 2 + 1)", "more than 8 move instructions"),
    ("lambda x: x", "`lambda`"),
    ("try:\n    pass\nexcept Exception:\n    pass", "`try`"),
    ("with open('f') as f:\n    pass", "`with`"),
    ("class A:\n    pass", "classes"),
    ("global x", "`global`"),
    ("x = 1\ndel x", "`del`"),
    ("raise ValueError", "`raise`"),
    ("assert False", "`assert`"),
    ("x = (y := 3)", "walrus"),
    ("print(*[1, 2])", "star"),
    ("x = {1, 2}", "sets"),
    ("async def f():\n    pass", "async"),
    ("get_origin = 5", "cannot assign to built-in"),
    ("def move_to_by_shortest_time(n):\n    return 1", "cannot redefine"),
    ("x = 1 / 0", "ZeroDivisionError"),
    ("x = get_node_coord(0)\ny = x[5]", "IndexError"),
    ("x = undefined_name + 1", "`undefined_name` is not defined"),
    ("x = [1, 2] + 3", "TypeError"),
    ("please move to node 5", "syntax error"),
    ("x = " + "(" * 300 + "1" + ")" * 300, ""),
    ("x = " + "-" * 3000 + "1", ""),
    ("x = " + "[" * 60 + "]" * 60, "nested too deeply"),
    ("sorted([3, 1], key=get_destination)", "argument"),
    ("x = 5\nx()", "not callable"),
    ("pass", "no move instruction"),
]


@pytest.fixture
def ctx(line_network):
    return PlanRequestContext(line_network, np.array([0, 3]), np.array([3, 0]), max_instructions=8)


@pytest.mark.parametrize("code,reason", HOSTILE, ids=[f"hostile{i:02d}" for i in range(len(HOSTILE))])
def test_hostile_program_is_rejected_with_reason(ctx, code, reason):
    plan = parse_response("```python\n" + code + "\n```", [0], ctx)[0]
    assert not plan.executed
    assert plan.instructions == ()
    assert reason in plan.error, plan.error


def test_ordinary_code_is_not_starved_by_the_limits(ctx):
    code = (
        "d = {}\nfor i in range(5000):\n    d[i] = i * 2\n"
        "best = sorted(list(d), key=abs, reverse=True)[0]\n"
        "print('best', best, end='')\n"
        "move_to_by_shortest_time(best % 4)\n"
    )
    plan = parse_response(code, [0], ctx)[0]
    assert plan.executed and plan.instructions[0].node == 4999 % 4


def test_time_budget_stops_a_long_program():
    limits = SandboxLimits(max_steps=10**12, max_seconds=0.05)
    tree = parse_program("x = 0\nfor i in range(10**8):\n    x = x + i", limits)
    with pytest.raises(PlanError, match="time budget"):
        run_program(tree, {}, {}, limits)


def test_hostile_json_and_text_never_raise(ctx):
    for text in ["", "   ", "{", '{"plans": 3}', '{"plans": [{"agent": 0}]}', '{"plans": [{"agent": 0, "route": [0, 2, 3]}]}',
                 '{"plans": [{"agent": 0, "instructions": [{"op": "rm_rf", "node": 1}]}]}', "[1, 2, 3]", "null"]:
        plan = parse_response(text, [0], ctx)[0]
        assert not plan.executed and plan.error


def test_valid_program_yields_expected_instructions(ctx):
    code = (
        "def closer(n):\n"
        "    return get_shortest_dist(n)\n"
        "best = min([2, 1], key=closer)\n"  # node 1 is 100 m from the origin, node 2 is 250 m
        "for k in range(1):\n"
        "    move_to_by_shortest_path(best)\n"
        "x, y = get_node_coord(get_destination())\n"
        "move_to_by_shortest_time(get_nearest_node(x - 1.0, y + 2.0))\n"
    )
    plans = parse_response(code, [0, 1], ctx)
    p0 = plans[0]
    assert p0.executed
    assert [(i.op, i.node, i.line) for i in p0.instructions] == [
        ("move_to_by_shortest_path", 1, 5),
        ("move_to_by_shortest_time", 3, 7),
    ]
    # Agent 1 starts at 3 going to 0: nearest to junction 0 from 3 by distance is 2, then its destination 0.
    assert [i.node for i in plans[1].instructions] == [2, 0]


def test_per_agent_branches_and_json_formats(ctx):
    code = "if agent_id == 0:\n    move_to_by_shortest_time(2)\nelse:\n    move_to_by_shortest_path(1)"
    plans = parse_response(code, [0, 1], ctx)
    assert plans[0].instructions[0].node == 2 and plans[1].instructions[0].node == 1

    text = '```json\n{"plans": [{"agent": 0, "instructions": [{"op": "move_to_by_shortest_path", "node": 2}]},' \
           ' {"agent": 1, "route": [3, 2, 1, 0]}]}\n```'
    plans = parse_response(text, [0, 1], ctx)
    assert plans[0].fmt == "instructions" and [i.node for i in plans[0].instructions] == [2]
    assert plans[1].fmt == "route" and [(i.op, i.node) for i in plans[1].instructions] == [("follow_edge", 2), ("follow_edge", 1), ("follow_edge", 0)]

    bad_route = parse_response('{"plans": [{"agent": 0, "route": [0, 2]}]}', [0], ctx)[0]
    assert "no road from node 0 to node 2" in bad_route.error
    missing = parse_response('{"plans": [{"agent": 1, "code": "move_to_by_shortest_time(0)"}]}', [0, 1], ctx)
    assert "no plan for agent 0" in missing[0].error and missing[1].executed
