"""vLLM general-plugin entry point (filled in by the plugin issue)."""


def register() -> None:
    """Called by vLLM in every process; must be idempotent."""
