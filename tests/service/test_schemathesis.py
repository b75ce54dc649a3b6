"""Schemathesis against the server's own /openapi.json, bounded (a fixed, seeded number of
cases per operation and mode, no coverage phase): every response is documented and has
its schema, requests that break the schema are refused with a 4xx, and none is a 5xx.
(Schema-valid requests may still be refused: a timestamp outside the history window is a
valid number; so schemathesis' positive_data_acceptance check is left out.) Path ids
point at a live session so bodies reach the session logic, not only the 404 of an
unknown id. The token comes from the security scheme, so negative cases also leave it
out. (The Python API, not schemathesis' pytest plugin.)"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.service.conftest import TOKEN

pytestmark = pytest.mark.slow
AUTH = {"authorization": f"Bearer {TOKEN}"}
CASES = 25  # per operation and mode (positive, negative)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.http_url, headers=AUTH, timeout=30) as client:
        yield client


def test_openapi_operations(server, http):
    config = schemathesis.Config.from_dict({"auth": {"openapi": {"bearer": {"bearer": TOKEN}}}})
    schema = schemathesis.openapi.from_url(f"{server.http_url}/openapi.json", config=config)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    counts = {"cases": 0, "server_errors": 0, "refused": 0}

    def check(case):
        sid = http.post("/v1/sessions", json={"start_time": 0.0}).json()["session_id"]
        try:
            http.post(f"/v1/sessions/{sid}/messages",
                      json={"sensor": "proprio", "timestamp": 0.01, "values": [0, 0, 0]})
            if case.path_parameters and "session_id" in case.path_parameters:
                case.path_parameters["session_id"] = sid
            response = case.call(base_url=server.http_url)
            counts["cases"] += 1
            counts["server_errors"] += response.status_code >= 500
            counts["refused"] += response.status_code >= 400
            case.validate_response(response, excluded_checks=[positive_data_acceptance])
            if case.path == "/v1/sessions" and response.status_code == 201:
                http.delete(f"/v1/sessions/{response.json()['session_id']}")
        finally:
            http.delete(f"/v1/sessions/{sid}")

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            run = settings(max_examples=CASES, deadline=None, derandomize=True, database=None,
                           suppress_health_check=list(HealthCheck))(
                given(case=operation.as_strategy(generation_mode=mode))(check))
            try:
                run()
            except Unsatisfiable:  # nothing to make invalid (GET /healthz: no parameters)
                assert mode == GenerationMode.NEGATIVE, operation.label
    print(f"schemathesis: {counts['cases']} cases over {len(operations)} operations, "
          f"{counts['refused']} refused (4xx), {counts['server_errors']} server errors")
    assert counts["server_errors"] == 0 and counts["cases"] >= len(operations) * CASES
