"""Which seeds are which: a configuration is chosen on development seeds only, and a claim is
made only from held-out seeds, which play no part in choosing (docs/evidence.md). Seeds 0-15
were spent choosing and judging before this rule; a run on them says so."""

from __future__ import annotations

from collections.abc import Sequence

DEVELOPMENT = range(100, 110)  # choose configurations, tune, explore here
HELD_OUT = range(200, 210)  # claims: only what holds here
SPENT = range(0, 16)  # used to choose and judge before the rule: evidence of nothing


def seed_role(seed: int) -> str:
    """ "development", "held-out", "spent" or "other" (a seed outside every range)."""
    if seed in DEVELOPMENT:
        return "development"
    if seed in HELD_OUT:
        return "held-out"
    if seed in SPENT:
        return "spent"
    return "other"


def roles_text(seeds: Sequence[int]) -> str:
    """One line naming the seeds' roles, e.g. "held-out seeds 200-209 (n=10)"."""
    parts = []
    for role in ("development", "held-out", "spent", "other"):
        mine = [s for s in seeds if seed_role(s) == role]
        if not mine:
            continue
        contiguous = mine == list(range(mine[0], mine[-1] + 1))
        listed = f"{mine[0]}-{mine[-1]}" if contiguous and len(mine) > 1 else ", ".join(map(str, mine))
        parts.append(f"{role} seed{'s' if len(mine) > 1 else ''} {listed} (n={len(mine)})")
    note = ""
    if any(seed_role(s) != "held-out" for s in seeds):
        note = "; claims come from held-out seeds 200-209 only"
    return "; ".join(parts) + note
