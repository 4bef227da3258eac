"""Closed forms for runs of decode steps whose cost is piecewise affine in the batch's context.

A batch of B sequences with total context C takes ``a + b*C`` seconds per step on the piece of
the cost curve that holds C; every step adds B to C. So m steps form an arithmetic series and
the simulator jumps over them without an event per step. (Written for speed: helpers inlined.)
"""

from __future__ import annotations

import math

from simulator.roofline import Piece


def series(d0: float, delta: float, m: int) -> float:
    """d0 + (d0 + delta) + ... over m terms."""
    return m * d0 + delta * m * (m - 1) / 2


def run(pieces: tuple[Piece, ...], batch: int, context: float, m: int, sink: list | None = None) -> float:
    """Seconds of m steps from ``context``; appends (batch, steps, first, delta) segments to ``sink``."""
    last = len(pieces) - 1
    if last == 0:
        _, a, b = pieces[0]
        d0, delta = a + b * context, b * batch
        if sink is not None:
            sink.append((batch, m, d0, delta))
        return m * d0 + delta * m * (m - 1) / 2
    i = 0
    while i < last and pieces[i + 1][0] <= context:
        i += 1
    total = 0.0
    while m > 0:
        _, a, b = pieces[i]
        n = m
        if i < last:  # steps that start on this piece before the context reaches the next one
            n = min(m, max(1, math.ceil((pieces[i + 1][0] - context) / batch)))
        d0, delta = a + b * context, b * batch
        total += n * d0 + delta * n * (n - 1) / 2
        if sink is not None:
            sink.append((batch, n, d0, delta))
        m -= n
        context += n * batch
        i += 1
    return total


def steps_to_reach(pieces: tuple[Piece, ...], batch: int, context: float, dt: float) -> int:
    """Smallest m >= 1 whose m steps take at least ``dt`` > 0 seconds."""
    last = len(pieces) - 1
    if last == 0:
        _, a, b = pieces[0]
        return solve(a + b * context, b * batch, dt)
    i = 0
    while i < last and pieces[i + 1][0] <= context:
        i += 1
    done = 0
    while True:
        _, a, b = pieces[i]
        d0, delta = a + b * context, b * batch
        if i == last:
            return done + solve(d0, delta, dt)
        n = max(1, math.ceil((pieces[i + 1][0] - context) / batch))
        whole = n * d0 + delta * n * (n - 1) / 2
        if whole >= dt:
            return done + solve(d0, delta, dt)
        dt -= whole
        done += n
        context += n * batch
        i += 1


def solve(d0: float, delta: float, dt: float) -> int:
    """Smallest j >= 1 with series(d0, delta, j) >= dt (the quadratic's root, then exact checks;
    series inlined: this runs once per closed-form run)."""
    if delta <= 0:
        j = max(1, math.ceil(dt / d0))
    else:
        half = d0 - delta / 2
        j = max(1, math.ceil((-half + math.sqrt(half * half + 2 * delta * dt)) / delta))
    while j > 1 and (j - 1) * d0 + delta * (j - 1) * (j - 2) / 2 >= dt:
        j -= 1
    while j * d0 + delta * j * (j - 1) / 2 < dt:
        j += 1
    return j
