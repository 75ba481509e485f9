"""Command-line interface: parse flags, call one pipeline function, print, and map errors to exit codes.

Heavy modules (requests, SQLAlchemy, drivers, tqdm) are imported only inside commands, so ``--help`` is
instant. Options shared by every command are accepted before or after the command name.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from extractor import __version__
from extractor.errors import EXIT_FAILURE, BadInputError, ExtractorError, format_utc, plural
from extractor.lifecycle import RunStop, stop_on_signals
from extractor.secrets import Redactor
from extractor.settings import MARKET_NAMES, SOURCES, Settings, load_settings, secret_values
from extractor.when import parse_when

if TYPE_CHECKING:
    from extractor.pipeline.runtime import Runtime

F = TypeVar("F", bound=Callable[..., Any])
GLOBAL_KEYS = ("db_url", "base_url", "config_file", "log_format", "verbose", "quiet")


def _fallback_redact() -> Redactor:
    """The masker before settings exist: the secrets the environment and the flags hold."""
    db_flag = None
    for flag in ("--db",):
        if flag in sys.argv:
            index = sys.argv.index(flag)
            db_flag = sys.argv[index + 1] if index + 1 < len(sys.argv) else None
    secrets = secret_values(db_flag, None) + secret_values(
        os.environ.get("DATABASE_URL"), os.environ.get("BINANCE_API_KEY")
    )
    return Redactor(secrets)


class ExtractorGroup(click.Group):
    """Turns our exception tree into one line on stderr and the exit code of design §6."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ExtractorError as exc:
            _final(ctx, str(exc), exc.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:
            if ctx.obj and ctx.obj.get("verbose", 0) > 1:
                raise
            _final(
                ctx,
                f"unexpected failure: {type(exc).__name__}: {exc} (run with -vv for the traceback)",
                EXIT_FAILURE,
            )


def _final(ctx: click.Context, /, message: str, exit_code: int) -> None:
    from extractor import logs

    obj = ctx.obj or {}
    settings: Settings | None = obj.get("settings")
    redact = settings.redact if settings is not None else _fallback_redact()
    log_format = settings.log_format if settings is not None else (obj.get("log_format") or _env_log_format())
    click.echo(
        logs.final_line(
            message if message.startswith("interrupted") else f"error: {message}",
            log_format=log_format,
            exit_code=exit_code,
            redact=redact,
        ),
        err=True,
    )
    ctx.exit(exit_code)


def _env_log_format() -> str:
    """LOG_FORMAT for the final line when settings could not load (a bad value there falls back to text)."""
    value = os.environ.get("LOG_FORMAT", "").strip().lower()
    return value if value in ("text", "json") else "text"


def global_options(func: F) -> F:
    """--db, --base-url, --config, --log-format, -v, -q: on the group and on every command."""
    options = [
        click.option(
            "--db",
            "db_url",
            metavar="URL",
            help="sqlite:///file.db, mysql+pymysql://…, postgresql+psycopg://…, mongodb://… "
            "[env DATABASE_URL; default sqlite:///klines.db]",
        ),
        click.option(
            "--base-url",
            metavar="URL",
            help="Exchange REST base URL. [env BINANCE_API_URL; default: the market's host]",
        ),
        click.option(
            "--config", "config_file", metavar="FILE", help="TOML config file. [env EXTRACTOR_CONFIG]"
        ),
        click.option(
            "--log-format",
            type=click.Choice(["text", "json"]),
            help="Log lines as text or JSON. [env LOG_FORMAT]",
        ),
        click.option(
            "-v", "--verbose", count=True, help="More logging (-v info, -vv debug). [env LOG_LEVEL]"
        ),
        click.option("-q", "--quiet", is_flag=True, default=None, help="Errors only; no summary lines."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _merge_globals(ctx: click.Context, /, given: dict[str, Any]) -> None:
    """Global options given after the command name win over those given before it."""
    obj = ctx.ensure_object(dict)
    for key in GLOBAL_KEYS:
        value = given.pop(key, None)
        if value not in (None, 0, False):
            obj[key] = value


def series_options(func: F) -> F:
    """--market, -s/--symbol and -i/--interval, repeatable and comma-separated."""
    func = click.option(
        "-i",
        "--interval",
        "intervals",
        multiple=True,
        metavar="INT",
        help="Kline interval (1s 1m 3m 5m 15m 30m 1h 2h 4h 6h 8h 12h 1d 3d 1w 1M); repeat or comma-separate. "
        "[env EXTRACTOR_INTERVALS]",
    )(func)
    func = click.option(
        "-s",
        "--symbol",
        "symbols",
        multiple=True,
        metavar="SYM",
        help="Symbol such as BTCUSDT (COIN-M: BTCUSD_PERP), or ALL for every TRADING one; repeat or "
        "comma-separate. [env EXTRACTOR_SYMBOLS]",
    )(func)
    func = click.option(
        "--market",
        type=click.Choice(MARKET_NAMES),
        help="spot, usdm (USD-M futures) or coinm (COIN-M futures). [env EXTRACTOR_MARKET; default spot]",
    )(func)
    return func


def quote_option(func: F) -> F:
    return click.option(
        "--quote",
        "quotes",
        multiple=True,
        metavar="ASSET",
        help="With -s ALL: only symbols quoted in ASSET (e.g. USDT); repeatable. [env EXTRACTOR_QUOTES]",
    )(func)


def shard_option(func: F) -> F:
    return click.option(
        "--shard",
        metavar="K/N",
        help="Work on shard K of N of the series (a Kubernetes Indexed Job sets it from "
        "JOB_COMPLETION_INDEX and EXTRACTOR_SHARDS). [env EXTRACTOR_SHARD]",
    )(func)


def _settings(ctx: click.Context, /, **command_flags: Any) -> Settings:
    from extractor import logs

    obj = ctx.ensure_object(dict)
    verbosity = -1 if obj.get("quiet") else obj.get("verbose", 0)
    settings = load_settings(
        environ=os.environ,
        db_url=obj.get("db_url"),
        base_url=obj.get("base_url"),
        config_file=obj.get("config_file"),
        log_format=obj.get("log_format"),
        verbosity=verbosity,
        **command_flags,
    )
    obj["settings"] = settings
    level = settings.log_level or ("INFO" if sys.stderr.isatty() else "WARNING")
    logs.configure(settings.log_format, level, settings.redact)
    return settings


def _runtime(ctx: click.Context, /, settings: Settings) -> Runtime:
    from extractor.pipeline.runtime import Runtime

    obj = ctx.ensure_object(dict)
    runtime = Runtime(settings, stop=obj.get("stop"))
    ctx.call_on_close(runtime.close)
    return runtime


def _quiet(ctx: click.Context) -> bool:
    settings: Settings = ctx.obj["settings"]
    return settings.log_level == "ERROR"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _range(start: str | None, end: str | None) -> tuple[int | None, int | None]:
    now = _now_ms()
    start_ms = parse_when(start, now_ms=now, what="--start") if start is not None else None
    end_ms = parse_when(end, now_ms=now, what="--end") if end is not None else None
    if start_ms is not None and end_ms is not None and start_ms >= end_ms:
        raise BadInputError(
            f"--start {format_utc(start_ms / 1000)} is not before --end {format_utc(end_ms / 1000)}"
        )
    return start_ms, end_ms


@click.group(
    cls=ExtractorGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
    epilog="Examples:\n\n\b\n  binance-extractor backfill -s BTCUSDT -i 1m --start 2024-01-01\n"
    "  binance-extractor extract -s BTCUSDT,ETHUSDT -i 1m,1h\n  binance-extractor status",
)
@click.version_option(__version__, prog_name="binance-extractor")
@global_options
@click.pass_context
def cli(ctx: click.Context, /, **given: Any) -> None:
    """Copy Binance klines (spot, USD-M and COIN-M futures) into SQLite, MySQL, PostgreSQL or MongoDB:
    every closed candle exactly once.

    Exit codes: 0 done, 1 unexpected failure (a bug), 2 bad input or environment, 75 temporary
    failure (try again later), 130/143 interrupted.
    """
    _merge_globals(ctx, given)


@cli.command(
    epilog="Examples:\n\n\b\n  binance-extractor backfill -s BTCUSDT -i 1m --start 2024-01-01\n"
    "  binance-extractor backfill --market usdm -s BTCUSDT,ETHUSDT -i 1h --start 90d --end 30d\n"
    "  binance-extractor --db mysql+pymysql://bot:secret@db/market backfill -s BTCUSDT -i 1d "
    "--start 2017-01-01",
)
@series_options
@quote_option
@click.option(
    "--start",
    required=True,
    metavar="WHEN",
    help="First open time (inclusive): 2024-01-01, ISO 8601, epoch s/ms/µs, now, 90d.",
)
@click.option("--end", metavar="WHEN", help="End (exclusive) of the range. [default: now]")
@click.option(
    "--concurrency",
    type=str,
    metavar="N",
    help="Most requests in flight at once (1-64). [env EXTRACTOR_CONCURRENCY; default 32]",
)
@click.option(
    "--source",
    type=click.Choice(SOURCES),
    help="Where candles come from: auto (archive files for closed months and days, REST for the rest), "
    "rest, archive. [env EXTRACTOR_SOURCE; default auto]",
)
@click.option(
    "--archive-url",
    metavar="URL",
    help="The archive's base URL. [env BINANCE_ARCHIVE_URL; default https://data.binance.vision]",
)
@shard_option
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bars on stderr. [default: on when stderr is a terminal]",
)
@global_options
@click.pass_context
def backfill(ctx: click.Context, /, start: str, end: str | None, progress: bool | None, **flags: Any) -> None:
    """Fetch a historical range, as fast as the exchange allows; resumable after a kill."""
    _merge_globals(ctx, flags)
    settings = _settings(ctx, **flags)
    start_ms, end_ms = _range(start, end)
    assert start_ms is not None
    if end_ms is None:
        end_ms = _now_ms()
    if start_ms >= _now_ms():
        raise BadInputError(f"--start {format_utc(start_ms / 1000)} is in the future")
    if start_ms >= end_ms:
        raise BadInputError(
            f"--start {format_utc(start_ms / 1000)} is not before --end {format_utc(end_ms / 1000)}"
        )
    from extractor.pipeline import run

    runtime = _runtime(ctx, settings)
    show = sys.stderr.isatty() if progress is None else progress
    display = None
    if show and not _quiet(ctx):
        from extractor.progress import ProgressDisplay

        display = ProgressDisplay()
        runtime.on_wait = display.waiting
    try:
        result = run.backfill(runtime, start_ms, end_ms, display)
    finally:
        if display is not None:
            display.close()
    if not _quiet(ctx):
        for report in result.reports:
            click.echo(report.line())


@cli.command(
    epilog="Examples:\n\n\b\n  binance-extractor extract -s BTCUSDT,ETHUSDT -i 1m,1h\n"
    "  EXTRACTOR_SYMBOLS=BTCUSDT EXTRACTOR_INTERVALS=1m binance-extractor extract\n"
    "  binance-extractor extract --market usdm -s ALL --quote USDT -i 1h --shard 2/4",
)
@series_options
@quote_option
@click.option(
    "--lookback",
    metavar="DURATION",
    help="How far back to start a series with nothing stored. [env EXTRACTOR_LOOKBACK; default 1d]",
)
@click.option(
    "--concurrency",
    type=str,
    metavar="N",
    help="Most requests in flight at once (1-64). [env EXTRACTOR_CONCURRENCY; default 32]",
)
@shard_option
@global_options
@click.pass_context
def extract(ctx: click.Context, /, **flags: Any) -> None:
    """The cron run: fetch what closed since the last stored candle, then stop. Silent on success."""
    _merge_globals(ctx, flags)
    settings = _settings(ctx, **flags)
    if settings.lookback_ms > _now_ms():
        raise BadInputError(
            "invalid lookback (--lookback / EXTRACTOR_LOOKBACK): "
            f"{settings.lookback_ms // 86_400_000:,} days reaches before 1970"
        )
    import logging

    from extractor.pipeline import run

    result = run.extract(_runtime(ctx, settings))
    for report in result.reports:
        logging.getLogger("extractor.pipeline").info("%s", report.line())


@cli.command(
    epilog="Examples:\n\n\b\n  binance-extractor gaps -s BTCUSDT -i 1m --start 2023-03-01 --end 2023-04-01\n"
    "  binance-extractor gaps -s BTCUSDT,ETHUSDT -i 1m,1h --repair\n"
    "  binance-extractor gaps -s BTCUSDT -i 1m --recheck --json",
)
@series_options
@click.option("--start", metavar="WHEN", help="Audit from here. [default: the first stored candle]")
@click.option("--end", metavar="WHEN", help="Audit up to here (exclusive). [default: now]")
@click.option(
    "--repair", is_flag=True, help="Fetch the holes that were never fetched, then list what is left."
)
@click.option(
    "--recheck",
    is_flag=True,
    help="Ask the exchange again for recorded exchange gaps; refill those that now have candles.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the gaps as JSON.")
@global_options
@click.pass_context
def gaps(
    ctx: click.Context,
    /,
    start: str | None,
    end: str | None,
    repair: bool,
    recheck: bool,
    as_json: bool,
    **flags: Any,
) -> None:
    """Audit missing candles: holes never fetched versus ranges the exchange itself lacks.

    With -q only holes still missing are printed (cron mails nothing while all is well).
    """
    _merge_globals(ctx, flags)
    settings = _settings(ctx, **flags)
    start_ms, end_ms = _range(start, end)
    from extractor.pipeline import run

    audits = run.gaps(
        _runtime(ctx, settings), start_ms, end_ms, repair=repair, recheck=recheck, now_ms=_now_ms()
    )
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "series": str(a.series),
                        "stored": a.stored,
                        "fetched": a.fetched,
                        "refilled": a.refilled,
                        "gaps": [g.as_dict() for g in a.gaps],
                    }
                    for a in audits
                ],
                indent=2,
            )
        )
        return
    quiet = _quiet(ctx)
    for audited in audits:
        name = str(audited.series)
        if not audited.stored:
            click.echo(f"{name}: nothing stored (run backfill or extract first)")
            continue
        if repair and not quiet:
            click.echo(f"{name}: repair fetched {plural(audited.fetched, 'candle')}")
        if recheck and not quiet:
            click.echo(f"{name}: recheck refilled {plural(audited.refilled, 'candle')}")
        shown = [g for g in audited.gaps if g.kind == "missing"] if quiet else audited.gaps
        if not shown:
            if not quiet and not repair and not recheck:
                click.echo(f"{name}: no gaps")
            continue
        click.echo(f"{name}:")
        click.echo(f"  {'start':<20}  {'end':<20}  {'candles':>9}  kind")
        for gap in shown:
            if gap.kind == "missing":
                kind = "missing (never fetched)"
            elif gap.confirmations:
                kind = f"absent on the exchange (confirmed {gap.confirmations}x)"
            else:
                kind = "absent on the exchange (recorded by an older release: run gaps --recheck)"
            start_text, end_text = format_utc(gap.start / 1000), format_utc(gap.end / 1000)
            click.echo(f"  {start_text:<20}  {end_text:<20}  {gap.candles:>9,}  {kind}")


