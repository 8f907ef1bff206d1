"""``python -m attnfast.bench``: see :mod:`attnfast.bench`."""
import sys

from . import main

sys.exit(main())
