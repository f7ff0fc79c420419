"""`--set SECTION.FIELD=VALUE` overrides shared by the commands that read a sectioned YAML config."""

import argparse

import yaml


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
    """["run.steps=50", ...] -> {"run": {"steps": 50}, ...}."""
    overrides: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise SystemExit(f"--set expects SECTION.FIELD=VALUE, got {item!r}")
        section, field = key.split(".", 1)
        overrides.setdefault(section, {})[field] = yaml.safe_load(value)
    return overrides
