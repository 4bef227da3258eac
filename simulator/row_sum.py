"""A roofline's per-iteration sum compiled into one Python function (the simulator's hottest call).

RooflineCost sums, over its operators, max(compute, memory) + fixed, where compute and memory are
``c0 + c1*tokens + c2*logits + c3*attended + c4*kv_read`` with per-operator coefficients, most of
them zero. ``compile_rows`` writes that sum out with the non-zero coefficients as literals (repr
round-trips a float exactly) in the same order, so it returns the same float, bit for bit, as the
loop (``loop_sum``): a term ``0.0 * x`` or ``+ 0.0`` never changes a non-negative sum, and a side
with no terms is 0.0, which never beats the other (non-negative) side. The integer arguments are made
floats once at the top (``float * int`` converts the int the same way), which spares a mixed-type
multiplication, several times slower than a float one, per term.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Row = tuple[float, ...]  # 5 compute coefficients, 5 memory coefficients, fixed seconds
FIELDS = ("1", "t", "n", "a", "k")  # constant, tokens, logits, attended, kv_read


def loop_sum(rows: Sequence[Row], overhead_s: float, t: int, n: int, a: int, k: int) -> float:
    """The reference: the sum as a loop over the operator rows."""
    total = overhead_s
    for fc, ft, fl, fa, fk, bc, bt, bl, ba, bk, fixed in rows:
        compute = fc + ft * t + fl * n + fa * a + fk * k
        memory = bc + bt * t + bl * n + ba * a + bk * k
        total += (compute if compute > memory else memory) + fixed
    return total


def compile_rows(rows: Sequence[Row], overhead_s: float) -> Callable[[int, int, int, int], float]:
    """``f(tokens, logits, attended, kv_read)`` equal to ``loop_sum(rows, overhead_s, ...)``."""
    for row in rows:
        if len(row) != 11 or any(not 0 <= c < float("inf") for c in row):
            raise ValueError(f"a roofline row has 11 finite non-negative coefficients, got {row!r}")
    lines = ["def row_sum(t, n, a, k):", f"    total = {float(overhead_s)!r}"]
    used = [name for i, name in enumerate(FIELDS) if name != "1" and any(r[i] or r[5 + i] for r in rows)]
    if used:
        lines.append(f"    {', '.join(used)} = {', '.join(f'float({name})' for name in used)}")
    for row in rows:
        compute, memory, fixed = _terms(row[0:5]), _terms(row[5:10]), row[10]
        if compute and memory:
            lines += [f"    c = {compute}", f"    m = {memory}"]
            best = "(c if c > m else m)"
        else:
            best = f"({compute or memory or '0.0'})"
        if best != "(0.0)" or fixed:
            lines.append(f"    total += {best}" + (f" + {float(fixed)!r}" if fixed else ""))
    lines.append("    return total")
    namespace: dict = {}
    exec("\n".join(lines), namespace)  # noqa: S102 (our own literals only)
    return namespace["row_sum"]


def _terms(coefficients: Sequence[float]) -> str:
    """``c0 + c1 * t + ...`` over the non-zero coefficients, in order ('' when all are zero)."""
    parts = [repr(float(c)) if name == "1" else f"{float(c)!r} * {name}"
             for c, name in zip(coefficients, FIELDS) if c]
    return " + ".join(parts)
