"""The one masker: a URL's password never reaches a message, whatever it holds, however it is written."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, unquote

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from extractor.errors import EXIT_BAD_INPUT, BadInputError
from extractor.secrets import (
    MASK,
    RESERVED_IN_USERINFO,
    Redactor,
    check_credentials,
    mask_url,
    split_credentials,
    url_secrets,
)

WHERE = "the database URL (DATABASE_URL)"


def encode(text: str) -> str:
    return quote(text, safe="")


def refusal(url: str) -> BadInputError:
    with pytest.raises(BadInputError) as caught:
        check_credentials(url, WHERE)
    return caught.value


def parts_of(secret: str, shortest: int = 3) -> set[str]:
    """Every substring of ``secret`` of at least ``shortest`` characters."""
    return {secret[i:j] for i in range(len(secret)) for j in range(i + shortest, len(secret) + 1)}


# -- mask_url -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("mysql+pymysql://bot:s3cr3t@db:3306/x", "mysql+pymysql://bot:***@db:3306/x"),
        (
            "postgresql+psycopg://bot:p%40ss%2Fw@127.0.0.1:5432/test",
            "postgresql+psycopg://bot:***@127.0.0.1:5432/test",
        ),
        (
            "mongodb://u:p@h1:27017,h2:27017/db?replicaSet=rs",
            "mongodb://u:***@h1:27017,h2:27017/db?replicaSet=rs",
        ),
        ("mysql+pymysql://bot:@db/x", "mysql+pymysql://bot:***@db/x"),
        ("mysql+pymysql://:pw@db/x", "mysql+pymysql://:***@db/x"),
        ("mysql+pymysql://root@[::1]:3306/test", "mysql+pymysql://root@[::1]:3306/test"),
        ("mongodb://127.0.0.1:27017/db", "mongodb://127.0.0.1:27017/db"),
        ("sqlite:///klines.db", "sqlite:///klines.db"),
        ("not a url", "not a url"),
    ],
)
def test_mask_url_hides_the_password_and_only_it(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert mask_url(masked) == masked


def test_an_unencoded_slash_or_at_in_the_password_is_masked_whole() -> None:
    """Issue 11: ``bot:ab/cd@db/x`` was left unmasked, and ``ret@127.0.0.1`` printed part of a password."""
    assert mask_url("mysql+pymysql://bot:ab/cd@db/x") == "mysql+pymysql://bot:***@db/x"
    assert mask_url("mysql+pymysql://bot:sec@ret@127.0.0.1/x") == "mysql+pymysql://bot:***@127.0.0.1/x"
    assert mask_url("mysql+pymysql://bot:a:b?c#d@db/x") == "mysql+pymysql://bot:***@db/x"


@pytest.mark.parametrize(
    "url", ["sqlite:////srv/app@1/klines.db", "sqlite:///data@2024.db", "sqlite:///:memory:"]
)
def test_a_path_with_an_at_sign_holds_no_credentials(url: str) -> None:
    """No authority (``scheme:///path``), no user information: an ``@`` there is part of a file name."""
    assert split_credentials(url) == ("sqlite://", None, None, url.removeprefix("sqlite://"))
    assert mask_url(url) == url
    check_credentials(url, WHERE)


# -- refusing what must be encoded ----------------------------------------------------------------


@pytest.mark.parametrize("reserved", [*RESERVED_IN_USERINFO, "%", "%4", "%zz"])
def test_an_unencoded_reserved_character_in_the_password_is_refused_without_a_trace_of_it(
    reserved: str,
) -> None:
    password = f"Zq9{reserved}Xk7Wv"
    error = refusal(f"mysql+pymysql://bot:{password}@db:3306/x")
    message = str(error)

    assert error.exit_code == EXIT_BAD_INPUT
    assert "password in the database URL (DATABASE_URL)" in message
    assert "must be URL-encoded" in message
    assert "@ as %40" in message and "urllib.parse.quote" in message
    leaked = {part for part in parts_of(password) if part in message}
    assert leaked == set(), leaked


@pytest.mark.parametrize("reserved", ["@", "/", "?", "#", "[", "]", "%"])
def test_an_unencoded_reserved_character_in_the_user_is_refused(reserved: str) -> None:
    error = refusal(f"mysql+pymysql://us{reserved}er:Zq9Xk7@db/x")
    assert "user name in the database URL (DATABASE_URL)" in str(error)
    assert not any(part in str(error) for part in parts_of("Zq9Xk7"))


@pytest.mark.parametrize(
    "url",
    [
        "mysql+pymysql://bot:p%40ss%3Aw%2Fo%3Fr%23d%5B%5D%25@db:3306/x",
        "postgresql+psycopg://bot:plain@127.0.0.1/test",
        "mongodb://127.0.0.1:27017/db?decimals=string",
        "sqlite:///klines.db",
        "mysql+pymysql://root@127.0.0.1:3306/test",
    ],
)
def test_properly_encoded_urls_pass(url: str) -> None:
    check_credentials(url, WHERE)


def test_the_refusal_is_the_same_whatever_the_password() -> None:
    first = str(refusal("mysql+pymysql://bot:one@two@db/x"))
    second = str(refusal("mysql+pymysql://bot:Zq9/Xk7:Wv#Jy@db/x"))
    assert first == second


@settings(max_examples=300, deadline=None)
@given(
    st.text(min_size=0, max_size=12),
    st.sampled_from([*RESERVED_IN_USERINFO, "%"]),
    st.text(min_size=0, max_size=12),
)
def test_no_refusal_depends_on_the_password(head: str, reserved: str, tail: str) -> None:
    """The message is one text for every password: it can hold none of them."""
    assume("@" not in head + tail or reserved == "@")
    assume(reserved != "%" or not re.match("[0-9A-Fa-f]{2}", tail))  # %00 is an encoded byte, not a bare %
    password = head + reserved + tail
    url = f"mysql+pymysql://bot:{password}@db:3306/x"
    assume(split_credentials(url)[2] == password)  # an '@' in the tail would move the host
    assert str(refusal(url)) == str(refusal("mysql+pymysql://bot:a/b@db:3306/x"))


# -- url_secrets and Redactor ---------------------------------------------------------------------


def test_url_secrets_are_the_password_as_written_and_as_decoded() -> None:
    assert set(url_secrets("mysql+pymysql://bot:p%40ss@db/x")) == {"p%40ss", "p@ss"}
    assert url_secrets("mysql+pymysql://bot:plain@db/x") == ("plain",)
    assert url_secrets("mysql+pymysql://bot@db/x") == ()
    assert url_secrets("mysql+pymysql://bot:@db/x") == ()
    assert url_secrets(None) == ()
    assert url_secrets("") == ()


def test_the_redactor_masks_known_secrets_anywhere() -> None:
    url = "mysql+pymysql://bot:p%40ss%2Fword@db/x"
    redact = Redactor([*url_secrets(url), "k3y-API"])
    text = "(1045, \"Access denied for user 'bot' (using password: p@ss/word)\") with key k3y-API"
    assert redact(text) == "(1045, \"Access denied for user 'bot' (using password: ***)\") with key ***"


def test_the_longest_secret_is_masked_first() -> None:
    assert Redactor(["abc", "abcdef", ""])("abcdef abc") == "*** ***"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (
            "cannot connect to mysql+pymysql://bot:s3cr3t@db:3306/x: refused",
            "cannot connect to mysql+pymysql://bot:***@db:3306/x: refused",
        ),
        (
            "two: a://u:one@h and b+c://v:two@k/p?q=1.",
            "two: a://u:***@h and b+c://v:***@k/p?q=1.",
        ),
        ("quoted 'mongodb://u:pw@h/db'", "quoted 'mongodb://u:***@h/db'"),
        ("no url here: user:pw@host", "no url here: user:pw@host"),
    ],
)
def test_the_redactor_masks_any_url_password_in_text(text: str, masked: str) -> None:
    assert Redactor()(text) == masked


