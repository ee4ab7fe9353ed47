"""Command line: `python -m data_prep FORMAT --input PATH --output DIR [--name NAME] [options]`.

Converts one raw data set into a normalized dataset directory (see data_prep/README.md). Bad input
prints one line `error: <file>:<line>: field '<f>': <what>` to stderr and exits 2, leaving no output.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from p5x.errors import P5XError
from p5x.schema import write_dataset

from . import CONVERTERS, KCORE_FORMATS

HELP = {
    "p5": "P5's preprocessed folder: sequential_data.txt, datamaps.json, optional item metadata",
    "amazon": "an Amazon review file (2014/2018, .json or .json.gz), optional --meta file",
    "recbole": "a folder of RecBole atomic files <name>.inter/.item/.user",
    "movielens": "an original MovieLens folder (ml-100k or ml-1m, auto-detected)",
    "yelp": "a folder with the Yelp open dataset business and review JSON files",
}
KEEP = "README.md"  # hand-written notes next to a converted dataset survive a re-conversion


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep",
        description="Convert a raw data set into a p5x normalized dataset directory "
                    "(items.jsonl, users.jsonl, interactions.jsonl, manifest.json).")
    sub = parser.add_subparsers(dest="format", metavar="FORMAT", required=True,
                                help=" | ".join(CONVERTERS))
    for name, module in CONVERTERS.items():
        p = sub.add_parser(name, help=HELP[name], description=(module.__doc__ or "").strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--input", type=Path, required=True, help="input file or folder")
        p.add_argument("--output", type=Path, required=True,
                       help="output directory (replaced atomically; a README.md in it is kept)")
        p.add_argument("--name", default=None, help="dataset name (default: the output folder name)")
        if name in KCORE_FORMATS:
            p.add_argument("--min-count", type=int, default=0, metavar="K",
                           help="k-core filter: repeatedly drop users and items with fewer than K "
                                "interactions (default 0: keep everything)")
        if hasattr(module, "add_arguments"):
            module.add_arguments(p)
    return parser


def _write_kept(out: Path, text: str | None) -> None:
    if text is None:
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{KEEP}.", dir=out)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, out / KEEP)


def run(args: argparse.Namespace) -> None:
    options = {k: v for k, v in vars(args).items() if k not in ("format", "output", "name")}
    converted = CONVERTERS[args.format].convert(**options)
    kept = args.output / KEEP
    kept_text = kept.read_text(encoding="utf-8") if kept.is_file() else None
    name = args.name or args.output.resolve().name
    ds = write_dataset(args.output, name, args.format, converted.items, converted.interactions,
                       converted.users, Path(converted.source).name)  # a name, not this machine's path
    _write_kept(args.output, kept_text)
    c = ds.manifest["counts"]
    print(f"wrote {args.output}: {c['users']} users, {c['items']} items, "
          f"{c['interactions']} interactions")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "min_count", 0) < 0:
        print("error: --min-count must be >= 0", file=sys.stderr)
        return 2
    try:
        run(args)
    except P5XError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OSError, UnicodeDecodeError) as e:   # backstop: unreadable files, full disks
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
