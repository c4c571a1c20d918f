"""The plan sandbox: hostile or broken programs are rejected with a reason; valid ones yield instructions."""

import numpy as np
import pytest

from llm.interface import PlanError
from llm.plans import PlanRequestContext, parse_response
from llm.sandbox import SandboxLimits, parse_program, run_program

# (program, the exact reason it is rejected with: what the LLM reads back in its next prompt)
HOSTILE = [
    ("import os", 'line 1: imports are not allowed'),
    ("from os import path", 'line 1: imports are not allowed'),
    ("__import__('os')", "line 1: names starting with '_' (such as '__import__') are not allowed"),
    ("().__class__.__bases__[0].__subclasses__()", 'line 1: attribute access (x.y) is not allowed; use the interface functions and builtins'),
    ("f = get_origin\nf.__globals__", 'line 2: attribute access (x.y) is not allowed; use the interface functions and builtins'),
    ("'{}'.format(1)", 'line 1: attribute access (x.y) is not allowed; use the interface functions and builtins'),
    ("open('/etc/passwd')", 'line 1: name `open` is not defined'),
    ("eval('1 + 1')", 'line 1: name `eval` is not defined'),
    ("exec('x = 1')", 'line 1: name `exec` is not defined'),
    ("getattr(get_origin, 'x')", 'line 1: name `getattr` is not defined'),
    ("type(1)", 'line 1: name `type` is not defined'),
    ("while True:\n    pass", 'line 1: `while` loops are not allowed; use `for` over range(...) or a list'),
    ("for i in range(10**9):\n    pass", 'line 2: step budget of 200000 exceeded (loop too long or infinite)'),
    ("def f(n):\n    return f(n + 1)\nf(0)", 'line 2: helper calls nested deeper than 8 (recursion is not allowed to run away)'),
    ("x = [0] * 10**8", 'line 1: result would exceed 10000 items'),
    ("x = [[0] * 9000 for i in range(9000)]", 'line 1: plan allocated more than 1000000 items in total (memory limit)'),
    ("x = 'a' * 10**9", 'line 1: result would exceed 10000 items'),
    ("x = 10 ** 10 ** 10", 'line 1: exponent 10000000000 is too large'),
    ("x = 7 ** 1000", 'line 1: integer result would exceed 128 bits'),
    ("x = max(range(10**9))", 'line 1: sequence of 1000000000 items exceeds 10000'),
    ("x = 'a' * 9000\ny = [x] * 200\nz = str(y)", 'line 2: a value nested past 100000 items (a container repeated inside itself, or holding itself)'),
    ("move_to_by_shortest_time(99999)", 'line 1: move_to_by_shortest_time: unknown node 99999 (valid junction ids are 0..3)'),
    ("move_to_by_shortest_time(-1)", 'line 1: move_to_by_shortest_time: unknown node -1 (valid junction ids are 0..3)'),
    ("move_to_by_shortest_time('3')", "line 1: move_to_by_shortest_time: node id must be an integer, got str '3'"),
    ("move_to_by_shortest_time(1.5)", 'line 1: move_to_by_shortest_time: node id must be an integer, got 1.5'),
    ("move_to_by_shortest_time(True)", 'line 1: move_to_by_shortest_time: node id must be an integer, got bool True'),
    ("move_to_by_shortest_time([1])", 'line 1: move_to_by_shortest_time: node id must be an integer, got list [1]'),
    ("get_nearest_node('a', 0)", "line 1: get_nearest_node: coordinates must be finite numbers, got 'a'"),
    ("get_origin(1, 2, 3)", 'line 1: get_origin() takes (no arguments), got 3 argument(s)'),
    ("for i in range(20):\n    move_to_by_shortest_time(i % 2 + 1)", 'line 2: plan issues more than 8 move instructions; use fewer waypoints'),
    ("lambda x: x", 'line 1: `lambda` is not allowed; define a helper with `def`'),
    ("try:\n    pass\nexcept Exception:\n    pass", 'line 1: `try` is not allowed'),
    ("with open('f') as f:\n    pass", 'line 1: `with` is not allowed'),
    ("class A:\n    pass", 'line 1: classes are not allowed'),
    ("global x", 'line 1: `global` is not allowed'),
    ("x = 1\ndel x", 'line 2: `del` is not allowed'),
    ("raise ValueError", 'line 1: `raise` is not allowed'),
    ("assert False", 'line 1: `assert` is not allowed'),
    ("x = (y := 3)", 'line 1: the walrus operator is not allowed'),
    ("print(*[1, 2])", 'line 1: star-unpacking is not allowed'),
    ("x = {1, 2}", 'line 1: sets are not allowed; use a list'),
    ("async def f():\n    pass", 'line 1: async code is not allowed'),
    ("get_origin = 5", 'line 1: cannot assign to built-in name `get_origin`'),
    ("def move_to_by_shortest_time(n):\n    return 1", 'line 1: cannot redefine built-in `move_to_by_shortest_time`'),
    ("x = 1 / 0", 'line 1: ZeroDivisionError: division by zero'),
    ("x = get_node_coord(0)\ny = x[5]", 'line 2: IndexError: tuple index out of range'),
    ("x = undefined_name + 1", 'line 1: name `undefined_name` is not defined'),
    ("x = [1, 2] + 3", 'line 1: TypeError: can only concatenate list (not "int") to list'),
    ("please move to node 5", 'syntax error on line 1: invalid syntax'),
    ("x = " + "(" * 300 + "1" + ")" * 300, 'syntax error on line 1: too many nested parentheses'),
    ("x = " + "-" * 3000 + "1", 'plan code could not be parsed (RecursionError: too deeply nested or invalid)'),
    ("x = " + "[" * 60 + "]" * 60, 'line 1: expression nested too deeply (depth 40 at most)'),
    ("sorted([3, 1], key=get_destination)", 'line 1: get_destination() takes (no arguments), got 1 argument(s)'),
    ("x = 5\nx()", 'line 2: an int is not callable'),
    ("pass", 'plan issued no move instruction for agent 0'),
]


