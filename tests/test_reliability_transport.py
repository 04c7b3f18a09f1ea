"""The shared gRPC transport pieces, in-process (fast): errors carry no internal detail, undecodable bytes are
INVALID_ARGUMENT, the pending-call limits that made grpc CANCEL calls are raised, API key, TLS and mutual TLS."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from arctic_embed.auth import bearer_matches
from arctic_embed.errors import EmbedError, status_code_for
from arctic_embed.grpc.errors import StatusInterceptor
from arctic_embed.grpc.transport import ApiKeyInterceptor, bind, server_credentials, server_options


async def _boom(request: bytes, context) -> bytes:
    raise RuntimeError("secret detail /srv/models/x.bin in pid 4242")


async def _echo(request: bytes, context) -> bytes:
    return request


def _identity(raw: bytes) -> bytes:
    return raw


async def _serve(interceptors: list, credentials: grpc.ServerCredentials | None = None,
                 reuse_port: bool = False) -> tuple[aio.Server, int]:
    server = aio.server(interceptors=interceptors, options=server_options(4 * 2**20, reuse_port))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Svc", {
        "Boom": grpc.unary_unary_rpc_method_handler(_boom, _identity, _identity),
        "Echo": grpc.unary_unary_rpc_method_handler(_echo, _identity, _identity),
    })])
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = bind(server, "127.0.0.1:0", credentials)
    await server.start()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, port


def _interceptor() -> StatusInterceptor:
    return StatusInterceptor(status_code_for, EmbedError)


def test_unexpected_errors_reach_the_client_without_internal_detail() -> None:
    async def run() -> grpc.aio.AioRpcError:
        server, port = await _serve([_interceptor()])
        try:
            async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await channel.unary_unary("/test.Svc/Boom")(b"x", timeout=10)
                return err.value
        finally:
            await server.stop(0)

    error = asyncio.run(run())
    assert error.code() == grpc.StatusCode.INTERNAL
    details = error.details()
    assert "RuntimeError" not in details and "/srv" not in details and "4242" not in details
    assert "incident" in details


def test_health_check_with_undecodable_bytes_is_invalid_argument() -> None:
    async def run() -> grpc.StatusCode:
        server, port = await _serve([_interceptor()])
        try:
            async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                try:
                    await channel.unary_unary("/grpc.health.v1.Health/Check")(b"\x0a\x05ab", timeout=10)
                except grpc.aio.AioRpcError as exc:
                    return exc.code()
                return grpc.StatusCode.OK
        finally:
            await server.stop(0)

    assert asyncio.run(run()) == grpc.StatusCode.INVALID_ARGUMENT


def test_server_options_lift_the_pending_call_limits_and_reuse_port_is_opt_in() -> None:
    options = dict(server_options(1024))
    assert options["grpc.server.max_pending_requests"] >= 65536
    assert options["grpc.server.max_pending_requests_hard_limit"] >= 65536
    assert options["grpc.server_max_unrequested_time_in_server"] >= 3600
    assert options["grpc.so_reuseport"] == 0
    assert dict(server_options(1024, reuse_port=True))["grpc.so_reuseport"] == 1


def test_second_server_on_a_taken_port_fails_to_bind() -> None:
    async def run() -> None:
        first, port = await _serve([])
        try:
            second = aio.server(options=server_options(1024))
            with pytest.raises(OSError, match="cannot listen"):
                bind(second, f"127.0.0.1:{port}", None)
        finally:
            await first.stop(0)

    asyncio.run(run())


def test_bearer_matches() -> None:
    assert bearer_matches("Bearer s3cret", "s3cret") and bearer_matches("bearer  s3cret ", "s3cret")
    assert not bearer_matches("Bearer wrong", "s3cret") and not bearer_matches(None, "s3cret")
    assert not bearer_matches("Basic s3cret", "s3cret")


def test_api_key_is_required_except_for_health_checks() -> None:
    async def run() -> list:
        server, port = await _serve([ApiKeyInterceptor("s3cret"), _interceptor()])
        out = []
        try:
            async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                echo = channel.unary_unary("/test.Svc/Echo")
                for metadata in (None, (("authorization", "Bearer wrong"),), (("authorization", "Bearer s3cret"),)):
                    try:
                        out.append(await echo(b"hi", metadata=metadata, timeout=10))
                    except grpc.aio.AioRpcError as exc:
                        out.append(exc.code())
                check = health_pb2_grpc.HealthStub(channel).Check
                out.append((await check(health_pb2.HealthCheckRequest(), timeout=10)).status)
        finally:
            await server.stop(0)
        return out

    assert asyncio.run(run()) == [grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAUTHENTICATED, b"hi",
                                  health_pb2.HealthCheckResponse.SERVING]


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, made with openssl."""
    d = tmp_path_factory.mktemp("pki")

    def sh(*args: str) -> None:
        subprocess.run(args, cwd=d, check=True, capture_output=True)

    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days",
       "2", "-subj", "/CN=test-ca")
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client"):
        sh("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
           "-subj", f"/CN={name}")
        sh("openssl", "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
           "-out", f"{name}.pem", "-days", "2", "-extfile", "san.ext")
    return d


def test_tls_and_mutual_tls(pki: Path) -> None:
    ca = (pki / "ca.pem").read_bytes()
    client_key, client_chain = (pki / "client.key").read_bytes(), (pki / "client.pem").read_bytes()

    async def call(port: int, credentials: grpc.ChannelCredentials) -> object:
        async with aio.secure_channel(f"localhost:{port}", credentials) as channel:
            try:
                return await channel.unary_unary("/test.Svc/Echo")(b"tls", timeout=10)
            except grpc.aio.AioRpcError as exc:
                return exc.code()

    async def run() -> list:
        out = []
        tls = server_credentials(str(pki / "server.pem"), str(pki / "server.key"))
        server, port = await _serve([_interceptor()], tls)
        try:
            out.append(await call(port, grpc.ssl_channel_credentials(ca)))
        finally:
            await server.stop(0)
        mtls = server_credentials(str(pki / "server.pem"), str(pki / "server.key"), str(pki / "ca.pem"))
        server, port = await _serve([_interceptor()], mtls)
        try:
            out.append(await call(port, grpc.ssl_channel_credentials(ca)))  # no client certificate
            out.append(await call(port, grpc.ssl_channel_credentials(ca, client_key, client_chain)))
        finally:
            await server.stop(0)
        return out

    plain, without_cert, with_cert = asyncio.run(run())
    assert plain == b"tls"
    assert without_cert == grpc.StatusCode.UNAVAILABLE
    assert with_cert == b"tls"


def test_4096_concurrent_unary_calls_on_one_channel_are_never_cancelled() -> None:
    # grpc core's defaults (1,000 pending calls, then random CANCELLED; 3,000 hard) failed ~1,500 of these.
    async def run() -> dict:
        server, port = await _serve([_interceptor()])
        codes: dict = {}
        try:
            async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                echo = channel.unary_unary("/test.Svc/Echo")

                async def one() -> None:
                    try:
                        await echo(b"x" * 100, timeout=120)
                        codes["OK"] = codes.get("OK", 0) + 1
                    except grpc.aio.AioRpcError as exc:
                        codes[exc.code().name] = codes.get(exc.code().name, 0) + 1

                await asyncio.gather(*(one() for _ in range(4096)))
        finally:
            await server.stop(0)
        return codes

    assert asyncio.run(run()) == {"OK": 4096}
