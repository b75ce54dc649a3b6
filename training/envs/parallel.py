"""Step several tasks at once, each in its own process.

Workers are started with the 'forkserver' method (or 'spawn' where forkserver is
unavailable), never plain fork: a fork after torch or OpenGL has initialised in
the parent can deadlock or corrupt the child. Each worker builds its task with
``make_task(name, seed, **overrides)``. An exception in a worker is re-raised in
the parent as :class:`WorkerError` carrying the worker's traceback.
"""

from __future__ import annotations

import multiprocessing as mp
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from training.envs.base import Obs
from training.envs.registry import task_config
from training.envs.rendering import configure_headless_rendering

_RESET, _STEP, _CLOSE, _INFO = "reset", "step", "close", "info"
_OK, _ERROR = "ok", "error"


class WorkerError(RuntimeError):
    """A worker process raised; the message holds the worker's traceback."""


def _worker(conn: Connection, name: str, seed: int, overrides: dict[str, Any]) -> None:
    from training.envs.registry import make_task

    task = None
    try:
        task = make_task(name, seed, **overrides)
        while True:
            command, payload = conn.recv()
            try:
                if command == _RESET:
                    result: Any = task.reset()
                elif command == _STEP:
                    result = task.step(payload)
                elif command == _INFO:
                    result = (task.obs_space, task.act_space, task.sensors, task.control_period,
                              task.state_names)
                elif command == _CLOSE:
                    conn.send((_OK, None))
                    return
                else:
                    raise ValueError(f"unknown command {command!r}")
                conn.send((_OK, result))
            except Exception:
                conn.send((_ERROR, traceback.format_exc()))
    except (EOFError, KeyboardInterrupt):
        return  # the parent went away
    except Exception:
        conn.send((_ERROR, traceback.format_exc()))
    finally:
        if task is not None:
            task.close()
        conn.close()


def _context() -> mp.context.BaseContext:
    methods = mp.get_all_start_methods()
    return mp.get_context("forkserver" if "forkserver" in methods else "spawn")


def stack(observations: Sequence[Obs]) -> Obs:
    """Stack per-environment observation dicts into one dict with a leading [N] axis."""
    return {key: np.stack([obs[key] for obs in observations]) for key in observations[0]}


class ParallelEnvs:
    """N copies of one named task in N processes, stepped together.

    ``step(actions)`` takes actions [N, A] and returns the stacked observation
    dict. A worker whose previous observation had ``is_last`` is reset instead of
    stepped (its action is ignored), as in DreamerV3's driver, so the caller can
    keep calling ``step``. Use as a context manager or call ``close()``.
    """

    def __init__(self, name: str, seeds: Sequence[int], timeout_s: float = 120.0, **overrides):
        if len(seeds) < 1:
            raise ValueError("need at least one seed")
        task_config(name, **overrides)  # fail fast, in the parent, on bad names/overrides
        # Choose the GL backend here so that workers inherit MUJOCO_GL instead of probing.
        configure_headless_rendering()
        self.timeout_s = timeout_s
        self._closed = False
        context = _context()
        self._conns: list[Connection] = []
        self._processes: list[mp.process.BaseProcess] = []
        try:
            for seed in seeds:
                parent, child = context.Pipe()
                process = context.Process(
                    target=_worker, args=(child, name, seed, overrides), daemon=True
                )
                process.start()
                child.close()
                self._conns.append(parent)
                self._processes.append(process)
            self._needs_reset = [True] * len(seeds)
            (self.obs_space, self.act_space, self.sensors, self.control_period,
             self.state_names) = self._call([(_INFO, None)] * len(seeds))[0]
        except BaseException:
            self.close()
            raise

    def __len__(self) -> int:
        return len(self._conns)

    def _call(self, messages: Sequence[tuple[str, Any]]) -> list[Any]:
        if self._closed:
            raise RuntimeError("ParallelEnvs is closed")
        for conn, message in zip(self._conns, messages, strict=True):
            try:
                conn.send(message)
            except (BrokenPipeError, OSError):
                pass  # the worker exited; its error report (if any) is read below
        results, errors = [], []
        for index, conn in enumerate(self._conns):
            if not conn.poll(self.timeout_s):
                errors.append(f"worker {index}: no answer within {self.timeout_s} s")
                results.append(None)
                continue
            try:
                status, payload = conn.recv()
            except (EOFError, OSError):
                self._processes[index].join(timeout=1)
                exitcode = self._processes[index].exitcode
                status, payload = _ERROR, f"the worker process died (exit code {exitcode})"
            if status == _ERROR:
                errors.append(f"worker {index} failed:\n{payload}")
            results.append(payload)
        if errors:
            raise WorkerError("\n".join(errors))
        return results

    def reset(self) -> Obs:
        """Reset every worker; returns the stacked first observations."""
        observations = self._call([(_RESET, None)] * len(self))
        self._needs_reset = [bool(obs["is_last"]) for obs in observations]
        return stack(observations)

    def step(self, actions: np.ndarray) -> Obs:
        """Step every worker (resetting those whose episode ended); stacked observations."""
        actions = np.asarray(actions)
        if actions.shape[0] != len(self):
            raise ValueError(f"expected actions for {len(self)} environments, got {actions.shape}")
        messages = [
            (_RESET, None) if reset else (_STEP, action)
            for reset, action in zip(self._needs_reset, actions, strict=True)
        ]
        observations = self._call(messages)
        self._needs_reset = [bool(obs["is_last"]) for obs in observations]
        return stack(observations)

    def close(self) -> None:
        """Ask the workers to exit, then join them (terminating any that hang)."""
        if self._closed:
            return
        self._closed = True
        for conn in self._conns:
            try:
                conn.send((_CLOSE, None))
            except (BrokenPipeError, OSError):
                pass
        for process in self._processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        for conn in self._conns:
            conn.close()

    @property
    def processes(self) -> list[mp.process.BaseProcess]:
        return list(self._processes)

    def __enter__(self) -> ParallelEnvs:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
