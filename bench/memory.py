"""Memory readers: /proc/<pid>/smaps_rollup and /proc/<pid>/status (Linux).

USS (unique set size) = Private_Clean + Private_Dirty: what the process alone holds, i.e. what
killing it gives back. PSS divides each shared page among the processes mapping it, so the PSS
of a set of processes adds up to what the set costs. RSS counts shared pages in full.
"""

from __future__ import annotations

from dataclasses import dataclass

MB = 1024 * 1024  # memory figures are MiB, as ps and top show them


@dataclass(frozen=True)
class Memory:
    rss: int
    pss: int
    uss: int
    shared: int  # Shared_Clean + Shared_Dirty

    @property
    def rss_mb(self) -> float:
        return self.rss / MB

    @property
    def pss_mb(self) -> float:
        return self.pss / MB

    @property
    def uss_mb(self) -> float:
        return self.uss / MB


def smaps_rollup(pid: int) -> Memory:
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                fields[parts[0][:-1]] = int(parts[1]) * 1024
    return Memory(
        rss=fields.get("Rss", 0), pss=fields.get("Pss", 0),
        uss=fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
        shared=fields.get("Shared_Clean", 0) + fields.get("Shared_Dirty", 0),
    )


def rss_bytes(pid: int) -> int:
    """VmRSS from /proc/<pid>/status: cheap, for before/after growth of one process."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no VmRSS for pid {pid}")
