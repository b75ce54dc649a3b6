"""Python clients of the VRKN estimation service.

* ``EstimatorClient`` (gRPC, sync), ``AsyncEstimatorClient`` (gRPC, asyncio),
  ``HttpEstimatorClient`` (HTTP/JSON): the same typed methods for every operation of
  ``proto/vrkn/estimator/v1/estimator.proto``, per-call deadlines, retries with back-off on
  UNAVAILABLE, images sent encoded (PNG/JPEG) or raw.
* ``clients.errors``: one exception per status, with the server's message.
* ``python -m clients.example_controller``: a controller in a few dozen lines.
* ``python -m clients.robot_sim``: a DMC task as the robot, in closed loop through the
  service.

Imports are lazy: ``from clients import HttpEstimatorClient`` does not import gRPC.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clients.errors import (
    DeadlineExceededError,
    EstimatorError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from clients.messages import Message
from clients.retry import RetryPolicy
from clients.types import Ack, Action, Belief, BeliefDetail, ModelInfo, SensorSpec, SessionInfo

if TYPE_CHECKING:
    from clients.grpc_aio import AsyncEstimatorClient
    from clients.grpc_client import EstimatorClient
    from clients.http_client import HttpEstimatorClient

_LAZY = {"EstimatorClient": "clients.grpc_client", "AsyncEstimatorClient": "clients.grpc_aio",
         "HttpEstimatorClient": "clients.http_client"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'clients' has no attribute {name!r}")


__all__ = [
    "Ack",
    "Action",
    "AsyncEstimatorClient",
    "Belief",
    "BeliefDetail",
    "DeadlineExceededError",
    "EstimatorClient",
    "EstimatorError",
    "HttpEstimatorClient",
    "InternalError",
    "InvalidArgumentError",
    "Message",
    "ModelInfo",
    "NotFoundError",
    "OutOfRangeError",
    "ResourceExhaustedError",
    "RetryPolicy",
    "SensorSpec",
    "SessionInfo",
    "UnauthenticatedError",
    "UnavailableError",
]
