"""schemathesis against the live server's /openapi.json (loopback only, a bounded number of examples):
no 500, every status and content type documented, every JSON body as the schema says."""

from __future__ import annotations

import collections

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.serve.conftest import start  # noqa: E402

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
#: Requests sent per operation (the last test checks that every operation was exercised).
SENT: collections.Counter = collections.Counter()


@pytest.fixture(scope="module")
def live(tmp_path_factory, tiny_model):
    server, client = start(tmp_path_factory.mktemp("fuzz"), tiny_model, token="fuzz-token", queue=4,
                           max_body_mb=0.5)
    yield server
    client.close()
    server.__exit__()


@pytest.fixture(scope="module")
def api_schema(live):
    assert live.url.startswith("http://127.0.0.1:")
    return schemathesis.openapi.from_url(f"{live.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_keeps_its_own_document(case, live):
    SENT[f"{case.method} {case.path}"] += 1
    case.call_and_validate(base_url=live.url, headers={"Authorization": "Bearer fuzz-token"}, checks=CHECKS,
                           timeout=30)


def test_every_operation_was_sent_requests():
    assert {"GET /healthz", "GET /v1/model", "POST /v1/segment", "POST /v1/slides", "GET /v1/jobs/{job_id}",
            "DELETE /v1/jobs/{job_id}"} <= set(SENT), SENT
    assert sum(SENT.values()) < 2000, SENT  # bounded: schemathesis' coverage cases plus max_examples each
