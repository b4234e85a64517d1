"""``python -m cloudclear.cli``: the same as the ``cloudclear`` script."""

from cloudclear.cli import main

main()
