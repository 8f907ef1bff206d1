"""The ResNets with named stages live in :mod:`attnfast.models` (the benchmarks use them too);
this name keeps working for the trainer and its users."""
from ..models import *  # noqa: F401,F403
