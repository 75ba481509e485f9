"""Shared fixtures. Service fixtures live in their own modules, registered here."""

pytest_plugins: list[str] = ["tests.fake_exchange", "tests.services", "tests.cli_harness"]
