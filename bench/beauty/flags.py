"""Print one section of a recipe config (bench/beauty/config.json) as command-line flags.

    python bench/beauty/flags.py CONFIG SECTION [KEY=VALUE ...]

Each key becomes --key-with-dashes VALUE; true becomes a bare flag, false drops it; KEY=VALUE
pairs override the section (used by the ablation stage). Keys starting with '_' are comments.
"""

from __future__ import annotations

import json
import shlex
import sys


def to_flags(section: dict) -> list[str]:
    out: list[str] = []
    for key, val in section.items():
        if key.startswith("_") or val is False or val is None:
            continue
        flag = "--" + key.replace("_", "-")
        out += [flag] if val is True else [flag, str(val)]
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        print("usage: flags.py CONFIG SECTION[.SUB] [KEY=VALUE ...]", file=sys.stderr)
        return 2
    try:
        with open(argv[0], encoding="utf-8") as f:
            node = json.load(f)
        for part in argv[1].split("."):
            node = node[part]
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {argv[0]}: section {argv[1]!r}: {e}", file=sys.stderr)
        return 2
    node = dict(node)
    for kv in argv[2:]:
        k, _, v = kv.partition("=")
        node[k] = v
    print(shlex.join(to_flags(node)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
