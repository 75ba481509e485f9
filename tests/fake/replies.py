"""HTTP answers as the fake writes them: Binance's JSON errors, nginx and S3 pages, or no answer at all."""

from __future__ import annotations

import json

NO_RESPONSE = 0  # status logged for a reset or a hang: the client never got an answer

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    418: "I'm a teapot",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
JSON = "application/json;charset=UTF-8"


def html_page(status: int, reason: str) -> bytes:
    return (
        f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    ).encode()


NGINX_502 = html_page(502, "Bad Gateway")


class Reply:
    """One HTTP answer, or none at all when ``drop`` is "reset" or "hang"."""

    __slots__ = ("body", "content_type", "drop", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
        content_type: str = JSON,
        drop: str = "",
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers or []
        self.content_type = content_type
        self.drop = drop


def gateway_error(status: int, html: bool) -> Reply:
    return Reply(status, html_page(status, REASONS.get(status, "Error")) if html else b"", [], "text/html")


def binance_error(status: int, code: int, msg: str, headers: list[tuple[str, str]]) -> Reply:
    return Reply(status, json.dumps({"code": code, "msg": msg}, separators=(",", ":")).encode(), headers)


def no_such_key(key: str) -> Reply:
    """S3's answer for a file the archive does not have."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code>'
        f"<Message>The specified key does not exist.</Message><Key>{key}</Key></Error>"
    )
    return Reply(404, body.encode(), [], "application/xml")
