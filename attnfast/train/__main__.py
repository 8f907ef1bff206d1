"""``python -m attnfast.train``: see :mod:`attnfast.train`."""
import sys

from . import main

sys.exit(main())
