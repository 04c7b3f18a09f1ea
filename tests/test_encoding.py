import numpy as np
import pytest
import torch

from arctic_embed.encoding import OutputOptions, encode_batch, encode_rows, row_bytes


@pytest.fixture()
def x() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(5, 20) * 3


def _decode(rows: torch.Tensor, dtype: str) -> np.ndarray:
    raw = rows.numpy().tobytes()
    if dtype == "bfloat16":
        return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32).reshape(rows.shape[0], -1)
    return np.frombuffer(raw, {"float32": "<f4", "float16": "<f2", "int8": "i1", "uint8": "u1"}[dtype]) \
        .reshape(rows.shape[0], -1)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_float_outputs_match_normalized_vectors(x: torch.Tensor, dtype: str) -> None:
    rows, scales = encode_rows(x, OutputOptions(True, 0, dtype))
    assert scales is None and rows.shape == (5, row_bytes(20, dtype))
    expected = torch.nn.functional.normalize(x, dim=-1).numpy()
    np.testing.assert_allclose(_decode(rows, dtype), expected, atol={"float32": 1e-7, "float16": 1e-3,
                                                                     "bfloat16": 8e-3}[dtype])


def test_matryoshka_truncates_then_renormalizes(x: torch.Tensor) -> None:
    rows, _ = encode_rows(x, OutputOptions(True, 8, "float32"))
    out = _decode(rows, "float32")
    np.testing.assert_allclose(out, torch.nn.functional.normalize(x[:, :8], dim=-1).numpy(), atol=1e-7)
    raw, _ = encode_rows(x, OutputOptions(False, 8, "float32"))
    np.testing.assert_allclose(_decode(raw, "float32"), x[:, :8].numpy(), atol=1e-7)


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
def test_integer_outputs_reconstruct_within_one_step(x: torch.Tensor, dtype: str) -> None:
    rows, scales = encode_rows(x, OutputOptions(False, 0, dtype))
    q = _decode(rows, dtype).astype(np.float32)
    ref = x.numpy()
    peak = np.abs(ref).max(axis=1)
    if dtype == "int8":
        np.testing.assert_allclose(scales.numpy(), peak / 127, rtol=1e-6)
        back = q * scales.numpy()[:, None]
        step = peak / 127
    else:
        np.testing.assert_allclose(scales.numpy(), peak, rtol=1e-6)
        back = q / 127.5 * peak[:, None] - peak[:, None]
        step = peak / 127.5
    assert (np.abs(back - ref) <= step[:, None] * 0.51).all()


def test_binary_is_numpy_packbits_of_positive_signs(x: torch.Tensor) -> None:
    rows, _ = encode_rows(x[:, :19], OutputOptions(True, 0, "binary"))
    expected = np.packbits(x[:, :19].numpy() > 0, axis=1)
    assert rows.shape == (5, 3)
    np.testing.assert_array_equal(rows.numpy(), expected)


def test_encode_batch_keeps_each_groups_options_and_scales(x: torch.Tensor) -> None:
    groups = [(0, 2, OutputOptions(True, 0, "float16")), (2, 3, OutputOptions(False, 4, "int8")),
              (3, 5, OutputOptions(True, 0, "float32"))]
    encoded = encode_batch(x, groups)
    assert encoded.group_offsets == [0, 2 * 40, 2 * 40 + 4, 2 * 40 + 4 + 2 * 80]
    assert encoded.scales[0] is None and encoded.scales[2] is None
    scale = np.frombuffer(encoded.scales[1], np.float32)
    assert scale.shape == (1,) and scale[0] == pytest.approx(float(x[2, :4].abs().max()) / 127, rel=1e-6)
    last = np.frombuffer(encoded.data[encoded.group_offsets[2]:encoded.group_offsets[3]], "<f4").reshape(2, 20)
    np.testing.assert_allclose(last, torch.nn.functional.normalize(x[3:], dim=-1).numpy(), atol=1e-7)
