"""Data-parallel runs under ``torchrun``: rank, world size and device from its environment."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


class Dist:
    """Rank/world from torchrun's environment; process group gloo (CPU) or nccl (GPU)."""

    def __init__(self, device_arg):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        want_cuda = device_arg == "cuda" or (device_arg == "auto" and torch.cuda.is_available())
        if want_cuda and not torch.cuda.is_available():
            why = (f"this PyTorch ({torch.__version__}) is built without CUDA"
                   if torch.version.cuda is None else "no CUDA device is visible")
            raise SystemExit(f"--device cuda: {why}; use --device cpu (or auto), or install a "
                             "CUDA build of PyTorch on a machine with a GPU")
        if want_cuda and local >= torch.cuda.device_count():
            raise SystemExit(f"--device cuda: LOCAL_RANK {local} but only "
                             f"{torch.cuda.device_count()} CUDA device(s) are visible")
        self.device = torch.device(f"cuda:{local}" if want_cuda else "cpu")
        if want_cuda:
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if want_cuda else "gloo")

    @property
    def main(self):
        return self.rank == 0

    def sum(self, t):
        if self.world > 1:
            t = t.to(self.device if self.device.type == "cuda" else "cpu")
            dist.all_reduce(t)
        return t.cpu()

    def gather(self, obj):
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast_buffers(self, module):
        """Rank 0's buffers (BatchNorm running statistics) on every rank. DDP broadcasts them at
        the start of each forward, but every rank then updates its own from its own batch, so
        after training they differ; evaluation shards must all use the ones the checkpoint
        (written by rank 0) holds."""
        if self.world > 1:
            for b in module.buffers():
                dist.broadcast(b.data, 0)

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def close(self):
        """Leave the process group (end of a data-parallel run)."""
        if self.world > 1:
            dist.destroy_process_group()
