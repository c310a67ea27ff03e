"""The google-genai provider (SDK 2.x, 3.x): ``generate_content_stream``, Gemini and Vertex AI.

``client.models.generate_content_stream`` and ``client.aio.models.generate_content_stream``
are patched; chat sessions' ``send_message_stream`` calls the former, so a chat
turn is one span (patching both would give two). The SDK differs from openai
where the core must know it: the stream sends its request at the first
``next()`` (``sends_on_first_pull``), an error object inside the stream is
raised as ``errors.APIError`` carrying the SDK's own ``HttpResponse``, and the
response headers and SDK retries are seen on its HTTP layer (``http.py``).
"""

from __future__ import annotations

import importlib.util
import logging
from functools import partial
from typing import Any, List, Optional

from ... import semconv as t
from ...retries.fingerprint import request_fingerprint
from ...stream.wrapper import method_wrapper
from ..base import ChunkReader, Patch, Provider
from .chunks import FINISH_OUTCOMES, read_generate_content_chunk
from .http import http_patches, transport_response
from .request import api_client_of, describe_request

_logger = logging.getLogger(__name__)

KIND = "generate_content"
# (class in google.genai.models, is_async)
STREAM_TARGETS = (("Models", False), ("AsyncModels", True))
# What makes two generate_content_stream calls the same request (application retries).
FINGERPRINT_KEYS = ("model", "contents", "config")
_SDK_RESPONSE_MODULE = "google.genai._api_client"


def reader_for(kind: str) -> ChunkReader:
    return read_generate_content_chunk


class GoogleGenAIProvider(Provider):
    name = t.PROVIDER_GCP_GEMINI
    requirement = "google-genai >= 2.0.0"
    finish_outcomes = FINISH_OUTCOMES
    sends_on_first_pull = True
    sdk_module = "google.genai"

    def __init__(self) -> None:
        # The hooks that are plain functions, bound as they are (no delegating frame).
        self.describe = describe_request  # type: ignore[method-assign]
        self.reader = reader_for  # type: ignore[method-assign]
        self.fingerprint = partial(request_fingerprint, keys=FINGERPRINT_KEYS)  # type: ignore[method-assign]
        self.response_of = transport_response  # type: ignore[method-assign]

    def available(self) -> bool:
        try:
            return importlib.util.find_spec("google.genai") is not None
        except ModuleNotFoundError:  # no ``google`` namespace at all
            return False

    def patches(self, telemetry: Any) -> List[Patch]:
        from google.genai import models

        out: List[Patch] = []
        for class_name, is_async in STREAM_TARGETS:
            owner = getattr(models, class_name, None)
            if owner is not None and "generate_content_stream" in vars(owner):
                out.append((owner, "generate_content_stream", method_wrapper(telemetry, self, KIND, is_async)))
            else:
                _logger.debug("llm_stream_otel: google.genai.models.%s.generate_content_stream missing; skipped", class_name)
        return out + http_patches()

    @staticmethod
    def is_error_event(exc: BaseException) -> bool:
        # An error object inside the stream is raised as an APIError subclass that
        # carries the SDK's own HttpResponse (of the 200 response it came in); an
        # HTTP error status carries the transport's response instead.
        from google.genai import errors

        response = getattr(exc, "response", None)
        return isinstance(exc, errors.APIError) and type(response).__module__ == _SDK_RESPONSE_MODULE

    def retry_client(self, instance: Any) -> Any:
        return api_client_of(instance) or instance

    def kind_of(self, method: Any) -> Optional[str]:
        return KIND if self.owns(method) else None

    def http_status(self, exc: BaseException) -> Optional[int]:
        # APIError.code is the HTTP status of an error response (an error event's is its own code: not one)
        from google.genai import errors

        if isinstance(exc, errors.APIError) and not GoogleGenAIProvider.is_error_event(exc) and isinstance(exc.code, int):
            return exc.code
        return None


PROVIDER = GoogleGenAIProvider
