"""Typed handlers: decode straight into a pydantic model."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from kafkaworker.serialization import Codec, Headers, JsonCodec


class ModelCodec:
    """Wraps a codec so that values come out validated as `model`.

    With JSON, pydantic parses and validates the bytes in one pass (model_validate_json),
    which is faster than decoding to a dict first. A validation error is raised as it is:
    it names the failing fields, and the runtime treats it as fatal (no retries; the DLQ).
    """

    def __init__(self, inner: Codec, model: type[BaseModel]) -> None:
        self.inner = inner
        self.model = model
        self.name = f"{inner.name}:{model.__name__}"
        self._json = isinstance(inner, JsonCodec)
        self.uses_headers = getattr(inner, "uses_headers", True)

    def decode(self, data: bytes, headers: Headers) -> BaseModel:
        if self._json:
            return self.model.model_validate_json(data)
        return self.model.model_validate(self.inner.decode(data, headers))

    def encode(self, value: Any) -> bytes:
        return self.inner.encode(value)
