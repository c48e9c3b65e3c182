"""The `spon` command line: one subcommand per row of `COMMANDS`, each a config dataclass and one function."""

from spon.cli.main import COMMANDS, build_parser, main

__all__ = ["main", "build_parser", "COMMANDS"]
