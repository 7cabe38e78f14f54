"""``python -m frankenpy``: the ``frankenpy`` command."""

import sys

from .cli import main

sys.exit(main())
