"""The `beit3` command line: one subcommand per module in `flows.commands`.

Each command module exposes `register(subparsers)`, which adds its parser and sets `func` to a callable taking
the parsed arguments and returning an exit code. Commands import their heavy dependencies (torch, Ray,
Prefect, MLflow) inside `func`, so `beit3 --help` stays fast.
"""

import argparse
import importlib
import logging
import pkgutil
import sys

from flows import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="beit3", description="BEiT-3 pretraining workflow")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{module_info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
