"""Wire contracts: JSON Schema files for producers in any language, and the Python types."""

from schemas.types import DeadLetter, ErrorInfo, Reply, Request, Source, Timings

__all__ = ["DeadLetter", "ErrorInfo", "Reply", "Request", "Source", "Timings"]
