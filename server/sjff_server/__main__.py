"""``python -m sjff_server ...`` (same as ``sjff serve ...``)."""

import sys

from .main import main

sys.exit(main())
