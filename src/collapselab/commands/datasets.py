"""``collapselab datasets``: list the registered datasets and fetch the official archives."""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from typing import Any

from collapselab._validation import InputError
from collapselab.cli import EXIT_OK, EXIT_USAGE


def _rows(data_dir: str | None) -> list[dict[str, Any]]:
    from collapselab.data.datasets import DATASETS, _resolve_dir, is_present

    rows = []
    for name, spec in DATASETS.items():
        if spec.builtin:
            present = "built-in"
        elif spec.user_path:
            present = "your path"
        else:
            present = "yes" if is_present(name, data_dir) else "no"
        c, h, w = spec.resolution
        rows.append({
            "name": name,
            "splits": {s: n for s, n in spec.splits.items()} if not spec.user_path else {},
            "classes": spec.num_classes if spec.num_classes > 0 else None,
            "resolution": f"{c}x{h}x{w}" if c > 0 else "any",
            "present": present,
            "description": spec.description,
            "data_dir": str(_resolve_dir(data_dir)),
        })
    return rows


def run(args: argparse.Namespace) -> int:
    from collapselab.data.datasets import DATASETS, prepare

    try:
        for name in args.download or []:
            if name not in DATASETS:
                near = difflib.get_close_matches(name, list(DATASETS), n=1)
                hint = f"did you mean {near[0]!r}? " if near else ""
                raise InputError(f"unknown dataset {name!r}; {hint}known: {', '.join(DATASETS)}")
            spec = DATASETS[name]
            if spec.user_path:
                raise InputError(f"{name} reads your own files (data.data_dir=...); there is nothing to download")
            for split in spec.splits:
                root = prepare(name, split, args.data_dir, download=True)
            print(f"{name}: ready in {root}")
    except (InputError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    rows = _rows(args.data_dir)
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    print(f"data folder: {rows[0]['data_dir']}  (--data-dir, or $COLLAPSELAB_DATA)")
    header = f"{'name':<12} {'images per split':<42} {'classes':>7}  {'C x H x W':<10} {'present':<9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        splits = ", ".join(f"{s} {n:,}" for s, n in r["splits"].items()) or "(your data)"
        classes = str(r["classes"]) if r["classes"] else "-"
        print(f"{r['name']:<12} {splits:<42} {classes:>7}  {r['resolution']:<10} {r['present']:<9}")
    return EXIT_OK


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "datasets", help="list datasets (size, classes, resolution, present locally) and download them",
        description="List the registered datasets and whether their files are present; with "
                    "--download, fetch the official archives (MD5-checked) first.")
    parser.add_argument("--data-dir", default=None,
                        help="dataset folder (default: $COLLAPSELAB_DATA or ~/.cache/collapselab/data)")
    parser.add_argument("--download", nargs="+", metavar="NAME", default=None,
                        help="download and extract these datasets (e.g. cifar10 stl10)")
    parser.add_argument("--json", action="store_true", help="print the table as JSON")
    parser.set_defaults(func=run)
    return parser
