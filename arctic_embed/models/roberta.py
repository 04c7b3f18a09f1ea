"""RoBERTa, XLM-RoBERTa (arctic-embed-l-v2.0, multilingual-e5, bge-m3) and CamemBERT: BERT's layers, with positions
numbered from `pad_token_id + 1` (fairseq's convention) and a single token type. Tokenizers differ (byte-level BPE
for RoBERTa, SentencePiece Unigram for XLM-R); the model file does not care.
"""

from __future__ import annotations

from arctic_embed.models.bert import BertModel


class RobertaModel(BertModel):
    def _position_offset(self, config: dict) -> int:
        return int(config.get("pad_token_id", 1)) + 1


XLMRobertaModel = RobertaModel
