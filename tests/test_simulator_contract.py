"""The simulator's answers match the provider's published response schemas.

Each answer is validated with jsonschema against the schema that management-openapi.json
documents for that path and status. The spec's schemas mark nothing as required, so every
declared property is made required here: an answer that leaves a documented field out fails.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from orchestrator.simulator import Fault

# The provider spec lives beside the repository (../shared/edis), not inside it.
SPEC_PATH = (
    Path(__file__).resolve().parents[1].parent / "shared" / "edis" / "management-openapi.json"
)

if not SPEC_PATH.is_file():  # pragma: no cover - only outside the project workspace
    pytest.skip(f"provider spec not found at {SPEC_PATH}", allow_module_level=True)

SPEC: dict[str, Any] = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
AUTH_DATA = "inline_response_200_data"


def _resolve(node: Any) -> Any:
    """Inline every local ``$ref`` and require every declared property."""
    if isinstance(node, list):
        return [_resolve(n) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].removeprefix("#/components/schemas/")
        resolved = _resolve(copy.deepcopy(SPEC["components"]["schemas"][name]))
        if name == AUTH_DATA:
            # Its properties are two example kvm ids, not fields: see the auth test.
            del resolved["required"]
        return resolved
    out = {k: _resolve(v) for k, v in node.items() if k != "example"}
    if out.get("type") == "object" and "properties" in out:
        out["required"] = sorted(out["properties"])
    return out


def schema_for(path: str, status: int) -> dict[str, Any]:
    """Return the strict response schema of ``POST path`` answering ``status``."""
    responses = SPEC["paths"][path]["post"]["responses"]
    raw = responses[str(status)]["content"]["application/json"]["schema"]
    resolved: dict[str, Any] = _resolve(raw)
    return resolved


def schema_from_example(example: Any) -> dict[str, Any]:
    """Return a schema requiring the keys and JSON types of a spec example."""
    if isinstance(example, dict):
        return {
            "type": "object",
            "properties": {k: schema_from_example(v) for k, v in example.items()},
            "required": sorted(example),
        }
    if isinstance(example, list):
        return {"type": "array", "items": schema_from_example(example[0]) if example else {}}
    kinds = {bool: "boolean", int: "integer", float: "number", str: "string"}
    return {"type": kinds[type(example)]} if type(example) in kinds else {}


def check(path: str, status: int, body: Any) -> None:
    """Validate ``body`` against the schema of ``path``/``status``; fails the test if not."""
    jsonschema.Draft7Validator(schema_for(path, status)).validate(body)


AUTH = "/kvm/v2/get/auth"
IMAGES = "/kvm/v2/get/images"
REINSTALL = "/kvm/v2/set/reinstall"
POWER = "/kvm/v2/get/power"
DETAILS = "/kvm/v2/get/details"
PER_VPS = [IMAGES, REINSTALL, POWER, DETAILS]
REINSTALL_FIELDS = {"image": "debian-bullseye", "password": "N3w-root-pw"}


def _extra(path: str) -> dict[str, str]:
    return dict(REINSTALL_FIELDS) if path == REINSTALL else {}


def test_the_strict_schemas_reject_a_missing_field() -> None:
    with pytest.raises(jsonschema.ValidationError):
        check(IMAGES, 401, {"error": "Invalid or expired session signature."})


async def test_auth_success_matches_the_spec(sim, sim_http) -> None:
    reply = await sim_http.auth(sim)
    assert reply.status == 200
    assert reply.body["status"] == "success"
    check(AUTH, 200, reply.body)
    data = reply.body["data"]
    # The spec lists two example ids as properties: every entry must fit those entry schemas.
    entry_schemas = [
        _resolve({"$ref": "#/components/schemas/inline_response_200_data_kvm_123456_789012"}),
        _resolve({"$ref": "#/components/schemas/inline_response_200_data_kvm_234567_890123"}),
    ]
    assert list(data) == sim.vps_ids
    for kvm_id, entry in data.items():
        for schema in entry_schemas:
            jsonschema.Draft7Validator(schema).validate(entry)
        assert entry["kvm_id"] == kvm_id


@pytest.mark.parametrize(
    ("fields", "status"),
    [({"pw": "wrong"}, 401), ({"pw": ""}, 400), ({"kvm_id": "kvm_1_2"}, 400)],
    ids=["bad-password", "missing-pw", "foreign-kvm-id"],
)
async def test_auth_errors_match_the_spec(sim, sim_http, fields, status) -> None:
    reply = await sim_http.auth(sim, **fields)
    assert reply.status == status
    check(AUTH, status, reply.body)


async def test_auth_500_matches_the_spec(sim, sim_http) -> None:
    sim.script_faults("get/auth", ["http500"])
    reply = await sim_http.auth(sim)
    assert reply.status == 500
    check(AUTH, 500, reply.body)


@pytest.mark.parametrize("path", PER_VPS)
async def test_per_vps_success_matches_the_spec(sim, sim_http, path) -> None:
    entry = (await sim_http.login(sim))[sim.vps_ids[0]]
    reply = await sim_http.call(entry, path.removeprefix("/kvm/v2/"), **_extra(path))
    assert reply.status == 200
    assert reply.body["status"] == "success"
    check(path, 200, reply.body)
    if path == DETAILS:
        example = SPEC["components"]["schemas"]["inline_response_200_13"]["properties"]["data"]
        jsonschema.Draft7Validator(schema_from_example(example["example"])).validate(
            reply.body["data"]
        )


@pytest.mark.parametrize("path", PER_VPS)
async def test_per_vps_400_matches_the_spec(sim, sim_http, path) -> None:
    entry = (await sim_http.login(sim))[sim.vps_ids[0]]
    reply = await sim_http.post(f"http://{entry['api_host']}{path}", {"kvm_id": entry["kvm_id"]})
    assert reply.status == 400
    check(path, 400, reply.body)


@pytest.mark.parametrize("path", PER_VPS)
async def test_per_vps_401_matches_the_spec(sim, sim_http, path) -> None:
    entry = (await sim_http.login(sim))[sim.vps_ids[0]]
    entry["signature"] = "0" * 50
    reply = await sim_http.call(entry, path.removeprefix("/kvm/v2/"), **_extra(path))
    assert reply.status == 401
    check(path, 401, reply.body)


@pytest.mark.parametrize("path", PER_VPS)
async def test_per_vps_403_matches_the_spec(sim, sim_http, path) -> None:
    entry = (await sim_http.login(sim))[sim.vps_ids[0]]
    entry["kvm_id"] = "kvm_999999_999999"
    reply = await sim_http.call(entry, path.removeprefix("/kvm/v2/"), **_extra(path))
    assert reply.status == 403
    check(path, 403, reply.body)


@pytest.mark.parametrize("path", PER_VPS)
async def test_per_vps_500_matches_the_spec(sim, sim_http, path) -> None:
    endpoint = path.removeprefix("/kvm/v2/")
    entry = (await sim_http.login(sim))[sim.vps_ids[0]]
    sim.script_faults(endpoint, [Fault("http500")])
    reply = await sim_http.call(entry, endpoint, **_extra(path))
    assert reply.status == 500
    check(path, 500, reply.body)


async def test_reinstall_refusals_match_the_spec(sim, sim_http) -> None:
    kvm_id = sim.vps_ids[0]
    entry = (await sim_http.login(sim))[kvm_id]
    unknown = await sim_http.call(entry, "set/reinstall", image="no-such-os", password="x")
    assert unknown.status == 400
    check(REINSTALL, 400, unknown.body)
    sim.set_suspended(kvm_id, True)
    suspended = await sim_http.call(entry, "set/reinstall", **REINSTALL_FIELDS)
    assert suspended.status == 403
    check(REINSTALL, 403, suspended.body)
