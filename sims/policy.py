"""The seam where the mesh's response plugs in: ``allocate``, a pure water-filling plan.

Theory of operation
-------------------
Every coordinated baseline of the simulator (central dispatch through the CSMS, and the mesh)
asks the same question: share a deficit of ``deficit_w`` among nodes that can each give at most
``limits_w[i]`` (curtailed charging plus V2G discharge), in proportion to ``weights[i]``, without
pushing any transformer past the export it can still carry (``headroom_w[t]``). The answer is a
nested water-filling: one water level ``lam`` for everyone, ``share_i = min(limit_i, lam w_i)``;
a transformer whose total would pass its headroom is held at its headroom (its own, lower level)
and the level of the rest rises until the shares sum to the deficit, or everyone is full.

``allocate`` is the product's plan (``protocol.allocation.plan``: the same optimum, KKT
conditions and nesting) vectorised over numpy arrays, so that a year of a 1,000-charger fleet
steps in minutes; ``product_plan`` is an adapter over the product's own function, in 0.1 W
units. ``tests/sims/test_policy.py`` holds them equal on random instances (every share within
0.1 W plus rounding), so the fleet's figures are the product's allocation's. Anything with the
signature of ``allocate`` plugs in (``sims.run(..., allocator=product_plan)`` runs the
product's function itself): the fleet runner calls ``Allocator`` and nothing else.

Exact, not iterative: one level is found from the sorted breakpoints ``limit_i / w_i``
(``waterfill``); transformers that overflow at the common level are fixed at their headroom and
removed, and the rest re-filled, at most once per transformer (an overflowing transformer only
overflows more as the common level rises).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

F = NDArray[np.float64]
Allocator = Callable[[float, F, F, NDArray[np.int64], F], F]


def waterfill(deficit_w: float, limits_w: F, weights: F) -> F:
    """Shares ``min(limit_i, lam w_i)`` summing to ``deficit_w`` (or every limit, if less)."""
    limits_w = np.maximum(limits_w, 0.0)
    total = float(limits_w.sum())
    if deficit_w <= 0 or total <= 0:
        return np.zeros_like(limits_w)
    if deficit_w >= total:
        return limits_w.copy()
    live = np.flatnonzero(limits_w > 0)
    w = np.maximum(weights[live], 1e-12)
    brk = limits_w[live] / w
    order = np.argsort(brk, kind="stable")
    b, lim, ws = brk[order], limits_w[live][order], w[order]
    below = np.concatenate(([0.0], np.cumsum(lim)[:-1]))  # limits of those saturated before k
    suffix_w = np.cumsum(ws[::-1])[::-1]  # weights of those not yet saturated at k
    filled = below + b * suffix_w  # total at level b_k
    k = int(np.searchsorted(filled, deficit_w))
    lam = (deficit_w - below[k]) / suffix_w[k]
    out = np.zeros_like(limits_w)
    out[live] = np.minimum(limits_w[live], lam * w)
    return out


def allocate(
    deficit_w: float, limits_w: F, weights: F, transformer: NDArray[np.int64], headroom_w: F
) -> F:
    """Nested water-filling of ``deficit_w`` (see the module docstring); shares in W."""
    shares = np.zeros_like(limits_w)
    open_nodes = np.ones(len(limits_w), dtype=bool)
    remaining = float(deficit_w)
    for _ in range(len(headroom_w) + 1):
        trial = np.zeros_like(limits_w)
        trial[open_nodes] = waterfill(remaining, limits_w[open_nodes], weights[open_nodes])
        per_tx = np.bincount(transformer, weights=trial, minlength=len(headroom_w))
        over = per_tx > headroom_w + 1e-9
        if not over.any():
            shares[open_nodes] = trial[open_nodes]
            return shares
        for t in np.flatnonzero(over):
            members = open_nodes & (transformer == t)
            cap = max(0.0, float(headroom_w[t]))
            shares[members] = waterfill(cap, limits_w[members], weights[members])
            remaining -= float(shares[members].sum())
            open_nodes &= ~members
            headroom_w = headroom_w.copy()
            headroom_w[t] = np.inf
    return shares


ALLOCATORS: dict[str, Allocator] = {"central": allocate, "mesh": allocate}


def product_plan(
    deficit_w: float, limits_w: F, weights: F, transformer: NDArray[np.int64], headroom_w: F
) -> F:
    """The product's own plan (``protocol.allocation.plan``) behind ``allocate``'s signature."""
    from protocol.allocation.plan import MemberOffer, plan

    width = len(str(len(limits_w)))
    ids = [f"n{i:0{width}d}" for i in range(len(limits_w))]  # the plan's canonical order is by id
    offers = [MemberOffer(ids[i], f"t{int(transformer[i])}", float(limits_w[i]), float(weights[i]))
              for i in range(len(limits_w))]
    room = {f"t{k}": float(h) for k, h in enumerate(headroom_w) if np.isfinite(h)}
    result = plan(offers, float(deficit_w), room)
    return np.array([result.share_w(node_id) for node_id in ids])
