"""binance-extractor: copy Binance spot klines into a database, exactly once."""

__version__ = "0.1.0"
