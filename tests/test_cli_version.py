from click.testing import CliRunner

from extractor import __version__
from extractor.cli import cli


def test_version_prints_the_package_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"binance-extractor, version {__version__}\n"
