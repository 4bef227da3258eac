"""Closed forms for runs of decode steps whose cost is piecewise affine in the batch's context.

A batch of B sequences with total context C takes ``a + b*C`` seconds per step on the piece of
the cost curve that holds C; every step adds B to C. So m steps form an arithmetic series and
the simulator jumps over them without an event per step. (Written for speed: helpers inlined, no
min/max calls, and step counts made floats before they meet float times: ``float(m) * d0`` is
``m * d0`` to the bit, and a float product is several times cheaper than an int-by-float one.)
"""

from __future__ import annotations

import math

from simulator.roofline import Piece

ALL = 1 << 62  # piece_steps on the last piece: every step starts on it


def series(d0: float, delta: float, m: float) -> float:
    """d0 + (d0 + delta) + ... over m terms (m an int, or float(m): the same to the bit, faster)."""
    return m * d0 + delta * m * (m - 1) / 2


def run(pieces: tuple[Piece, ...], batch: int, context: float, m: int, sink: list | None = None) -> float:
    """Seconds of m steps from ``context``; appends (batch, steps, first, delta) segments to ``sink``."""
    last = len(pieces) - 1
    if last == 0:
        _, a, b = pieces[0]
        d0, delta = a + b * context, b * batch
        if sink is not None:
            sink.append((batch, m, d0, delta))
        x = float(m)
        return x * d0 + delta * x * (x - 1.0) / 2.0
    i = 0
    while i < last and pieces[i + 1][0] <= context:
        i += 1
    total = 0.0
    while m > 0:
        _, a, b = pieces[i]
        n = m
        if i < last:  # steps that start on this piece before the context reaches the next one
            n = math.ceil((pieces[i + 1][0] - context) / batch)
            if n < 1:
                n = 1
            if n > m:
                n = m
        d0, delta = a + b * context, b * batch
        x = float(n)
        total += x * d0 + delta * x * (x - 1.0) / 2.0
        if sink is not None:
            sink.append((batch, n, d0, delta))
        m -= n
        context += n * batch
        i += 1
    return total


def piece_steps(pieces: tuple[Piece, ...], batch: int, context: float) -> tuple[float, float, int]:
    """The piece holding ``context`` as (a, b, n): n steps start on it before the context reaches the
    next piece, as ``run`` counts them (ALL on the last piece). Up to n steps from ``context`` are one
    arithmetic series, so ``run`` and ``steps_to_reach`` come to its closed forms."""
    last = len(pieces) - 1
    i = 0
    while i < last and pieces[i + 1][0] <= context:
        i += 1
    _, a, b = pieces[i]
    if i == last:
        return a, b, ALL
    n = math.ceil((pieces[i + 1][0] - context) / batch)
    return a, b, n if n > 1 else 1


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
        n = math.ceil((pieces[i + 1][0] - context) / batch)
        if n < 1:
            n = 1
        x = float(n)
        whole = x * d0 + delta * x * (x - 1.0) / 2.0
        if whole >= dt:
            return done + solve(d0, delta, dt)
        dt -= whole
        done += n
        context += n * batch
        i += 1


def solve(d0: float, delta: float, dt: float) -> int:
    """Smallest j >= 1 with series(d0, delta, j) >= dt (the quadratic's root, then exact checks;
    series inlined, with x = float(j): this runs once per closed-form run)."""
    if delta <= 0.0:
        j = math.ceil(dt / d0)
    else:
        half = d0 - delta / 2.0
        j = math.ceil((-half + math.sqrt(half * half + 2.0 * delta * dt)) / delta)
    if j < 1:
        j = 1
    x = float(j)
    while j > 1 and (x - 1.0) * d0 + delta * (x - 1.0) * (x - 2.0) / 2.0 >= dt:
        j -= 1
        x -= 1.0
    while x * d0 + delta * x * (x - 1.0) / 2.0 < dt:
        j += 1
        x += 1.0
    return j
