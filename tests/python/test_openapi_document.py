"""The management API's OpenAPI document (control/openapi.json) checked by an independent
validator, openapi-spec-validator.

The Rust tests check the document against the router (every route documented, every
documented route served) and every response the API tests see against its schemas; this
checks that the document itself is valid OpenAPI 3.0, which the Rust side cannot judge.
Plain file reads only: no hub is started.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from openapi_spec_validator import OpenAPIV30SpecValidator
from referencing.exceptions import Unresolvable  # the validator's own reference resolver

DOCUMENT = Path(__file__).resolve().parents[2] / "control" / "openapi.json"


def load() -> dict:
    return json.loads(DOCUMENT.read_text(encoding="utf-8"))


def errors(document: dict) -> list[str]:
    """Every complaint of the validator; a dangling $ref is raised, not yielded."""
    try:
        return [str(e.message) for e in OpenAPIV30SpecValidator(document).iter_errors()]
    except Unresolvable as e:
        return [f"unresolvable reference: {e}"]


def test_the_document_is_valid_openapi_3_0() -> None:
    document = load()
    assert document["openapi"].startswith("3.0.")
    assert errors(document) == []


def test_operation_ids_are_unique() -> None:
    ids = [
        op["operationId"]
        for item in load()["paths"].values()
        for method, op in item.items()
        if method != "parameters"
    ]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


def _without_responses(document: dict) -> dict:
    del document["paths"]["/iot/v1/regions/{region}/hubs"]["get"]["responses"]
    return document


def _dangling_ref(document: dict) -> dict:
    document["components"]["schemas"]["Hub"]["properties"]["limits"] = {
        "$ref": "#/components/schemas/NoSuchSchema"
    }
    return document


def _undeclared_path_parameter(document: dict) -> dict:
    document["paths"]["/iot/v1/regions/{region}/hubs/{hub_id}"]["parameters"] = [
        {"$ref": "#/components/parameters/Region"}
    ]
    return document


@pytest.mark.parametrize(
    "breakage", [_without_responses, _dangling_ref, _undeclared_path_parameter]
)
def test_the_validator_notices_a_broken_copy(breakage) -> None:
    """Guards the test above against a validator that accepts anything."""
    assert errors(breakage(copy.deepcopy(load()))) != []
