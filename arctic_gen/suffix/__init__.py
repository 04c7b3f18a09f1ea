"""Suffix Decoding: caches of suffix trees over prompts and earlier responses (native tree in native/suffix_tree)."""

from arctic_gen.suffix.cache import SuffixCache, SuffixDraft, SuffixDraftBatch

__all__ = ["SuffixCache", "SuffixDraft", "SuffixDraftBatch"]
