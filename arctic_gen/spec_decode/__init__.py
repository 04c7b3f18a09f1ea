"""Speculative proposers of the plugin, one flat module per method (vLLM's `custom_class` proposer contract)."""
