"""Private PyTorch APIs used by attnfast, in one place (each with the torch versions it was checked on)."""
import contextlib


@contextlib.contextmanager
def donated_buffer_disabled():
    """AOTAutograd's donated buffers off while the block runs (checked: torch 2.11, 2.13).

    The wrappers backpropagate through a compiled model's graph more than once
    (``retain_graph=True``), which donated buffers forbid; the flag is read when the compiled
    graph is first built, i.e. during the first forward through the compiled model."""
    import torch._functorch.config as functorch_config
    with functorch_config.patch(donated_buffer=False):
        yield
