"""A corpus of hostile plan responses (issue 18): escapes, C-level hangs and memory bombs, malformed JSON.

Each entry is (name, response text) as an LLM could send it. `benchmarks/sandbox_hostile.py` feeds every
one through `ExpertService.plan` (the trainer's call) with plans isolated in a worker process, twice: with
the interpreter's budgets (the first line of defence) and with them lifted (the worker's OS limits alone).
tests/test_isolation.py runs a sample of it.
"""

from __future__ import annotations


def _py(code: str) -> str:
    return "```python\n" + code + "\n```"


_DAG = "a = [1]\nfor i in range(40):\n    a = [a, a]\n"

CORPUS: list[tuple[str, str]] = [
    # escapes from the interpreter
    ("import", _py("import os\nos.system('true')")),
    ("dunder-walk", _py("().__class__.__bases__[0].__subclasses__()")),
    ("dunder-import", _py("__import__('os').system('true')")),
    ("eval", _py("eval('1+1')")),
    ("open", _py("open('/etc/passwd').read()")),
    ("getattr", _py("getattr(get_origin, '__globals__')")),
    ("format-attr", _py("'{0.__class__}'.format(1)")),
    ("lambda", _py("f = lambda: 1")),
    ("class", _py("class A:\n    pass")),
    ("try", _py("try:\n    pass\nexcept Exception:\n    pass")),
    # loops and recursion
    ("while", _py("while True:\n    pass")),
    ("long-for", _py("for i in range(10**12):\n    pass")),
    ("nested-for", _py("for i in range(10**6):\n    for j in range(10**6):\n        pass")),
    ("recursion", _py("def f(n):\n    return f(n + 1)\nf(0)")),
    ("mutual-recursion", _py("def f(n):\n    return g(n)\ndef g(n):\n    return f(n)\nf(0)")),
    # memory
    ("big-list", _py("x = [0] * 10**9")),
    ("big-string", _py("x = 'a' * 10**10")),
    ("list-of-lists", _py("x = [[0] * 9000 for i in range(9000)]")),
    ("big-int", _py("x = 10 ** 10 ** 10")),
    ("int-growth", _py("x = 7\nfor i in range(100):\n    x = x * x")),
    ("percent-width", _py("x = '%999999999d' % 1")),
    ("percent-star", _py("x = '%*d' % (10**9, 1)")),
    ("nested-str", _py("x = 'a' * 9000\nfor i in range(20):\n    x = str([x, x])")),
    ("zip-2000", _py("a = [1] * 5000\nz = zip(" + ", ".join(["a"] * 2000) + ")")),
    ("zip-30", _py("a = [1] * 5000\nz = zip(" + ", ".join(["a"] * 30) + ")")),
    ("grow-after-nesting", _py("x = [0]\ny = [x] * 50\nx[0] = 'a' * 9000\nz = str(y)")),
    # C-level time
    ("sum-lists", _py("x = sum([[1] * 1000] * 1000, [])")),
    ("round-huge-digits", _py("x = round(10**30, -10**18)")),
    ("in-huge-range", _py("x = 0.5 in range(10**18)\ny = 'a' in range(10**18)")),
    ("dag-repr", _py(_DAG + "s = str(a)")),
    ("dag-compare", _py(_DAG + "b = a == a")),
    ("dag-hash", _py("t = (1,)\nfor i in range(40):\n    t = (t, t)\nd = {t: 1}")),
    ("dag-sort", _py("a = [1]\nfor i in range(15):\n    a = [a, a]\nx = sorted([a] * 5)")),
    ("self-reference", _py("a = [0]\na[0] = a\nb = a == a")),
    ("cycle-via-other", _py("a = [0]\nb = [a]\na[0] = b\ns = str(a)")),
    ("dag-in-error-message", _py("a = [1]\nfor i in range(15):\n    a = [a, a]\nmove_to_by_shortest_time(a)")),
    # crashes that left plan() before issue 18
    ("unpack-huge-range", _py("a, b = range(10**30)")),
    ("len-huge-range", _py("n = len(range(10**30))")),
    ("unhashable-key", _py("d = {(1, [2]): 3}")),
    ("huge-json-int", '{"plans": [{"agent": 0, "route": [' + "9" * 5000 + "]}]}"),
    ("huge-json-int-beside-plan", _py("move_to_by_shortest_time(get_destination())") + "\n```json\n{\"x\": " + "9" * 5000 + "}\n```"),
    ("deep-json", "{\"plans\": " + "[" * 100_000 + "]" * 100_000 + "}"),
    ("deep-expression", _py("x = " + "-" * 3000 + "1")),
    ("deep-parens", _py("x = " + "(" * 300 + "1" + ")" * 300)),
    ("long-key-error", _py("d = {}\nx = d['" + "k" * 50_000 + "']")),
    ("surrogate", _py("x = '\ud800'\nmove_to_by_shortest_time(x)")),
    # malformed answers
    ("empty", ""),
    ("prose", "I would go left at the second junction."),
    ("truncated-json", '{"plans": [{"agent": 0, "code": "move_to'),
    ("wrong-json", '{"plans": 3}'),
    ("unknown-op", '{"plans": [{"agent": 0, "instructions": [{"op": "rm_rf", "node": 1}]}]}'),
    ("bad-route", '{"plans": [{"agent": 0, "route": [0, 999999]}]}'),
    ("nul-bytes", "\x00" * 1000),
    ("huge-text", "x" * 2_000_000),
]
