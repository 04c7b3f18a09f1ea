"""The batch job on Ray Data (a local Ray started by the test, 2 CPUs): read_parquet → map_batches with an actor
running our engine → write_parquet gives sentence-transformers' vectors and the local job's schema.
Skipped when Ray is not installed (`pip install 'arctic-serve[ray]'`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_ray_data_path_gives_the_same_vectors(local_ray, tmp_path: Path, st_model, minilm_path: Path) -> None:
    from arctic_embed.batch import EmbedOptions
    from arctic_embed.batch.engine import ChunkEmbeddings
    from arctic_embed.batch.ray_data import RayJob, run_ray_job
    from arctic_embed.batch.writers import chunk_table
    from arctic_embed.testing import varied_texts

    texts = varied_texts(96, seed=3)
    n = len(texts)
    src = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"doc": list(range(1000, 1000 + n)), "text": texts, "extra": ["x"] * n}), src,
                   row_group_size=32)
    job = RayJob(input=str(src), output=str(tmp_path / "vectors"), id_column="doc", actors=1, cpus_per_actor=1,
                 batch_rows=32, embed=EmbedOptions(dtype="float32"))
    summary = run_ray_job(job)
    table = pq.read_table(tmp_path / "vectors")
    table = table.sort_by("id")
    assert table.column("id").to_pylist() == list(range(1000, 1000 + n))
    ours = table.column("vector").combine_chunks().flatten().to_numpy().reshape(n, 384)
    reference = st_model.encode(texts, normalize_embeddings=True, batch_size=32)
    cos = (ours * reference).sum(axis=1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
    assert cos.min() >= 0.9999, cos.min()
    # Same columns and types as the local job writes; exact token accounting from the actor's tokenizer.
    local = chunk_table(pa.array([0], pa.int64()), ChunkEmbeddings(np.zeros((1, 384 * 4), np.uint8), 384, "float32",
                                                                     np.ones(1, np.int32), None))
    assert table.schema.remove_metadata() == local.schema
    assert summary.rows == n and summary.input_tokens == sum(table.column("tokens").to_pylist())
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(minilm_path / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    assert summary.input_tokens == sum(min(len(tok.encode(t).ids), 256) for t in texts)
