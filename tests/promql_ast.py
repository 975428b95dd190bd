"""Static analysis of PromQL on a real parser (the promql-parser package: Prometheus' grammar in Rust).

`output_labels(expr, labels_of)` says which labels every series an expression returns is sure to
carry, following aggregations (`by`, `without`), vector matching (`on`, `ignoring`,
`group_left/right`), `or`, and the functions that drop or add labels; `labels_of(metric)` gives
the labels a selected metric has (None: unknown, anything may be there). The rule and dashboard
lints (tests/test_rule_lint.py, tests/test_dashboards.py) build on it and on `selectors()` and
`range_functions()`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Callable, Iterator

import promql_parser as pp


class Any_:
    """The label set of a series whose labels are not known: every label may be there."""

    def __repr__(self) -> str:
        return "ANY"


ANY = Any_()

# Functions whose result has no labels at all, or is a scalar.
_NO_LABELS = {"time", "vector", "scalar", "pi", "minute", "hour", "day_of_month", "day_of_week", "days_in_month",
              "month", "year"}
# Functions that drop the metric name only (labels kept): everything else not listed below.
_DROPS = {"histogram_quantile": {"le"}}
# Functions whose label argument adds a label.
_ADDS_DST = {"label_replace": 1, "label_join": 1}  # index of the destination label argument


def parse(expr: str) -> pp.Expr:
    return pp.parse(expr)


def _children(node) -> list:
    if isinstance(node, pp.BinaryExpr):
        return [node.lhs, node.rhs]
    if isinstance(node, pp.AggregateExpr):
        return [node.expr] + ([node.param] if node.param is not None else [])
    if isinstance(node, (pp.ParenExpr, pp.UnaryExpr, pp.SubqueryExpr)):
        return [node.expr]
    if isinstance(node, pp.Call):
        return list(node.args)
    if isinstance(node, pp.MatrixSelector):
        return [node.vector_selector]
    return []


def nodes(node) -> Iterator:
    yield node
    for child in _children(node):
        yield from nodes(child)


def selectors(expr: str | pp.Expr) -> list[pp.VectorSelector]:
    tree = parse(expr) if isinstance(expr, str) else expr
    return [n for n in nodes(tree) if isinstance(n, pp.VectorSelector)]


def matchers(selector: pp.VectorSelector) -> dict[str, tuple[str, str]]:
    """Label -> (operator, value) of a selector's matchers ("=", "!=", "=~", "!~")."""
    ops = [(pp.MatchOp.Equal, "="), (pp.MatchOp.NotEqual, "!="), (pp.MatchOp.Re, "=~"), (pp.MatchOp.NotRe, "!~")]
    # (MatchOp values compare equal but do not hash)
    return {m.name: (next(text for op, text in ops if m.op == op), m.value) for m in selector.matchers.matchers}


def range_functions(expr: str | pp.Expr) -> list[tuple[str, timedelta]]:
    """(function, range) of every call over a range vector (rate(x[5m]) -> ("rate", 5m))."""
    tree = parse(expr) if isinstance(expr, str) else expr
    out = []
    for node in nodes(tree):
        if isinstance(node, pp.Call):
            for arg in node.args:
                if isinstance(arg, pp.MatrixSelector):
                    out.append((node.func.name, arg.range))
                elif isinstance(arg, pp.SubqueryExpr):
                    out.append((node.func.name, arg.range))
    return out


def _string(node) -> str | None:
    return node.val if isinstance(node, pp.StringLiteral) else None


def output_labels(expr: str | pp.Expr, labels_of: Callable[[str | None], "frozenset[str] | None"]):
    """Labels every output series is sure to carry (a frozenset), or ANY when unknown."""
    tree = parse(expr) if isinstance(expr, str) else expr
    return _labels(tree, labels_of)


def _labels(node, labels_of):
    if isinstance(node, pp.VectorSelector):
        known = labels_of(node.name)
        return ANY if known is None else frozenset(known)
    if isinstance(node, pp.MatrixSelector):
        return _labels(node.vector_selector, labels_of)
    if isinstance(node, (pp.ParenExpr, pp.UnaryExpr, pp.SubqueryExpr)):
        return _labels(node.expr, labels_of)
    if isinstance(node, (pp.NumberLiteral, pp.StringLiteral)):
        return frozenset()
    if isinstance(node, pp.AggregateExpr):
        inner = _labels(node.expr, labels_of)
        op = str(node.op).lower()
        if op in ("topk", "bottomk", "limitk", "limit_ratio"):
            return inner
        modifier = node.modifier
        if modifier is None:
            labels = frozenset()
        elif modifier.type == pp.AggModifierType.By:
            labels = frozenset(modifier.labels)
        else:
            labels = ANY if inner is ANY else inner - set(modifier.labels)
        if op == "count_values" and _string(node.param):
            labels = (labels | {_string(node.param)}) if labels is not ANY else ANY
        return labels
    if isinstance(node, pp.Call):
        name = node.func.name
        if name in _NO_LABELS:
            return frozenset()
        if name in ("absent", "absent_over_time"):
            return frozenset()
        vectors = [a for a in node.args if not isinstance(a, (pp.NumberLiteral, pp.StringLiteral))]
        inner = _labels(vectors[0], labels_of) if vectors else frozenset()
        if inner is ANY:
            return ANY
        if name in _ADDS_DST:
            return inner | {_string(node.args[_ADDS_DST[name]])}
        return inner - _DROPS.get(name, set())
    if isinstance(node, pp.BinaryExpr):
        lhs, rhs = _labels(node.lhs, labels_of), _labels(node.rhs, labels_of)
        op = str(node.op).lower()
        modifier = node.modifier
        if op == "or":
            if lhs is ANY or rhs is ANY:
                return rhs if lhs is ANY else lhs if rhs is ANY else ANY
            return lhs & rhs
        if op in ("and", "unless"):
            return lhs
        scalar_l = isinstance(_unparen(node.lhs), pp.NumberLiteral) or lhs == frozenset() and _is_scalar(node.lhs)
        scalar_r = isinstance(_unparen(node.rhs), pp.NumberLiteral) or rhs == frozenset() and _is_scalar(node.rhs)
        if scalar_r:
            return lhs
        if scalar_l:
            return rhs
        card = modifier.card if modifier is not None else None
        extra = frozenset(modifier.group_labels or ()) if modifier is not None else frozenset()
        if card == pp.VectorMatchCardinality.ManyToOne:  # group_left: the left side, plus the copied labels
            return lhs if lhs is ANY else lhs | extra
        if card == pp.VectorMatchCardinality.OneToMany:  # group_right
            return rhs if rhs is ANY else rhs | extra
        return lhs  # one-to-one: the left side's labels
    return ANY


def _unparen(node):
    while isinstance(node, pp.ParenExpr):
        node = node.expr
    return node


def _is_scalar(node) -> bool:
    node = _unparen(node)
    return isinstance(node, pp.NumberLiteral) or (isinstance(node, pp.Call) and node.func.name in ("time", "scalar", "pi"))
