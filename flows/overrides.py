"""`--set SECTION.FIELD=VALUE` overrides shared by the commands that read a sectioned YAML config."""

import argparse

from beit3_core.runtime.config import parse_set


def add_override_argument(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help=f"override one field, e.g. --set {example} (value parsed as YAML)",
    )


def parse_overrides(items: list[str]) -> dict:
    """["run.steps=50", ...] -> {"run": {"steps": 50}, ...} (`beit3_core.runtime.config.parse_set`)."""
    try:
        return parse_set(items)
    except ValueError as error:
        raise SystemExit(str(error)) from error
