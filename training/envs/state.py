"""The simulator's privileged low-dimensional state: what the estimator is judged against.

Every task exposes ``state`` (float32 [S]) at every step: dm_control's own observation
dict concatenated in the order of ``observation_spec()`` (a fixed, ordered mapping). The
element names are stable: ``<key>[<i>]`` for array entries and ``<key>`` for scalars, plus
a readable alias where one is defined here (``STATE_ALIASES``). The state is never a model
input: the training loop hands it only to the state head's probe, and the service never
receives it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# Readable names per domain, in the order of the concatenated state (dm_control's
# observation dict). A domain without an entry keeps the ``key[i]`` names.
STATE_ALIASES: dict[str, tuple[str, ...]] = {
    "cartpole": ("cart_position", "pole_angle_cos", "pole_angle_sin", "cart_velocity",
                 "pole_angular_velocity"),
    "pendulum": ("pole_angle_cos", "pole_angle_sin", "pole_angular_velocity"),
}


def state_names(spec: Mapping[str, tuple[int, ...]], domain: str, task_name: str
                ) -> tuple[str, ...]:
    """Stable element names for the concatenation of ``spec`` (key -> shape), in order.

    Raises ValueError naming the task when it has no low-dimensional observation.
    """
    names = raw_state_names(spec)
    if not names:
        raise ValueError(f"task {task_name!r} defines no low-dimensional state (its "
                         f"dm_control observation is empty)")
    alias = STATE_ALIASES.get(domain)
    if alias is not None:
        if len(alias) != len(names):
            raise ValueError(f"task {task_name!r}: {len(alias)} state aliases for "
                             f"{len(names)} state elements")
        return alias
    return tuple(names)


def raw_state_names(spec: Mapping[str, tuple[int, ...]]) -> tuple[str, ...]:
    """The ``key[i]`` names, whatever the aliases (docs and the model card list both)."""
    names: list[str] = []
    for key, shape in spec.items():
        size = int(np.prod(shape)) if shape else 1
        names += [key] if not shape else [f"{key}[{i}]" for i in range(size)]
    return tuple(names)


def concat_state(observation: Mapping[str, np.ndarray], keys: tuple[str, ...]) -> np.ndarray:
    """dm_control's observation entries ``keys`` flattened and concatenated as float32."""
    return np.concatenate([np.asarray(observation[k], np.float32).reshape(-1)
                           for k in keys]).astype(np.float32)
