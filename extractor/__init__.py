"""binance-extractor: copy Binance klines (spot, USD-M and COIN-M futures) into a database, exactly once."""

__version__ = "0.1.0"