# -- fuzzing the masker ---------------------------------------------------------------------------

schemes = st.from_regex(r"[a-z][a-z0-9+.\-]{0,9}", fullmatch=True)
hosts = st.one_of(
    st.from_regex(r"[a-z0-9]([a-z0-9\-]{0,10}[a-z0-9])?(\.[a-z0-9]{1,8}){0,3}", fullmatch=True),
    st.builds(lambda *octets: ".".join(map(str, octets)), *[st.integers(0, 255)] * 4),
    st.sampled_from(["[::1]", "[2001:db8::7]", "h1:27017,h2:27018"]),
)
ports = st.one_of(st.just(""), st.integers(1, 65535).map(lambda port: f":{port}"))
paths = st.one_of(
    st.just(""),
    st.lists(st.text(max_size=8), max_size=3).map(
        lambda parts: "/" + "/".join(quote(p, safe="") for p in parts)
    ),
).flatmap(
    lambda path: st.one_of(
        st.just(path),
        st.dictionaries(st.text(min_size=1, max_size=6), st.text(max_size=6), max_size=3).map(
            lambda query: (
                path + "?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in query.items())
            )
        ),
    )
)
"""Paths and queries encoded as a URL is: a raw ``@`` there would read as the end of a password."""
secrets_text = st.text(min_size=1, max_size=24)
surroundings = st.text(max_size=30)
separators = st.sampled_from([" ", "\n", "\t", " (", ") ", ": ", "\t'", "' "])


