"""The HTTP app's middleware in process (no server): API key, body limit, health while not ready."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import httpx

from arctic_embed.http.app import build_app


def _client(api_key: str = "", ready: bool = True, limit: int = 1000) -> httpx.AsyncClient:
    core = SimpleNamespace(model_name="m")
    app = build_app(core, lambda: ready, limit, None, api_key)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def _run(coro):
    return asyncio.run(coro)


def test_api_key_guards_every_route_but_health() -> None:
    async def go() -> None:
        async with _client(api_key="s3cret") as client:
            none = await client.get("/v1/models")
            assert none.status_code == 401 and none.json()["error"]["type"] == "authentication_error"
            wrong = await client.post("/embed", json={"inputs": "x"}, headers={"authorization": "Bearer nope"})
            assert wrong.status_code == 401 and wrong.json()["error_type"] == "Unauthorized"
            ok = await client.get("/v1/models", headers={"authorization": "Bearer s3cret"})
            assert ok.status_code == 200 and ok.json()["data"][0]["id"] == "m"
            assert (await client.get("/health")).status_code == 200

    _run(go())


def test_body_over_the_limit_is_413_and_health_503_when_not_ready() -> None:
    async def go() -> None:
        async with _client(ready=False, limit=100) as client:
            big = await client.post("/v1/embeddings", json={"input": "x" * 200})
            assert big.status_code == 413 and "over the limit of 100" in big.json()["error"]["message"]
            tei = await client.post("/embed", json={"inputs": "x" * 200})
            assert tei.status_code == 413 and tei.json()["error_type"] == "Validation"
            health = await client.get("/health")
            assert health.status_code == 503 and health.json()["error_type"] == "Unhealthy"

    _run(go())
