"""arctic_gen: the vLLM plugin and the streaming Generate service."""

__version__ = "0.1.0"