@pytest.fixture
def ctx(line_network):
    return PlanRequestContext(line_network, np.array([0, 3]), np.array([3, 0]), max_instructions=8)


@pytest.mark.parametrize("code,reason", HOSTILE, ids=[f"hostile{i:02d}" for i in range(len(HOSTILE))])
def test_hostile_program_is_rejected_with_reason(ctx, code, reason):
    plan = parse_response("```python\n" + code + "\n```", [0], ctx)[0]
    assert not plan.executed
    assert plan.instructions == ()
    assert plan.error == reason


# Programs that got past the budgets at the C level before issue 18 (a crash out of plan(), a hang, or
# gigabytes), each with the start of the reason it is rejected with now.
C_LEVEL = [
    ("a, b = range(10**30)", "line 1: range() with more than 9223372036854775807 elements"),  # OverflowError
    ("n = len(range(10**30))", "line 1: range() with more than"),
    ("d = {(1, [2]): 3}", "line 1: dict keys must be numbers, strings or tuples of them"),  # TypeError
    ("x = sum([[1] * 1000] * 1000, [])", "line 1: a value nested past 100000 items"),  # quadratic concatenation
    ("x = sum([[1], [2]], [])", "line 1: sum() adds numbers only"),
    ("x = round(10**30, -10**18)", "line 1: round() digits must be a number between -30 and 30"),  # 10**(10**18)
    ("a = [0]\na[0] = a\nb = a == a", "line 2: a value nested past 100000 items"),  # holds itself
    ("a = [0]\nb = [a]\na[0] = b", "line 3: a value nested past 100000 items"),  # through another list
    ("a = [1]\nfor i in range(40):\n    a = [a, a]\nstr(a)", "line 3: a value nested past 100000 items"),  # 2**40 repr
    ("t = (1,)\nfor i in range(40):\n    t = (t, t)\nd = {t: 1}", "line 3: a value nested past 100000 items"),  # 2**40 hash
    ("x = [0]\ny = [x] * 50\nx[0] = 'a' * 9000\nz = str(y)", "line 4: a value nested past 100000 items"),  # grew after it was nested
    ("x = [0]\ny = [x] * 50\nx[0] = 'a' * 9000\nz = y == y", "line 4: a value nested past 100000 items"),
    ("x = '%999999999d' % 1", "line 1: %-format field wider than 99"),  # gigabytes of padding
    ("x = '%*d' % (10**9, 1)", "line 1: %-format field wider than 99"),
    ("x = 'a' * 9000\nfor i in range(10):\n    x = str([x, x])", "line 3: a value with 18008 items exceeds the limit of 10000"),
    ("a = [1] * 5000\nz = zip(" + ", ".join(["a"] * 2000) + ")", "line 2: a call with 2000 arguments (32 at most)"),
    ("a = [1] * 5000\nz = zip(" + ", ".join(["a"] * 30) + ")", "line 2: zip() result would exceed 100000 items"),
    # an interface error message that formatted its argument in full
    ("a = [1]\nfor i in range(15):\n    a = [a, a]\nmove_to_by_shortest_time(a)", "line 4: move_to_by_shortest_time: node id must be an integer, got list a list of 2 items"),
]


@pytest.mark.parametrize("code,reason", C_LEVEL, ids=[f"clevel{i:02d}" for i in range(len(C_LEVEL))])
def test_c_level_gaps_are_rejected_at_the_source(ctx, code, reason):
    plan = parse_response("```python\n" + code + "\n```", [0], ctx)[0]
    assert not plan.executed and plan.error.startswith(reason), plan.error


def test_membership_in_a_huge_range_is_answered_without_a_scan(ctx):
    code = "if 0.5 not in range(10**18) and 2.0 in range(10**18) and 7 in range(10**18) and 'a' not in range(10**18):\n    move_to_by_shortest_time(3)"
    plan = parse_response(code, [0], ctx)[0]
    assert plan.executed and plan.instructions[0].node == 3


def test_json_integers_past_pythons_digit_limit_are_a_rejection_not_a_crash(ctx):
    huge = '{"plans": [{"agent": 0, "route": [' + "9" * 5000 + "]}]}"
    assert parse_response(huge, [0], ctx)[0].error.startswith("response looks like JSON but is not a valid JSON object")
    # beside a valid program, the program still runs
    plan = parse_response("```python\nmove_to_by_shortest_time(3)\n```\n```json\n" + huge + "\n```", [0], ctx)[0]
    assert plan.executed and plan.instructions[0].node == 3


def test_an_unforeseen_python_error_in_a_plan_is_its_rejection():
    """Whatever escapes the checks as a Python exception ends as a PlanError with its type and message."""

    def broken():
        raise KeyError("inside an interface function")

    with pytest.raises(PlanError, match="plan failed: KeyError: 'inside an interface function'"):
        run_program(parse_program("broken()"), {"broken": broken}, {})


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
