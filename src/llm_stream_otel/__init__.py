"""llm-stream-otel: OpenTelemetry for LLM streams that get cut.

Importing this package is cheap and does not import ``openai``; patches are
applied by ``LLMStreamInstrumentor().instrument()`` (or automatically by
``opentelemetry-instrument``).
"""

from .instrumentor import LLMStreamInstrumentor
from .version import __version__

__all__ = ["LLMStreamInstrumentor", "__version__"]
