"""``collapselab methods``: the registered methods, one line each, with their switches."""

from __future__ import annotations

import argparse

from collapselab.cli import EXIT_OK


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("methods", help="list the SSL methods and their anti-collapse switches")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from collapselab.config import available_recipes, recipe_dir
    from collapselab.methods import METHODS, describe_methods

    width = max(len(name) for name, _, _ in describe_methods())
    for name, summary, switches in describe_methods():
        defaults = METHODS[name].config_class()
        shown = ", ".join(f"{s}={getattr(defaults, s)}" for s in switches if s in {f.name for f in fields(defaults)})
        print(f"{name:<{width}}  {summary}")
        print(f"{'':<{width}}  switches: {shown}")
    print(f"\nrecipes (configs/): {', '.join(available_recipes())}")
    for folder, use in (("small", "run.recipe=small/<name>; picked for npz/imagefolder on a CPU"),
                        ("batch1024", "--config batch1024/<name>.yaml")):
        names = sorted(p.stem for p in (recipe_dir() / folder).glob("*.yaml"))
        if names:
            print(f"{folder}/ ({use}): {', '.join(names)}")
    print("override any key: collapselab train simsiam digits method.stop_gradient=false")
    return EXIT_OK
