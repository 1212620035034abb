"""The one place that knows ranks. Under torchrun (or any launcher that sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT) World.from_environment() joins the process group (nccl on
GPUs, gloo on CPUs, with a timeout, so that a rank that dies makes the others fail instead of
hang); a single process gets World(): rank 0 of 1, whose collectives return their input and touch
nothing of torch.distributed, so a single-process run never pays for it.

The Trainer uses it for what must agree across ranks: the per-sample results every pruner sees
(gathered), the epoch's metrics (summed, seconds as the maximum), validation counts (summed),
the perturbation memory's rows (each from the rank that wrote it), and a barrier after rank 0
writes a checkpoint.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch

DEFAULT_TIMEOUT_S = 600.0


class RankFailure(RuntimeError):
    """Another rank stopped, or could not be reached within the timeout."""


@dataclass(frozen=True)
class World:
    """This process's place among the ranks (rank 0 of 1 for a single process)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, backend: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> World:
        """The world torchrun describes in the environment (joining its process group once); World() when
        the environment describes none or a world of one."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    def close(self) -> None:
        """Leaves the process group (at the end of a command run under torchrun)."""
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    def device(self) -> torch.device:
        """cuda:LOCAL_RANK where GPUs are, else the CPU."""
        return torch.device(f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu")

    # ---------------------------------------------------------------- collectives

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's tensor (the same shape on each), concatenated along dim 0 in rank order."""
        if not self.distributed:
            return tensor
        if tensor.dtype == torch.bool:  # not every backend gathers bool
            return self.gather(tensor.to(torch.uint8)).bool()
        import torch.distributed as dist

        parts = [torch.empty_like(tensor) for _ in range(self.size)]
        _checked(dist.all_gather, parts, tensor.contiguous())
        return torch.cat(parts)

    def gather_columns(self, columns: list[torch.Tensor]) -> list[torch.Tensor]:
        """gather() of several 1-D tensors of one length in a single collective: packed as the columns of
        one float64 matrix (exact for int64 ids below 2**53, for bool and for every float type) and split
        back into their dtypes, so that a step pays one all-gather instead of one per tensor."""
        if not self.distributed:
            return columns
        packed = self.gather(torch.stack([c.to(torch.float64) for c in columns], dim=1))
        return [packed[:, i].to(c.dtype) for i, c in enumerate(columns)]

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """The elementwise sum over ranks (float64 on the CPU, so that counts stay exact)."""
        return self._reduce(values, "SUM")

    def max(self, values: torch.Tensor) -> torch.Tensor:
        return self._reduce(values, "MAX")

    def min(self, values: torch.Tensor) -> torch.Tensor:
        return self._reduce(values, "MIN")

    def rows_from_owners(self, rows: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        """rows (one shape on every rank) with row i replaced, on every rank, by rank owner[i]'s row i; a row
        whose owner is `size` (no rank) keeps its value. Exact for every dtype in one all-reduce: each rank
        zeroes the rows it does not own and the ranks sum the bytes, to which only the owner adds."""
        if not self.distributed:
            return rows
        import torch.distributed as dist

        backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        owner = owner.to(rows.device).view(-1, *[1] * (rows.dim() - 1))
        mine = torch.where(owner == self.rank, rows, torch.zeros((), dtype=rows.dtype, device=rows.device))
        raw = mine.to(backend_device).contiguous().view(torch.uint8)
        _checked(dist.all_reduce, raw, op=dist.ReduceOp.SUM)
        return torch.where(owner < self.size, raw.view(rows.dtype).to(rows.device), rows)

    def _reduce(self, values: torch.Tensor, op: str) -> torch.Tensor:
        if not self.distributed:
            return values
        import torch.distributed as dist

        backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        reduced = values.to(backend_device, torch.float64).clone()
        _checked(dist.all_reduce, reduced, op=getattr(dist.ReduceOp, op))
        return reduced.to(values.device)

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            _checked(dist.barrier)


def _checked(collective, *args, **kwargs):
    """A collective whose failure (a rank gone, a timeout) becomes one RankFailure that says so."""
    try:
        return collective(*args, **kwargs)
    except RuntimeError as exc:  # gloo and nccl report a lost peer or a timeout as RuntimeError
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise RankFailure(
            f"another rank stopped or did not answer within the timeout ({first}): see its log for the cause"
        ) from exc
