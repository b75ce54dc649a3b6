"""One schema: the wire dataclasses of ``proto.wire`` against the proto messages (drift
fails), and every resource round-tripping bit-exactly through protobuf bytes, through the
HTTP app's JSON (FastAPI and the derived response models) and back, with random values
(float32 and float64 bit patterns, unicode, large integers). The live transports and the
clients: ``tests/clients/test_schema_roundtrip.py``."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest

from proto import wire
from proto.fields import Float32, Floats, SchemaError, WireError, wire_fields
from proto.json_codec import from_json, to_json
from proto.pb_codec import check, from_pb, message_class, to_pb
from proto.vrkn.estimator.v1 import estimator_pb2 as pb
from tests.service.wire_samples import assert_identical, sample


# -- the dataclasses are the proto messages -----------------------------------------------
@pytest.mark.parametrize("cls", wire.RESOURCES, ids=lambda c: c.__name__)
def test_each_resource_has_its_proto_message_fields(cls):
    desc = check(cls)  # names, types, repeated/map, presence
    assert [f.name for f in wire_fields(cls)] and \
        {f.name for f in wire_fields(cls)} == set(desc.fields_by_name)


@dataclass(frozen=True)
class _Missing:  # Action without `recorded`
    PROTO: ClassVar[str] = "Action"
    session_id: str
    timestamp: float
    tick: int
    values: Floats
    source: str


@dataclass(frozen=True)
class _Extra(_Missing):  # a field the proto lacks
    recorded: bool
    comment: str


@dataclass(frozen=True)
class _WrongPrecision:  # var is `repeated float`: Floats, not tuple[float, ...]
    PROTO: ClassVar[str] = "StateEstimate"
    names: tuple[str, ...]
    mean: Floats
    var: tuple[float, ...]


@dataclass(frozen=True)
class _NoPresence:  # start_time is proto3 optional: `float | None`
    PROTO: ClassVar[str] = "ResetSessionRequest"
    session_id: str
    start_time: float


class BeliefDetail(enum.IntEnum):  # the proto enum's name, one level short
    UNSPECIFIED = 0
    LATENT = 1
    STATE = 2


@dataclass(frozen=True)
class _EnumDrift:
    PROTO: ClassVar[str] = "BeliefRequest"
    session_id: str
    timestamp: float | None
    detail: BeliefDetail


@pytest.mark.parametrize("cls, match", [
    (_Missing, r"Action has fields \['recorded'\]"), (_Extra, r"_Extra.comment: proto"),
    (_WrongPrecision, r"_WrongPrecision.var: does not match"),
    (_NoPresence, r"_NoPresence.start_time: .*presence"),
    (_EnumDrift, r"_EnumDrift.detail: does not match .*BELIEF_DETAIL_FULL")])
def test_drift_between_dataclass_and_proto_fails_naming_the_field(cls, match):
    with pytest.raises(SchemaError, match=match):
        check(cls)
    with pytest.raises(SchemaError, match=match):
        to_pb(object.__new__(cls))


def test_annotations_outside_the_vocabulary_are_refused():
    @dataclass
    class Bad:
        when: Float32 | str

    with pytest.raises(SchemaError, match=r"Bad.when: only `X \| None`"):
        wire_fields(Bad)


def test_an_enum_value_a_peer_does_not_know_reads_as_unspecified():
    b = wire.Belief("s", None, 1, 1, False, np.zeros(2, np.float32), np.ones(2, np.float32),
                    {}, 0.5, detail=wire.BeliefDetail.LATENT)
    assert to_json(b)["detail"] == "latent"
    assert from_json(wire.Belief, {**to_json(b), "detail": "someday"}).detail is \
        wire.BeliefDetail.UNSPECIFIED
    message = to_pb(b)
    assert message.detail == pb.BELIEF_DETAIL_LATENT
    message.detail = 7  # an open proto3 enum carries any number
    assert from_pb(wire.Belief, message).detail is wire.BeliefDetail.UNSPECIFIED
    with pytest.raises(WireError, match=r"Belief.detail: expected one of"):
        from_json(wire.Belief, {**to_json(b), "detail": 2})


# -- round trips ---------------------------------------------------------------------------
@pytest.mark.parametrize("cls", wire.RESOURCES, ids=lambda c: c.__name__)
def test_protobuf_round_trip_is_bit_exact(cls):
    rng = np.random.default_rng(1)
    for _ in range(30):
        x = sample(cls, rng)
        data = to_pb(x).SerializeToString()
        assert_identical(from_pb(cls, message_class(cls).FromString(data)), x)


@pytest.fixture(scope="module")
def http_app():
    """A FastAPI app answering one stored resource per class through its derived response
    model, as the service's routes do."""
    from fastapi import FastAPI

    from server.http_schema import NAMES, response_model

    app, stored = FastAPI(), {}
    for cls in NAMES:
        def route(name=cls.__name__):
            return to_json(stored[name])

        app.get(f"/{cls.__name__}", response_model=response_model(cls))(route)
    return app, stored


