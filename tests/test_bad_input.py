"""Every bad input gets its status; the server keeps serving and loses nothing (no replica restarts)."""

import grpc
import numpy as np
import pytest

from arctic_embed.client import EmbedClient, build_request
from arctic_protos.arctic.embed.v1 import embed_pb2 as pb
from arctic_protos.arctic.embed.v1 import embed_pb2_grpc as pb_grpc
from arctic_protos.arctic_inference import inference_pb2, inference_pb2_grpc

LONG = "word " * 400


@pytest.fixture(scope="module")
def stub(embed_server):
    with grpc.insecure_channel(embed_server.target) as channel:
        yield pb_grpc.EmbedServiceStub(channel)


def _ids(*arrays) -> list[pb.TokenIds]:
    return [pb.TokenIds(ids_i32=a if isinstance(a, bytes) else np.asarray(a, "<i4").tobytes()) for a in arrays]


BAD = {
    "empty input list": (pb.EmbedRequest(), "no inputs"),
    "too many inputs": (pb.EmbedRequest(texts=["x"] * 257), "over the limit of 256"),
    "too long without truncation": (
        pb.EmbedRequest(texts=["ok", LONG], options=pb.EmbedOptions(truncate=False)), "over the model's limit"),
    "ids not a multiple of 4 bytes": (pb.EmbedRequest(token_ids=_ids(b"\x01\x00\x00")), "not a multiple of 4"),
    "id above the vocabulary": (pb.EmbedRequest(token_ids=_ids([101, 30522, 102])), "outside the vocabulary"),
    "negative id": (pb.EmbedRequest(token_ids=_ids([101, -1, 102])), "outside the vocabulary"),
    "empty id list": (pb.EmbedRequest(token_ids=_ids(b"")), "is empty"),
    "ids too long without truncation": (
        pb.EmbedRequest(token_ids=_ids([101] * 300), options=pb.EmbedOptions(truncate=False)), "over the model"),
    "texts and ids together": (pb.EmbedRequest(texts=["a"], token_ids=_ids([101, 102])), "not both"),
    "unknown model": (pb.EmbedRequest(texts=["a"], model="bge-large"), "unknown model"),
    "dimensions 0": (pb.EmbedRequest(texts=["a"], options=pb.EmbedOptions(dimensions=0)), "outside 1..384"),
    "dimensions above the model's": (
        pb.EmbedRequest(texts=["a"], options=pb.EmbedOptions(dimensions=385)), "outside 1..384"),
    "unknown dtype": (pb.EmbedRequest(texts=["a"], options=pb.EmbedOptions(output_dtype=42)), "unknown output dtype"),
    "unknown prompt name": (pb.EmbedRequest(texts=["a"], options=pb.EmbedOptions(prompt_name="query")),
                            "unknown prompt_name"),
    "prompt name and prefix": (
        pb.EmbedRequest(texts=["a"], options=pb.EmbedOptions(prompt_name="q", prefix="query: ")), "not both"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_invalid_argument(stub, case: str) -> None:
    request, message = BAD[case]
    with pytest.raises(grpc.RpcError) as err:
        stub.Embed(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert message in err.value.details()


def test_message_over_the_size_limit_is_resource_exhausted(stub) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.Embed(pb.EmbedRequest(texts=["x" * (5 * 2**20)]), timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_truncation_on_either_side(embed_server, st_model) -> None:
    with EmbedClient(embed_server.target) as client:
        right = client.embed([LONG + " end"])
        left = client.embed([LONG + " end"], truncation_side="left")
        ids = client.tokenize([LONG + " end"], truncation_side="left")[0]
    assert ids.size == 256 and ids[-2] != ids[-3]  # "end" survived on the left side's cut
    ref = st_model.encode([LONG + " end"], normalize_embeddings=True)
    assert float(right[0] @ ref[0]) >= 0.9999
    assert float(left[0] @ right[0]) < 0.9999


def test_arctic_encode_bad_input(embed_server) -> None:
    with grpc.insecure_channel(embed_server.target) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        for request in (inference_pb2.EncodeRequest(),
                        inference_pb2.EncodeRequest(n_prompts=3, prompts=["a"]),
                        inference_pb2.EncodeRequest(token_id_bytes_i32=[b"\x00\x01"])):
            with pytest.raises(grpc.RpcError) as err:
                stub.Encode(request, timeout=30)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        abort = stub.Abort(inference_pb2.AbortRequest(request_id="never-sent"))
        assert not abort.success and "no request" in abort.message


def test_server_is_unharmed_after_bad_input(embed_server, stub) -> None:
    for request, _ in BAD.values():
        with pytest.raises(grpc.RpcError):
            stub.Embed(request, timeout=30)
    ok = stub.Embed(build_request(["still here"]), timeout=30)
    assert len(ok.embeddings) == 1
    with grpc.insecure_channel(embed_server.target) as channel:
        info = inference_pb2_grpc.InferenceServiceStub(channel).GetReplicaInfo(inference_pb2.ReplicaInfoRequest())
    assert info.n_healthy_replicas == 2
    assert all('"restarts": 0' in r.parallel_config for r in info.replica_infos)
