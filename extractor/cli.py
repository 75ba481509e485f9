"""Command-line interface: parse flags, build objects, call one pipeline function, map errors to exits."""

from __future__ import annotations

import click

from extractor import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="binance-extractor")
def cli() -> None:
    """Copy Binance spot klines into SQLite, MySQL or MongoDB, exactly once."""


def main() -> None:
    cli(prog_name="binance-extractor")
