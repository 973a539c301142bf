"""What the router reads about its workers from /proc and the memory cgroup (Linux).

Every reader answers None when the file is not there (another OS, no memory controller, a
process already gone): these figures explain, they never decide whether a tenant serves.

OOM kills: the kernel counts them per memory cgroup (`oom_kill` in cgroup v2's
`memory.events`, in v1's `memory.oom_control`), not per process. A worker that dies of SIGKILL
the router did not send, while its cgroup's count went up, was taken by the OOM killer. When
several workers share one cgroup and die at once, each is reported so: the count cannot tell
them apart.
"""

from __future__ import annotations

from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def rss_bytes(pid: int) -> int | None:
    """Resident set size of `pid` (VmRSS)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def uss_bytes(pid: int) -> int | None:
    """Unique set size of `pid`: the memory only it holds (private pages, clean and dirty),
    what stopping it would give back. A forked worker shares the zygote's preloaded pages,
    so its RSS says little and its USS is the figure to watch."""
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith((b"Private_Clean:", b"Private_Dirty:", b"Private_Hugetlb:")):
                    total += int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return total


def oom_counter_file(pid: int) -> Path | None:
    """The file holding the OOM-kill count of `pid`'s memory cgroup. Read it while the process
    lives: its /proc entry goes with it."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            candidate = CGROUP_ROOT / "memory" / path.lstrip("/") / "memory.oom_control"
            if candidate.exists():
                return candidate
        elif controllers == "":  # the unified (v2) hierarchy
            for root in (CGROUP_ROOT, CGROUP_ROOT / "unified"):
                candidate = root / path.lstrip("/") / "memory.events"
                if candidate.exists():
                    return candidate
    return None


def oom_kills(counter_file: Path | None) -> int | None:
    if counter_file is None:
        return None
    try:
        for line in counter_file.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        pass
    return None


class OomWatch:
    """The OOM-kill count of a worker's memory cgroup when it started, to compare at its end."""

    __slots__ = ("count_at_start", "counter_file")

    def __init__(self, counter_file: Path, count_at_start: int) -> None:
        self.counter_file = counter_file
        self.count_at_start = count_at_start

    @classmethod
    def of(cls, pid: int | None) -> OomWatch | None:
        counter_file = oom_counter_file(pid) if pid is not None else None
        count = oom_kills(counter_file)
        return None if counter_file is None or count is None else cls(counter_file, count)

    def fired(self) -> bool:
        """The cgroup has counted an OOM kill since the start."""
        count = oom_kills(self.counter_file)
        return count is not None and count > self.count_at_start
