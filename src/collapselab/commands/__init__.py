"""Subcommands of the ``collapselab`` CLI, one module each (see :mod:`collapselab.cli`)."""
