"""Where klines come from: the KlineSource protocol and its REST and archive implementations."""

from extractor.sources.base import Answer, KlineSource, Window

__all__ = ["Answer", "KlineSource", "Window"]
