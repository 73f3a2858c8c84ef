"""The OpenAPI document describes the self-service API well enough to generate a client
(bodies, answers and errors as JSON schemas, the bearer scheme), and ``/docs`` works with
no internet: it names no outside URL and its assets are served by calsync."""

from __future__ import annotations

import re
from typing import Any

from fastapi.testclient import TestClient

SELF_SERVICE = [
    ("get", "/api/users/{user_id}/connections"),
    ("post", "/api/users/{user_id}/connections"),
    ("post", "/api/users/{user_id}/connections/oauth"),
    ("get", "/api/users/{user_id}/calendars"),
    ("put", "/api/users/{user_id}/calendars"),
    ("get", "/api/connections/{connection_id}"),
    ("post", "/api/connections/{connection_id}/refresh"),
    ("post", "/api/connections/{connection_id}/sync"),
    ("delete", "/api/connections/{connection_id}"),
    ("patch", "/api/users/{user_id}"),
]


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref:
        return dict(doc["components"]["schemas"][ref.rsplit("/", 1)[-1]])
    return schema


def test_every_self_service_route_has_schemas_errors_and_the_bearer_scheme(
        app_client: TestClient) -> None:
    doc = app_client.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": doc["components"][
            "securitySchemes"]["bearer"]["description"]}
    error = doc["components"]["schemas"]["ErrorBody"]
    assert set(error["properties"]) == {"error", "detail"}
    for method, path in SELF_SERVICE:
        op = doc["paths"][path][method]
        assert op["security"] == [{"bearer": []}], (method, path)
        ok = next(code for code in op["responses"] if code.startswith("2"))
        ok_schema = op["responses"][ok]["content"]["application/json"]["schema"]
        assert _resolve(doc, ok_schema).get("properties"), (method, path)
        for code in ("401", "403", "404"):
            err = op["responses"][code]["content"]["application/json"]["schema"]
            assert err == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, code)
        if method in ("post", "put", "patch") and not path.endswith(("/refresh", "/sync")):
            body = op["requestBody"]["content"]["application/json"]["schema"]
            assert "$ref" in body or "oneOf" in body, (method, path)
            assert "422" in op["responses"], (method, path)
    tokens = doc["paths"]["/api/tokens"]["get"]["responses"]
    listed = _resolve(doc, tokens["200"]["content"]["application/json"]["schema"])
    token = doc["components"]["schemas"]["TokenOut"]["properties"]
    assert "tokens" in listed["properties"] and "prefix" in token
    assert not any("hash" in name for name in token)
    revoke = doc["paths"]["/api/tokens/{token_id}"]["delete"]["responses"]
    assert {"401", "403", "404"} <= set(revoke) and {"401", "403"} <= set(tokens)
    connect = doc["paths"]["/api/users/{user_id}/connections"]["post"]["requestBody"]
    union = connect["content"]["application/json"]["schema"]
    assert union["discriminator"]["propertyName"] == "provider"
    assert set(union["discriminator"]["mapping"]) == {"caldav", "icloud", "ics"}
    caldav = doc["components"]["schemas"]["CaldavConnect"]
    assert caldav["properties"]["password"]["writeOnly"] is True
    assert caldav["additionalProperties"] is False
    icloud = doc["components"]["schemas"]["IcloudConnect"]
    assert set(icloud["required"]) == {"provider", "apple_id", "app_password"}
    conn = doc["components"]["schemas"]["ConnectionOut"]
    assert {"id", "provider", "account", "status", "last_sync_at", "last_error",
            "calendars"} <= set(conn["properties"])
    assert not any("password" in name for name in conn["properties"])


def test_docs_work_offline(app_client: TestClient) -> None:
    page = app_client.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert not re.search(r"https?://", page.text), "the docs page names an outside URL"
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert len(assets) >= 3
    for asset in assets:
        assert asset.startswith("/"), asset
        resp = app_client.get(asset)
        assert resp.status_code == 200 and len(resp.content) > 100, asset
    assert "/openapi.json" in page.text
    bundle = app_client.get("/docs/assets/swagger-ui-bundle.js").text
    version = re.search(r'version:"(\d+)\.', bundle) or re.search(r'"(5)\.\d+\.\d+"', bundle)
    assert version is not None and int(version.group(1)) >= 5  # renders OpenAPI 3.1
    assert app_client.get("/docs/assets/../../etc/passwd").status_code == 404
    assert app_client.get("/docs/assets/index.html").status_code == 404
