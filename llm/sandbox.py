"""A restricted interpreter for plans written by an LLM. Nothing here calls exec or eval.

A plan program is parsed with `ast` and walked by `Interpreter`, which knows a
small, whitelisted subset of Python:

* literals (numbers, strings, booleans, None, lists, tuples, dicts), names,
  assignment (also tuple unpacking, `x[i] = v`, `x += 1`), arithmetic,
  comparison, boolean logic, `a if c else b`, f-strings;
* `if`/`elif`/`else`, `for` over a list, tuple, dict or `range`, `break`,
  `continue`, `pass`, list comprehensions and generator expressions;
* simple helper functions: `def f(a, b): ... return ...` with positional
  parameters only (no defaults, decorators, closures over locals, or *args);
* calls to the Table II interface (llm.interface) and a few safe builtins.

Everything else is rejected with a reason before anything runs: imports,
attribute access (which also rules out `__class__` walks), names with a leading
underscore, `while`, `lambda`, `try`, `with`, classes, `global`, and so on.
While running, the interpreter bounds the number of evaluation steps (infinite
or huge loops), wall-clock time, helper-call depth (recursion), container and
string sizes and integer magnitudes (memory). Values are also bounded through
their nesting (`max_expanded_items`): a list that holds another list twice, or
itself, is what makes a C-level repr, ==, hash or sort take exponential or
endless time, so every value a plan builds, stores, compares, hashes, formats or
sorts is walked first with a budget (the walk stops as soon as it is over it).
Any failure is a `PlanError` naming the line and the problem, so it can be
counted and fed back. The interpreter's budgets are the first line of defence;
`llm.isolation` runs plans in a worker process under OS limits as the guarantee.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import operator
import re
import sys
import time
from collections.abc import Callable

from llm.interface import INTERFACE_NAMES, PlanError, expanded_size, short_repr


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    max_source_chars: int = 20_000
    max_ast_nodes: int = 4_000
    max_ast_depth: int = 40
    max_steps: int = 200_000  # evaluated AST nodes per program run
    max_seconds: float = 2.0
    max_call_depth: int = 8
    max_items: int = 10_000  # elements of any list/tuple/dict, characters of any string
    max_total_items: int = 1_000_000  # elements and characters allocated over the whole run (memory bound)
    max_expanded_items: int = 100_000  # elements and characters of a value through all its nesting, with repeats
    max_int_bits: int = 128
    max_call_args: int = 32  # arguments of one call (zip(a, a, ..., a) with thousands of them)
    max_round_digits: int = 30  # |ndigits| of round(x, ndigits)
    max_format_width: int = 99  # width and precision of a %-format field


_BIN_OPS: dict[type, Callable] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_CMP_OPS: dict[type, Callable] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}
_UNARY_OPS: dict[type, Callable] = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}

# Node types a program may contain at all; anything else is rejected by `check_program`.
_ALLOWED_NODES = (
    ast.Module, ast.Expr, ast.Assign, ast.AugAssign, ast.If, ast.For, ast.Break, ast.Continue, ast.Pass,
    ast.FunctionDef, ast.Return, ast.arguments, ast.arg,
    ast.Constant, ast.Name, ast.Load, ast.Store, ast.List, ast.Tuple, ast.Dict,
    ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp, ast.Call, ast.keyword,
    ast.Subscript, ast.Slice, ast.ListComp, ast.GeneratorExp, ast.comprehension,
    ast.JoinedStr, ast.FormattedValue, ast.And, ast.Or,
    *_BIN_OPS, *_CMP_OPS, *_UNARY_OPS,
)
_WHY_NOT = {
    ast.Import: "imports are not allowed",
    ast.ImportFrom: "imports are not allowed",
    ast.Attribute: "attribute access (x.y) is not allowed; use the interface functions and builtins",
    ast.While: "`while` loops are not allowed; use `for` over range(...) or a list",
    ast.Lambda: "`lambda` is not allowed; define a helper with `def`",
    ast.Try: "`try` is not allowed",
    ast.With: "`with` is not allowed",
    ast.ClassDef: "classes are not allowed",
    ast.Global: "`global` is not allowed",
    ast.Nonlocal: "`nonlocal` is not allowed",
    ast.Delete: "`del` is not allowed",
    ast.Raise: "`raise` is not allowed",
    ast.Assert: "`assert` is not allowed",
    ast.AsyncFunctionDef: "async code is not allowed",
    ast.Await: "async code is not allowed",
    ast.Yield: "generators are not allowed",
    ast.YieldFrom: "generators are not allowed",
    ast.NamedExpr: "the walrus operator is not allowed",
    ast.Starred: "star-unpacking is not allowed",
    ast.Set: "sets are not allowed; use a list",
    ast.SetComp: "set comprehensions are not allowed",
    ast.DictComp: "dict comprehensions are not allowed",
}
_FORMAT_SPEC = re.compile(r"^[<>^]?[+\- ]?\d{0,2}(\.\d{1,2})?[dfegs%]?$")
# A printf-style field of `str % args`: its width and precision are checked before formatting.
_PERCENT_FIELD = re.compile(r"%(?:\([^)]*\))?[-+ #0]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


class _Return(Exception):
    def __init__(self, value):
        self.value = value


@dataclasses.dataclass(frozen=True)
class _Helper:
    """A `def` from the plan: parameters and body, run by the interpreter."""

    name: str
    params: tuple[str, ...]
    body: list


def parse_program(source: str, limits: SandboxLimits = SandboxLimits()) -> ast.Module:
    """Parse and statically check a plan program; raises PlanError with the reason."""
    if not isinstance(source, str):
        raise PlanError(f"plan code must be a string, got {type(source).__name__}")
    if len(source) > limits.max_source_chars:
        raise PlanError(f"plan code has {len(source)} characters; at most {limits.max_source_chars} allowed")
    try:
        tree = ast.parse(source, mode="exec")
    except SyntaxError as err:
        raise PlanError(f"syntax error on line {err.lineno}: {err.msg}" if err.lineno else f"syntax error: {err.msg}") from None
    except (RecursionError, MemoryError, ValueError) as err:
        raise PlanError(f"plan code could not be parsed ({type(err).__name__}: too deeply nested or invalid)") from None
    check_program(tree, limits)
    return tree


def check_program(tree: ast.Module, limits: SandboxLimits) -> None:
    """Reject any construct outside the whitelist, before running anything."""
    count = 0
    stack = [(tree, 0, 1)]
    while stack:
        node, depth, parent_line = stack.pop()
        count += 1
        line = getattr(node, "lineno", parent_line)  # operators and contexts have none: their expression's line
        if count > limits.max_ast_nodes:
            raise PlanError(f"plan code is too long ({limits.max_ast_nodes} syntax nodes at most)")
        if depth > limits.max_ast_depth:
            raise PlanError(f"line {line}: expression nested too deeply (depth {limits.max_ast_depth} at most)")
        if not isinstance(node, _ALLOWED_NODES):
            why = _WHY_NOT.get(type(node), f"`{type(node).__name__}` is not allowed")
            raise PlanError(f"line {line}: {why}")
        name = None
        if isinstance(node, ast.Name):
            name = node.id
        elif isinstance(node, ast.arg):
            name = node.arg
        elif isinstance(node, ast.FunctionDef):
            name = node.name
            args = node.args
            if node.decorator_list or args.defaults or args.kw_defaults or args.vararg or args.kwarg or args.kwonlyargs or args.posonlyargs:
                raise PlanError(f"line {line}: helper `{node.name}` may only take plain positional parameters")
            if node.name in INTERFACE_NAMES or node.name in _BUILTIN_NAMES:
                raise PlanError(f"line {line}: cannot redefine built-in `{node.name}`")
        elif isinstance(node, ast.keyword) and node.arg is None:
            raise PlanError(f"line {line}: `**` arguments are not allowed")
        elif isinstance(node, ast.comprehension) and node.is_async:
            raise PlanError(f"line {line}: async code is not allowed")
        elif isinstance(node, ast.Call) and len(node.args) + len(node.keywords) > limits.max_call_args:
            raise PlanError(f"line {line}: a call with {len(node.args) + len(node.keywords)} arguments ({limits.max_call_args} at most)")
        if name is not None and name.startswith("_"):
            raise PlanError(f"line {line}: names starting with '_' (such as {name!r}) are not allowed")
        for child in ast.iter_child_nodes(node):
            # Annotations and return annotations are never evaluated; skip them.
            if isinstance(node, ast.arg) and child is node.annotation:
                continue
            if isinstance(node, ast.FunctionDef) and child is node.returns:
                continue
            stack.append((child, depth + 1, line))


_BUILTIN_NAMES = frozenset(
    {"len", "min", "max", "range", "abs", "round", "int", "float", "str", "bool", "sum", "sorted",
     "list", "tuple", "enumerate", "zip", "reversed", "print", "True", "False", "None"}
)


class Interpreter:
    """Runs one checked program against a set of interface callables and initial variables."""

    def __init__(self, functions: dict[str, Callable], variables: dict, limits: SandboxLimits = SandboxLimits(), on_line=None):
        self.limits = limits
        self.functions = dict(functions)
        self.globals = dict(variables)
        self.steps = 0
        self.allocated = 0
        self.depth = 0
        self.deadline = 0.0
        self.on_line = on_line  # called with the line number before each interface call
        self.builtins: dict[str, Callable] = {
            "len": self._len, "min": self._min, "max": self._max, "range": self._range, "abs": abs,
            "round": self._round, "int": self._int, "float": float, "str": self._str, "bool": bool,
            "sum": self._sum, "sorted": self._sorted, "list": self._list, "tuple": self._tuple,
            "enumerate": self._enumerate, "zip": self._zip, "reversed": self._reversed, "print": self._print,
        }

    # ----------------------------------------------------------------- running
    def run(self, tree: ast.Module) -> None:
        self.deadline = time.perf_counter() + self.limits.max_seconds
        try:
            self._block(tree.body, self.globals)
        except (_Break, _Continue):
            raise PlanError("`break`/`continue` outside a loop") from None
        except _Return:
            raise PlanError("`return` outside a helper function") from None
        except RecursionError:
            raise PlanError("plan nests too deeply (recursion limit)") from None
        except MemoryError:
            raise PlanError("plan ran out of memory") from None
        except PlanError:
            raise
        except Exception as err:  # a Python error the checks above did not foresee: still the plan's failure, with its reason
            raise PlanError(f"plan failed: {type(err).__name__}: {str(err)[:200]}") from None

    def _tick(self, node) -> None:
        self.steps += 1
        if self.steps > self.limits.max_steps:
            raise PlanError(f"line {getattr(node, 'lineno', 0)}: step budget of {self.limits.max_steps} exceeded (loop too long or infinite)")
        if self.steps % 1024 == 0 and time.perf_counter() > self.deadline:
            raise PlanError(f"line {getattr(node, 'lineno', 0)}: time budget of {self.limits.max_seconds} s exceeded")

    def _block(self, body, scope) -> None:
        for stmt in body:
            self._stmt(stmt, scope)

    def _stmt(self, node, scope) -> None:
        self._tick(node)
        if isinstance(node, ast.Expr):
            self._eval(node.value, scope)
        elif isinstance(node, ast.Assign):
            value = self._eval(node.value, scope)
            for target in node.targets:
                self._assign(target, value, scope)
        elif isinstance(node, ast.AugAssign):
            current = self._eval(_as_load(node.target), scope)
            self._assign(node.target, self._binop(node.op, current, self._eval(node.value, scope), node), scope)
        elif isinstance(node, ast.If):
            self._block(node.body if self._truth(self._eval(node.test, scope), node) else node.orelse, scope)
        elif isinstance(node, ast.For):
            self._for(node, scope)
        elif isinstance(node, ast.Break):
            raise _Break
        elif isinstance(node, ast.Continue):
            raise _Continue
        elif isinstance(node, ast.Pass):
            pass
        elif isinstance(node, ast.FunctionDef):
            scope[node.name] = _Helper(node.name, tuple(a.arg for a in node.args.args), node.body)
        elif isinstance(node, ast.Return):
            raise _Return(None if node.value is None else self._eval(node.value, scope))
        else:  # unreachable after check_program
            raise PlanError(f"line {node.lineno}: statement `{type(node).__name__}` is not allowed")

    def _for(self, node: ast.For, scope) -> None:
        items = self._iterable(self._eval(node.iter, scope), node)
        broke = False
        for item in items:
            self._tick(node)
            self._assign(node.target, item, scope)
            try:
                self._block(node.body, scope)
            except _Break:
                broke = True
                break
            except _Continue:
                continue
        if not broke:
            self._block(node.orelse, scope)

    def _assign(self, target, value, scope) -> None:
        if isinstance(target, ast.Name):
            if target.id in self.functions or target.id in self.builtins:
                raise PlanError(f"line {target.lineno}: cannot assign to built-in name `{target.id}`")
            scope[target.id] = value
        elif isinstance(target, (ast.Tuple, ast.List)):
            values = self._iterable(value, target)
            if len(values) != len(target.elts):
                raise PlanError(f"line {target.lineno}: cannot unpack {len(values)} values into {len(target.elts)} names")
            for t, v in zip(target.elts, values):
                self._assign(t, v, scope)
        elif isinstance(target, ast.Subscript):
            container = self._eval(target.value, scope)
            key = self._eval(target.slice, scope)
            if not isinstance(container, (list, dict)):
                raise PlanError(f"line {target.lineno}: only list and dict items can be assigned")
            self._check_expanded(key, target)
            try:
                container[key] = value
            except (IndexError, KeyError, TypeError) as err:
                raise PlanError(f"line {target.lineno}: {type(err).__name__}: {err}") from None
            if len(container) > self.limits.max_items:
                raise PlanError(f"line {target.lineno}: a value with {len(container)} items exceeds the limit of {self.limits.max_items}")
            if isinstance(value, (list, tuple, dict)):  # storing a container may nest it (or the container in itself)
                self._check_expanded(container, target)
            self._charge(1, target)
        else:
            raise PlanError(f"line {getattr(target, 'lineno', 0)}: cannot assign to this expression")

    # -------------------------------------------------------------- expressions
    def _eval(self, node, scope):
        self._tick(node)
        if isinstance(node, ast.Constant):
            if not isinstance(node.value, (int, float, str, bool, type(None))):
                raise PlanError(f"line {node.lineno}: constants of type {type(node.value).__name__} are not allowed")
            return self._check_size(node.value, node)
        if isinstance(node, ast.Name):
            return self._lookup(node, scope)
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [self._eval(e, scope) for e in node.elts]
            return self._check_size(items if isinstance(node, ast.List) else tuple(items), node)
        if isinstance(node, ast.Dict):
            if any(k is None for k in node.keys):
                raise PlanError(f"line {node.lineno}: `**` in dict literals is not allowed")
            out = {}
            for k, v in zip(node.keys, node.values):
                key = self._eval(k, scope)
                if not isinstance(key, (int, float, str, bool, tuple, type(None))):
                    raise PlanError(f"line {node.lineno}: dict keys must be numbers, strings or tuples")
                self._check_expanded(key, node)
                value = self._eval(v, scope)
                try:
                    out[key] = value
                except TypeError:
                    raise PlanError(f"line {node.lineno}: dict keys must be numbers, strings or tuples of them (a tuple holding a list is not a key)") from None
            return self._check_size(out, node)
        if isinstance(node, ast.BinOp):
            return self._binop(node.op, self._eval(node.left, scope), self._eval(node.right, scope), node)
        if isinstance(node, ast.UnaryOp):
            operand = self._eval(node.operand, scope)
            if isinstance(node.op, ast.Not):
                return not self._truth(operand, node)
            if not _is_number(operand):
                raise PlanError(f"line {node.lineno}: unary minus/plus needs a number, got {type(operand).__name__}")
            return _UNARY_OPS[type(node.op)](operand)
        if isinstance(node, ast.BoolOp):
            is_and = isinstance(node.op, ast.And)
            value = None
            for operand in node.values:
                value = self._eval(operand, scope)
                if self._truth(value, node) != is_and:
                    return value
            return value
        if isinstance(node, ast.Compare):
            left = self._eval(node.left, scope)
            for op, comparator in zip(node.ops, node.comparators):
                right = self._eval(comparator, scope)
                self._check_expanded(left, node)
                self._check_expanded(right, node)
                try:
                    if isinstance(op, (ast.In, ast.NotIn)) and isinstance(right, range):
                        ok = _in_range(left, right) == isinstance(op, ast.In)
                    else:
                        ok = _CMP_OPS[type(op)](left, right)
                except TypeError as err:
                    raise PlanError(f"line {node.lineno}: TypeError: {err}") from None
                if not ok:
                    return False
                left = right
            return True
        if isinstance(node, ast.IfExp):
            return self._eval(node.body if self._truth(self._eval(node.test, scope), node) else node.orelse, scope)
        if isinstance(node, ast.Call):
            return self._call_node(node, scope)
        if isinstance(node, ast.Subscript):
            return self._subscript(node, scope)
        if isinstance(node, (ast.ListComp, ast.GeneratorExp)):
            return self._comprehension(node, scope)
        if isinstance(node, ast.JoinedStr):
            parts = []
            for value in node.values:
                parts.append(value.value if isinstance(value, ast.Constant) else self._format(value, scope))
            return self._check_size("".join(parts), node)
        raise PlanError(f"line {getattr(node, 'lineno', 0)}: expression `{type(node).__name__}` is not allowed")

    def _lookup(self, node: ast.Name, scope):
        name = node.id
        if name in scope:
            return scope[name]
        if name in self.globals:
            return self.globals[name]
        if name in self.functions:
            return self.functions[name]
        if name in self.builtins:
            return self.builtins[name]
        raise PlanError(f"line {node.lineno}: name `{name}` is not defined")

    def _format(self, node: ast.FormattedValue, scope) -> str:
        value = self._eval(node.value, scope)
        spec = ""
        if node.format_spec is not None:
            spec = self._eval(node.format_spec, scope)
            if not _FORMAT_SPEC.match(spec):
                raise PlanError(f"line {node.lineno}: format spec {spec!r:.20} is not allowed")
        self._check_expanded(value, node)
        try:
            return format(value, spec) if spec else self._str(value)
        except (ValueError, TypeError) as err:
            raise PlanError(f"line {node.lineno}: {type(err).__name__}: {err}") from None

    def _binop(self, op, left, right, node):
        line = getattr(node, "lineno", 0)
        kind = type(op)
        if kind not in _BIN_OPS:
            raise PlanError(f"line {line}: operator `{kind.__name__}` is not allowed")
        # Bound memory before computing: repetition and huge powers.
        if kind is ast.Mult and isinstance(left, (str, list, tuple)) != isinstance(right, (str, list, tuple)):
            seq, times = (left, right) if isinstance(left, (str, list, tuple)) else (right, left)
            if isinstance(times, int) and len(seq) * max(times, 0) > self.limits.max_items:
                raise PlanError(f"line {line}: result would exceed {self.limits.max_items} items")
        if kind is ast.Mod and isinstance(left, str):
            for width, precision in _PERCENT_FIELD.findall(left):
                if "*" in (width, precision) or max(int(width or 0), int(precision or 0)) > self.limits.max_format_width:
                    raise PlanError(f"line {line}: %-format field wider than {self.limits.max_format_width} (or a * width) is not allowed")
            self._check_expanded(right, node)
        if kind is ast.Pow and _is_number(left) and _is_number(right):
            if isinstance(right, (int, float)) and abs(right) > 1024:
                raise PlanError(f"line {line}: exponent {right} is too large")
            if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left).bit_length() * right > self.limits.max_int_bits:
                raise PlanError(f"line {line}: integer result would exceed {self.limits.max_int_bits} bits")
        try:
            result = _BIN_OPS[kind](left, right)
        except (TypeError, ZeroDivisionError, OverflowError, ValueError) as err:
            raise PlanError(f"line {line}: {type(err).__name__}: {err}") from None
        if isinstance(result, complex):
            raise PlanError(f"line {line}: complex numbers are not allowed")
        return self._check_size(result, node)

    def _subscript(self, node: ast.Subscript, scope):
        container = self._eval(node.value, scope)
        if not isinstance(container, (list, tuple, dict, str, range)):
            raise PlanError(f"line {node.lineno}: cannot index {_a(type(container).__name__)}")
        if isinstance(node.slice, ast.Slice):
            bounds = [None if part is None else self._eval(part, scope) for part in (node.slice.lower, node.slice.upper, node.slice.step)]
            if not all(b is None or (isinstance(b, int) and not isinstance(b, bool)) for b in bounds):
                raise PlanError(f"line {node.lineno}: slice bounds must be integers")
            if isinstance(container, dict):
                raise PlanError(f"line {node.lineno}: cannot slice a dict")
            key = slice(*bounds)
        else:
            key = self._eval(node.slice, scope)
            self._check_expanded(key, node)
        try:
            return container[key]
        except KeyError:
            raise PlanError(f"line {node.lineno}: KeyError: {short_repr(key)}") from None
        except (IndexError, TypeError, ValueError) as err:
            raise PlanError(f"line {node.lineno}: {type(err).__name__}: {err}") from None

    def _comprehension(self, node, scope):
        if len(node.generators) != 1:
            raise PlanError(f"line {node.lineno}: comprehensions may have one `for` clause")
        gen = node.generators[0]
        inner = dict(scope)
        out = []
        for item in self._iterable(self._eval(gen.iter, scope), node):
            self._tick(node)
            self._assign(gen.target, item, inner)
            if all(self._truth(self._eval(cond, inner), node) for cond in gen.ifs):
                out.append(self._eval(node.elt, inner))
                if len(out) > self.limits.max_items:
                    raise PlanError(f"line {node.lineno}: a list with more than {self.limits.max_items} items exceeds the limit")
        return self._check_size(out, node)

    # -------------------------------------------------------------------- calls
    def _call_node(self, node: ast.Call, scope):
        if not isinstance(node.func, ast.Name):
            raise PlanError(f"line {node.lineno}: only named functions can be called")
        func = self._lookup(node.func, scope)
        args = [self._eval(a, scope) for a in node.args]
        kwargs = {kw.arg: self._eval(kw.value, scope) for kw in node.keywords}
        return self._call(func, args, kwargs, node)

    def _call(self, func, args, kwargs, node):
        # node is None for calls made by a builtin (a `key=` function): the builtin's call adds the line.
        line = getattr(node, "lineno", None)
        at = f"line {line}: " if line else ""
        if isinstance(func, _Helper):
            if kwargs or len(args) != len(func.params):
                raise PlanError(f"{at}helper `{func.name}` takes {len(func.params)} positional arguments")
            if self.depth >= self.limits.max_call_depth:
                raise PlanError(f"{at}helper calls nested deeper than {self.limits.max_call_depth} (recursion is not allowed to run away)")
            self.depth += 1
            local = dict(zip(func.params, args))
            try:
                self._block(func.body, _Scope(local, self.globals))
            except _Return as ret:
                return ret.value
            except (_Break, _Continue):
                raise PlanError(f"{at}`break`/`continue` outside a loop") from None
            finally:
                self.depth -= 1
            return None
        if func in self.functions.values():
            if self.on_line is not None and line:
                self.on_line(line)
            _check_arity(func, args, kwargs, at)
            try:
                return func(*args, **kwargs)
            except PlanError as err:
                raise _with_line(at, err) from None
        if func in self.builtins.values():
            if kwargs and func not in (self._min, self._max, self._sorted, self._print):
                raise PlanError(f"{at}keyword arguments are not supported for this builtin")
            try:
                return self._check_size(func(*args, **kwargs), node)
            except PlanError as err:
                raise _with_line(at, err) from None
            except (TypeError, ValueError, OverflowError, ZeroDivisionError) as err:
                raise PlanError(f"{at}{type(err).__name__}: {err}") from None
        raise PlanError(f"{at}{_a(type(func).__name__)} is not callable")

    # ------------------------------------------------------------ safe builtins
    def _iterable(self, value, node) -> list | range | tuple:
        if isinstance(value, range):
            return value  # lazily iterated; every iteration is a counted step
        if isinstance(value, (list, tuple, str)):
            return value
        if isinstance(value, dict):
            return list(value)
        raise PlanError(f"line {getattr(node, 'lineno', 0)}: cannot iterate over {_a(type(value).__name__)}")

    def _materialize(self, value) -> list:
        items = self._iterable(value, None)
        if len(items) > self.limits.max_items:
            raise PlanError(f"sequence of {len(items)} items exceeds {self.limits.max_items}")
        self.steps += len(items)
        items = list(items)
        self._check_expanded(items, None)  # sorted/min/max compare the items, which may nest
        return items

    def _keyed(self, key):
        if key is None:
            return lambda x: x
        return lambda x: self._call(key, [x], {}, None)

    def _minmax(self, pick, args, key, default, name):
        items = self._materialize(args[0]) if len(args) == 1 else list(args)
        if not items:
            if default is not _MISSING:
                return default
            raise PlanError(f"{name}() of an empty sequence")
        return pick(items, key=self._keyed(key))

    def _min(self, *args, key=None, default=None):
        return self._minmax(min, args, key, _MISSING if default is None else default, "min")

    def _max(self, *args, key=None, default=None):
        return self._minmax(max, args, key, _MISSING if default is None else default, "max")

    def _sorted(self, value, key=None, reverse=False):
        return sorted(self._materialize(value), key=self._keyed(key), reverse=bool(reverse))

    def _len(self, value):
        if not isinstance(value, (list, tuple, dict, str, range)):
            raise PlanError(f"len() of {_a(type(value).__name__)}")
        return len(value)

    def _range(self, *args):
        if not all(isinstance(a, int) and not isinstance(a, bool) for a in args):
            raise PlanError("range() arguments must be integers")
        r = range(*args)
        try:
            len(r)  # unpacking, len() and indexing need a length that fits a machine integer
        except OverflowError:
            raise PlanError(f"range() with more than {sys.maxsize} elements") from None
        return r

    def _round(self, value, digits=None):
        if not _is_number(value):
            raise PlanError(f"round() needs a number, got {type(value).__name__}")
        if digits is None:
            return round(value)
        if not _is_number(digits) or abs(digits) > self.limits.max_round_digits:
            raise PlanError(f"round() digits must be a number between -{self.limits.max_round_digits} and {self.limits.max_round_digits}")
        return round(value, int(digits))

    def _int(self, value=0):
        if isinstance(value, str) and len(value) > 40:
            raise PlanError("int() of a string longer than 40 characters")
        return int(value)

    def _str(self, value=""):
        if isinstance(value, (list, tuple, dict)) and len(value) > 1000:
            raise PlanError("str() of a container with more than 1000 items")
        self._check_expanded(value, None)
        return str(value)

    def _sum(self, value, start=0):
        items = self._materialize(value)
        if not all(_is_number(x) for x in items) or not _is_number(start):
            raise PlanError("sum() adds numbers only")  # lists would concatenate in quadratic time
        return sum(items, start)

    def _list(self, value=()):
        return self._materialize(value)

    def _tuple(self, value=()):
        return tuple(self._materialize(value))

    def _enumerate(self, value, start=0):
        return list(enumerate(self._materialize(value), start))

    def _zip(self, *values):
        lists = [self._materialize(v) for v in values]
        if lists and min(map(len, lists)) * (len(lists) + 1) > self.limits.max_expanded_items:
            raise PlanError(f"zip() result would exceed {self.limits.max_expanded_items} items")
        return list(zip(*lists))

    def _reversed(self, value):
        return list(reversed(self._materialize(value)))

    def _print(self, *args, **kwargs):
        return None  # plans may print; output is discarded

    # ------------------------------------------------------------------ checks
    def _truth(self, value, node) -> bool:
        if isinstance(value, (int, float, str, bool, list, tuple, dict, range, type(None))):
            return bool(value)
        raise PlanError(f"line {getattr(node, 'lineno', 0)}: {_a(type(value).__name__)} has no truth value here")

    def _check_size(self, value, node):
        line = getattr(node, "lineno", 0)
        if isinstance(value, (list, tuple, dict, str)):
            if len(value) > self.limits.max_items:
                raise PlanError(f"line {line}: a value with {len(value)} items exceeds the limit of {self.limits.max_items}")
            self._check_expanded(value, node)
            self._charge(len(value), node)
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > self.limits.max_int_bits:
            raise PlanError(f"line {line}: integer exceeds {self.limits.max_int_bits} bits")
        return value

    def _check_expanded(self, value, node) -> None:
        """Refuse a value that expands past `max_expanded_items` through its nesting (see module doc)."""
        if not isinstance(value, (list, tuple, dict)):
            return
        size = expanded_size(value, self.limits.max_expanded_items)
        at = f"line {node.lineno}: " if getattr(node, "lineno", None) else ""
        if size > self.limits.max_expanded_items:
            raise PlanError(f"{at}a value nested past {self.limits.max_expanded_items} items (a container repeated inside itself, or holding itself)")
        if size > 1024 and time.perf_counter() > self.deadline:  # one step may walk (and then compare or format) this much
            raise PlanError(f"{at}time budget of {self.limits.max_seconds} s exceeded")

    def _charge(self, n: int, node) -> None:
        self.allocated += n
        if self.allocated > self.limits.max_total_items:
            raise PlanError(f"line {getattr(node, 'lineno', 0)}: plan allocated more than {self.limits.max_total_items} items in total (memory limit)")


class _Scope(dict):
    """A helper's local variables; reads fall back to the program's globals (no writes to them)."""

    def __init__(self, local: dict, outer: dict):
        super().__init__(local)
        self._outer = outer

    def __contains__(self, key):
        return dict.__contains__(self, key) or key in self._outer

    def __getitem__(self, key):
        return dict.__getitem__(self, key) if dict.__contains__(self, key) else self._outer[key]


_MISSING = object()


def _with_line(at: str, err: PlanError) -> PlanError:
    """The error with `at` ("line N: ") in front, unless it already names its line."""
    message = str(err)
    return PlanError(message if message.startswith("line ") else at + message)


def _a(noun: str) -> str:
    return ("an " if noun[:1] in "aeiou" else "a ") + noun


def _check_arity(func, args, kwargs, at: str) -> None:
    """An interface function called with the wrong arguments: say which it takes (not Python's bound-method message)."""
    signature = inspect.signature(func)
    try:
        signature.bind(*args, **kwargs)
    except TypeError:
        names = ", ".join(signature.parameters) or "no arguments"
        raise PlanError(f"{at}{func.__name__}() takes ({names}), got {len(args) + len(kwargs)} argument(s)") from None


def _in_range(value, r: range) -> bool:
    """`value in r` without Python's element-by-element scan for non-integers (endless on a huge range)."""
    if isinstance(value, int):
        return value in r
    if isinstance(value, float) and value.is_integer():
        return int(value) in r
    return False


def _is_number(value) -> bool:
    return isinstance(value, (int, float))


def _as_load(target):
    """The load form of an augmented-assignment target (`x += 1` reads x first)."""
    if isinstance(target, ast.Name):
        return ast.Name(id=target.id, ctx=ast.Load(), lineno=target.lineno)
    if isinstance(target, ast.Subscript):
        return ast.Subscript(value=target.value, slice=target.slice, ctx=ast.Load(), lineno=target.lineno)
    raise PlanError(f"line {getattr(target, 'lineno', 0)}: cannot use augmented assignment here")


def run_program(tree: ast.Module, functions: dict[str, Callable], variables: dict, limits: SandboxLimits = SandboxLimits(), on_line=None) -> None:
    """Interpret a checked program once; raises PlanError on any failure."""
    Interpreter(functions, variables, limits, on_line).run(tree)


__all__ = ["SandboxLimits", "parse_program", "check_program", "run_program", "Interpreter", "PlanError"]
