"""Training pipelines of the plugin (speculators, SwiftKV); installed with the `[train]` extra."""