@cli.command(
    epilog="Examples:\n\n\b\n  binance-extractor status\n  binance-extractor status --json\n"
    "  binance-extractor status --market usdm -s BTCUSDT -i 1m,1h",
)
@series_options
@quote_option
@shard_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@global_options
@click.pass_context
def status(ctx: click.Context, /, as_json: bool, **flags: Any) -> None:
    """What is stored: per market, symbol and interval, first and last candle, count, holes, last write."""
    _merge_globals(ctx, flags)
    settings = _settings(ctx, **flags)
    from extractor.pipeline import run

    lines = run.status(_runtime(ctx, settings))
    if as_json:
        click.echo(json.dumps([line.as_dict() for line in lines], indent=2))
        return
    if not lines:
        click.echo(f"nothing stored in {settings.redact(settings.db_url)}")
        return
    click.echo(
        f"{'market':<6} {'symbol':<14} {'int':<4} {'first':<20} {'last':<20} {'candles':>11} {'holes':>8} "
        f"{'gap candles':>11}  last write"
    )
    for line in lines:
        s = line.summary
        written = format_utc(s.last_write / 1000) if s.last_write is not None else "-"
        click.echo(
            f"{s.market:<6} {s.symbol:<14} {s.interval:<4} {format_utc(s.first_open_time / 1000):<20} "
            f"{format_utc(s.last_open_time / 1000):<20} {s.candles:>11,} {line.holes:>8,} "
            f"{line.exchange_gap_candles:>11,}  {written}"
        )