@st.composite
def encoded_urls(draw: st.DrawFn) -> dict[str, str]:
    scheme, user, password = draw(schemes), draw(st.text(max_size=12)), draw(secrets_text)
    host, port, path = draw(hosts), draw(ports), draw(paths)
    user_enc, password_enc = quote(user, safe=""), quote(password, safe="")
    return {
        "scheme": scheme,
        "user": user,
        "password": password,
        "user_enc": user_enc,
        "password_enc": password_enc,
        "after_password": f"{host}{port}{path}",
        "url": f"{scheme}://{user_enc}:{password_enc}@{host}{port}{path}",
        "masked": f"{scheme}://{user_enc}:{MASK}@{host}{port}{path}",
    }


@settings(max_examples=500, deadline=None)
@given(encoded_urls())
@example(
    {
        "scheme": "mysql+pymysql",
        "user": "b@t:",
        "password": "p@ss:w/rd?#[]%",
        "user_enc": quote("b@t:", safe=""),
        "password_enc": quote("p@ss:w/rd?#[]%", safe=""),
        "after_password": "db:3306/x",
        "url": f"mysql+pymysql://{quote('b@t:', safe='')}:{quote('p@ss:w/rd?#[]%', safe='')}@db:3306/x",
        "masked": f"mysql+pymysql://{quote('b@t:', safe='')}:***@db:3306/x",
    }
)
def test_split_credentials_recovers_user_and_password_of_every_encoded_url(url: dict[str, str]) -> None:
    prefix, user, password, rest = split_credentials(url["url"])
    assert (prefix, user, password, rest) == (
        url["scheme"] + "://",
        url["user_enc"],
        url["password_enc"],
        url["after_password"],
    )
    assert unquote(user) == url["user"]
    assert unquote(password) == url["password"]
    check_credentials(url["url"], WHERE)  # a properly encoded URL is never refused
    assert mask_url(url["url"]) == url["masked"]
    assert set(url_secrets(url["url"])) == {url["password"], url["password_enc"]}


@settings(max_examples=500, deadline=None)
@given(encoded_urls(), surroundings, separators, separators, surroundings)
def test_masked_text_never_holds_the_password(
    url: dict[str, str], before: str, left: str, right: str, after: str
) -> None:
    text = f"{before}{left}{url['url']}{right}{after}"
    everything_else = f"{before}{left}{url['masked']}{right}{after}"
    secrets = {url["password"], url["password_enc"]}
    assume(not any(secret in everything_else for secret in secrets))

    by_shape = Redactor()(text)
    knowing = Redactor(url_secrets(url["url"]))(text)

    for secret in secrets:
        assert secret not in by_shape
        assert secret not in knowing
    if left[-1].isspace() and right[0].isspace():
        redact = Redactor()
        assert by_shape == f"{redact(before)}{left}{url['masked']}{right}{redact(after)}"


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=40), secrets_text)
def test_a_known_secret_never_survives_redaction(text: str, secret: str) -> None:
    assume("*" not in secret)  # a secret of stars could be remade from the mask itself
    assert secret not in Redactor([secret])(text + secret + text)


def test_a_redactor_without_secrets_changes_text_without_urls_not_at_all() -> None:
    text: Any = "plain words, user:pw@host and 12:30"
    assert Redactor()(text) == text
