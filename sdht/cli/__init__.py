"""The ``sdht`` command line and the local demo-cluster tools.

Kept apart from the library (``import sdht`` never imports this package): the commands are in
:mod:`sdht.cli.commands`, the demo cluster's process management in :mod:`sdht.cli.localcluster`.
"""
from __future__ import annotations

from .commands import cli, main

__all__ = ["cli", "main"]
