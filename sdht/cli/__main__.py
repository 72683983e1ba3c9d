"""``python -m sdht.cli``: the same as the ``sdht`` command."""
from .commands import main

main()
