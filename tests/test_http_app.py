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


def test_client_gone_cancels_the_core_work() -> None:
    """The client disconnects while its request is embedding: the core's task is cancelled (work dropped)."""

    class StuckCore:
        model_name = "m"
        cancelled = asyncio.Event()

        async def embed(self, job):
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise

    async def go() -> None:
        core = StuckCore()
        app = build_app(core, lambda: True, 10_000)  # type: ignore[arg-type]
        left = asyncio.Event()
        messages = [{"type": "http.request", "body": b'{"input": ["x"]}', "more_body": False}]

        async def receive() -> dict:
            if messages:
                return messages.pop(0)
            await left.wait()
            return {"type": "http.disconnect"}

        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "http_version": "1.1", "method": "POST", "path": "/v1/embeddings",
                 "raw_path": b"/v1/embeddings", "query_string": b"", "root_path": "", "scheme": "http",
                 "headers": [(b"content-type", b"application/json"), (b"content-length", b"16")],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8080)}
        call = asyncio.ensure_future(app(scope, receive, send))
        await asyncio.sleep(0.2)
        assert not core.cancelled.is_set() and not call.done()
        left.set()
        await asyncio.wait_for(call, 10)
        assert core.cancelled.is_set()
        assert sent[0]["status"] == 499

    _run(go())
