"""`rime serve`: RIME behind an OpenAI-compatible `/v1/embeddings` endpoint (LitServe batching, Prometheus metrics).

Needs the `serve` extra (`pip install "transformers_rime[serve]"`: litserve, prometheus-client). The request
checks (`requests`) are plain Python and import neither.
"""

from .requests import EmbeddingRequest, RequestError, ServeLimits, parse_request


__all__ = ["EmbeddingRequest", "RequestError", "ServeLimits", "parse_request"]