@cli.command(
    epilog="Examples:\n\n\b\n  binance-extractor breakers\n  binance-extractor breakers --json\n"
    "  binance-extractor breakers reset"
)
@click.argument("action", type=click.Choice(["status", "reset"]), default="status")
@click.option("--json", "as_json", is_flag=True, help="Print the state as JSON.")
@global_options
@click.pass_context
def breakers(ctx: click.Context, /, action: str, as_json: bool, **flags: Any) -> None:
    """Show or reset the circuit breakers (state shared by every run on this machine)."""
    _merge_globals(ctx, flags)
    settings = _settings(ctx)
    from extractor.pipeline import run

    runtime = _runtime(ctx, settings)
    if action == "reset":
        run.reset_breakers(runtime)
    states = run.breaker_states(runtime)
    if as_json:
        click.echo(json.dumps(states, indent=2, default=str))
        return
    if not states:
        click.echo("no breaker has recorded anything yet")
    for info in states:
        last = info.get("last_failure_time")
        last_text = format_utc(float(last)) if isinstance(last, int | float) else "never"
        line = (
            f"{info['name']:<40} {info['state']:<9} "
            f"failures {info['failure_count']}/{info['failure_threshold']}  "
            f"recovery {info['recovery_timeout']}s  last failure {last_text}"
        )
        if info["seconds_until_trial"]:
            line += f"  next trial in {info['seconds_until_trial']}s"
        click.echo(line)


