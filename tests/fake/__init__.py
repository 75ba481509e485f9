"""The fake Binance the tests run against; import it through ``tests.fake_exchange``.

series    the deterministic candle generator and the fake's own interval arithmetic
markets   what differs between spot, USD-M and COIN-M; the default listings
api       one market's REST API: klines paging, exchangeInfo, Binance's error codes
weight    weight pools per (client address, market), 429 and 418
faults    gateway faults, wrong data in 200 answers, archive faults
archive   data.binance.vision: zips, CHECKSUMs, microseconds, headers, publication, cache
replies   the HTTP answers (Binance JSON errors, nginx and S3 pages)
http      the threaded server and its request handler
server    FakeExchange: routing, accounting, the request log, stats
"""
