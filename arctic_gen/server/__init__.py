"""The arctic.gen.v1 Generate gRPC service over vLLM's AsyncLLM (with the arctic_gen plugin loaded)."""
