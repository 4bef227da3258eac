"""Closed forms for runs of decode steps whose cost is piecewise affine in the batch's context.

A batch of B sequences with total context C takes ``a + b*C`` seconds per step on the piece of
the cost curve that holds C; every step adds B to C. So m steps form an arithmetic series and
the simulator jumps over them without an event per step.
"""

from __future__ import annotations

import math

from simulator.roofline import Piece


def _piece_at(pieces: tuple[Piece, ...], context: float) -> int:
    i = 0
    while i + 1 < len(pieces) and pieces[i + 1][0] <= context:
        i += 1
    return i


def _steps_left(pieces: tuple[Piece, ...], i: int, batch: int, context: float) -> float:
    """Steps that start on piece i before the context reaches the next piece."""
    if i + 1 == len(pieces):
        return math.inf
    return max(1, math.ceil((pieces[i + 1][0] - context) / batch))


def series(d0: float, delta: float, m: int) -> float:
    """d0 + (d0 + delta) + ... over m terms."""
    return m * d0 + delta * m * (m - 1) / 2


def run(pieces: tuple[Piece, ...], batch: int, context: float, m: int, sink: list | None = None) -> float:
    """Seconds of m steps from ``context``; appends (batch, steps, first, delta) segments to ``sink``."""
    if len(pieces) == 1:  # the common case, inlined
        _, a, b = pieces[0]
        d0, delta = a + b * context, b * batch
        if sink is not None:
            sink.append((batch, m, d0, delta))
        return m * d0 + delta * m * (m - 1) / 2
    total, i = 0.0, _piece_at(pieces, context)
    while m > 0:
        n = min(m, _steps_left(pieces, i, batch, context))
        _, a, b = pieces[i]
        d0, delta = a + b * context, b * batch
        total += series(d0, delta, n)
        if sink is not None:
            sink.append((batch, n, d0, delta))
        m, context, i = m - n, context + n * batch, i + 1
    return total


def steps_to_reach(pieces: tuple[Piece, ...], batch: int, context: float, dt: float) -> int:
    """Smallest m >= 1 whose m steps take at least ``dt`` > 0 seconds."""
    if len(pieces) == 1:
        _, a, b = pieces[0]
        return _solve(a + b * context, b * batch, dt)
    done, i = 0, _piece_at(pieces, context)
    while True:
        _, a, b = pieces[i]
        d0, delta = a + b * context, b * batch
        n = _steps_left(pieces, i, batch, context)
        if n == math.inf or series(d0, delta, n) >= dt:
            return done + _solve(d0, delta, dt)
        dt -= series(d0, delta, n)
        done, context, i = done + n, context + n * batch, i + 1


def _solve(d0: float, delta: float, dt: float) -> int:
    if delta <= 0:
        j = max(1, math.ceil(dt / d0))
    else:
        half = d0 - delta / 2
        j = max(1, math.ceil((-half + math.sqrt(half * half + 2 * delta * dt)) / delta))
    while j > 1 and series(d0, delta, j - 1) >= dt:
        j -= 1
    while series(d0, delta, j) < dt:
        j += 1
    return j
