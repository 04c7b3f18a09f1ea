"""Suffix Decoding: caches of suffix trees over prompts and earlier responses (native tree in native/suffix_tree)."""

from arctic_gen.suffix.cache import SuffixCache, SuffixDraft, SuffixDraftBatch, pack_token_lists

__all__ = ["SuffixCache", "SuffixDraft", "SuffixDraftBatch", "pack_token_lists"]