@pytest.mark.parametrize("cls", wire.RESOURCES, ids=lambda c: c.__name__)
def test_http_json_round_trip_is_bit_exact(cls, http_app):
    from fastapi.testclient import TestClient

    app, stored = http_app
    rng = np.random.default_rng(2)
    with TestClient(app) as client:
        for _ in range(30):
            stored[cls.__name__] = x = sample(cls, rng)
            r = client.get(f"/{cls.__name__}")
            assert r.status_code == 200, r.text
            assert_identical(from_json(cls, r.json()), x)


def test_http_models_have_the_wire_fields_all_required():
    from server.http_schema import NAMES, response_model

    assert set(NAMES) == set(wire.RESOURCES)
    for cls in wire.RESOURCES:
        fields = response_model(cls).model_fields
        assert list(fields) == [f.name for f in wire_fields(cls)]
        assert all(f.is_required() for f in fields.values()), cls


def test_float32_scalars_are_float32_on_both_transports():
    b = dataclasses.replace(sample(wire.Belief, np.random.default_rng(3)), reward=0.1)
    via_json = from_json(wire.Belief, to_json(b)).reward
    assert via_json == from_pb(wire.Belief, to_pb(b)).reward == float(np.float32(0.1))


def test_json_errors_name_the_field_and_missing_keys_take_proto_defaults():
    b = to_json(sample(wire.Belief, np.random.default_rng(4)))
    bad = {**b, "state": {"names": [], "mean": [1.0, "x"], "var": []}}
    with pytest.raises(WireError, match=r"Belief\.state\.mean: expected a list of numbers"):
        from_json(wire.Belief, bad)
    with pytest.raises(WireError, match=r"Belief\.tick: expected an integer, got True"):
        from_json(wire.Belief, {**b, "tick": True})
    with pytest.raises(WireError, match=r"Ack\.sequence: expected an integer"):
        from_json(wire.Ack, {"sequence": 1.5})
    old = from_json(wire.Ack, {"session_id": "s", "tick": 3})  # an older server's ack
    assert (old.timestamp, old.sequence, old.belief, old.error) == (0.0, 0, None, None)
    with pytest.raises(WireError, match=r"Action\.values: expected a 1-D float32 array"):
        to_json(dataclasses.replace(sample(wire.Action, np.random.default_rng(5)),
                                    values=np.zeros((2, 2))))


def test_an_answer_echoes_the_sequence_and_carries_the_belief():
    rng = np.random.default_rng(6)
    b = sample(wire.Belief, rng)
    ack = wire.answer(wire.Ack("s1", "proprio", 0.2, 4, True, 7), 99, b)
    assert ack.sequence == 99 and ack.timestamp == 0.2
    assert_identical(ack.belief, b)
    assert wire.answer(ack, 3, None).belief is None