@cli.command(
    epilog="Examples:\n\n\b\n  binance-extractor check\n  binance-extractor check -s BTCUSDT\n"
    "  BINANCE_API_URL=https://data-api.binance.vision binance-extractor check -s BTCUSDT,ETHUSDT"
)
@click.option(
    "--market",
    type=click.Choice(MARKET_NAMES),
    help="spot, usdm or coinm. [env EXTRACTOR_MARKET; default spot]",
)
@click.option(
    "-s",
    "--symbol",
    "symbols",
    multiple=True,
    metavar="SYM",
    help="Symbols to check are tradable; repeat or comma-separate. [env EXTRACTOR_SYMBOLS]",
)
@global_options
@click.pass_context
def check(ctx: click.Context, /, **flags: Any) -> None:
    """Smoke check for CI: exchange reachable, clock skew, symbols tradable, database writable."""
    _merge_globals(ctx, flags)
    settings = _settings(ctx, **flags)
    from extractor.pipeline import health, run

    results = run.check(_runtime(ctx, settings))
    for result in results:
        click.echo(settings.redact(result.line()))
    ctx.exit(health.check_exit_code(results))


def main() -> None:
    # A backfill allocates millions of short-lived, acyclic rows: the default cycle collection every 700
    # allocations spent a tenth of the run re-scanning them, and the one at exit another 50 ms.
    gc.set_threshold(10_000, 10, 10)
    stop = RunStop()
    stop_on_signals(stop)
    code = EXIT_FAILURE
    try:
        code = cli.main(prog_name="binance-extractor", standalone_mode=False, obj={"stop": stop}) or 0
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except click.Abort:
        code = EXIT_FAILURE
    except ExtractorError as exc:  # a signal outside a command (while parsing, while closing)
        click.echo(f"binance-extractor: {_fallback_redact()(str(exc))}", err=True)
        code = exc.exit_code
    finally:
        stop.set("exiting")
        sys.stdout.flush()
        sys.stderr.flush()
        gc.freeze()
    # Worker threads still waiting on the network are abandoned, not waited for.
    os._exit(code if isinstance(code, int) else EXIT_FAILURE)
