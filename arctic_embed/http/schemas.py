"""Request bodies of the HTTP API (pydantic, so FastAPI validates them and documents them at /docs)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# One text, many texts, one token-id list, or many token-id lists (the model's own vocabulary).
EmbedInput = str | list[str] | list[int] | list[list[int]]


class OpenAIEmbeddingRequest(BaseModel):
    """OpenAI's `POST /v1/embeddings` body, plus a few of our options under their own names."""

    model_config = ConfigDict(extra="ignore")

    input: EmbedInput = Field(description="a text, a list of texts, a token-id list or a list of token-id lists")
    model: str = Field("", description="the served model's name (or empty); anything else is a 400")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="`float`: JSON numbers; `base64`: little-endian float32 bytes per vector")
    dimensions: int | None = Field(None, description="Matryoshka: keep the first N values, renormalized")
    user: str | None = Field(None, description="accepted and ignored")
    normalize: bool = Field(True, description="extension: L2-normalize (OpenAI's vectors always are)")
    truncate: bool = Field(True, description="extension: cut inputs over the model's limit instead of a 400")


class TEIEmbedRequest(BaseModel):
    """text-embeddings-inference's `POST /embed` body."""

    model_config = ConfigDict(extra="ignore")

    inputs: EmbedInput = Field(description="a text, a list of texts, or token ids")
    normalize: bool = True
    truncate: bool | None = Field(None, description="None = truncate (this server's default); false = 422 if too long")
    truncation_direction: str = Field("right", description="right or left (case-insensitive)")
    prompt_name: str | None = None
    dimensions: int | None = None
