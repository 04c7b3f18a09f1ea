"""arctic_embed: the embedding gRPC service."""

__version__ = "0.1.0"
