"""HTTP next to gRPC on the same EmbedCore: OpenAI `/v1/embeddings` and TEI `/embed`, `/health`, `/info`, `/metrics`."""
