"""``python -m brainnet`` is the ``brainnet`` command."""

from brainnet.cli import main

main()
