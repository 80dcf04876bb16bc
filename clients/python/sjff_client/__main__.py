"""``python -m sjff_client``: see :mod:`sjff_client.cli`."""

import sys

from .cli import main

sys.exit(main())
