"""Which config differences keep runs apart in ``training.report``.

Runs of one (agent, model) whose configs differ are reported as separate groups, named by
the differing keys. Keys that do not split groups (``POOLED_KEYS``): the grouping keys, the
tasks (the bootstrap's strata) and seeds, and what cannot change what is learned: device,
threads, logging, the run's length and the evaluation schedule.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

# A key ending in "." covers its whole section.
POOLED_KEYS = ("agent", "model", "task", "seed", "device", "threads", "log.", "loop.steps",
               "loop.minutes", "loop.eval_every", "loop.eval_episodes",
               "loop.checkpoint_every")
UNSET = "-"  # the value shown for a key a run's config does not have


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config sections as dotted keys with JSON values."""
    out: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value, sort_keys=True)
    return out


def pooled_key(key: str) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in POOLED_KEYS)


def config_differences(configs: Sequence[Mapping[str, str]]) -> list[str]:
    """The keys (POOLED_KEYS aside) whose values differ among flat ``configs``."""
    keys = sorted({k for c in configs for k in c})
    return [k for k in keys if not pooled_key(k) and len({c.get(k, UNSET) for c in configs}) > 1]


def config_label(config: Mapping[str, str], keys: Sequence[str]) -> str:
    """``key=value, ...`` of ``keys`` in one flat config."""
    return ", ".join(f"{k}={config.get(k, UNSET)}" for k in keys)
