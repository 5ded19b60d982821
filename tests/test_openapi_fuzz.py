"""Schemathesis against /openapi.json: no 5xx for any input, every response matches the documented schema."""

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis import checks  # noqa: E402

from app.openapi import DOCUMENT  # noqa: E402

schema = schemathesis.openapi.from_dict(DOCUMENT)


@pytest.fixture
def wsgi_app(app):
    return app


def test_openapi_document_is_served(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.get_json()["paths"].keys() == DOCUMENT["paths"].keys()


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_storefront_api_never_fails_and_matches_its_schema(case, app):
    response = case.call(app=app)
    # Business rules (a cart total cap, a quantity cap per line) may refuse schema-valid input
    # with a 4xx; what must never happen is a 5xx or a response the document does not describe.
    case.validate_response(
        response,
        checks=[
            checks.not_a_server_error,
            checks.status_code_conformance,
            checks.content_type_conformance,
            checks.response_schema_conformance,
        ],
    )
