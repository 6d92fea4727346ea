"""CPU seconds used by a set of processes over a measured interval (psutil), database server included.

A process's CPU is its own user + system time plus that of its children: the ones still alive are read
directly, the ones that exited were reaped by it and show in its ``children_*`` times. The database
server is found by process name (``mariadbd``/``mysqld``, ``postgres``): on a shared machine it also
serves other clients, so its share is an upper bound for ours.
"""

from __future__ import annotations

SERVER_NAMES = {"mariadb": ("mariadbd", "mysqld"), "postgresql": ("postgres", "postmaster")}


def server_pids(backend: str) -> list[int]:
    """The database server's processes on this machine (empty for SQLite or a server elsewhere)."""
    import psutil

    names = SERVER_NAMES.get(backend, ())
    pids = []
    for process in psutil.process_iter(["name"]):
        if process.info["name"] in names:
            pids.append(process.pid)
    return pids


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid``, its live descendants and the children it reaped; 0 if it is gone."""
    import psutil

    try:
        process = psutil.Process(pid)
        times = process.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in process.children(recursive=True):
            try:
                child_times = child.cpu_times()
                total += child_times.user + child_times.system
            except psutil.Error:
                pass
        return total
    except psutil.Error:
        return 0.0


class CpuMeter:
    """``start()`` then ``stop()``: CPU seconds per label over the interval. ``groups``: {label: [pids]}.

    Server processes that are children of another listed server process (PostgreSQL backends under the
    postmaster) are counted once, through the tree of the top one."""

    def __init__(self, groups: dict[str, list[int]]):
        self.groups = {label: self._roots(pids) for label, pids in groups.items()}
        self.before: dict[str, float] = {}

    @staticmethod
    def _roots(pids: list[int]) -> list[int]:
        import psutil

        chosen = set(pids)
        roots = []
        for pid in pids:
            try:
                parent = psutil.Process(pid).ppid()
            except psutil.Error:
                continue
            if parent not in chosen:
                roots.append(pid)
        return roots

    def read(self) -> dict[str, float]:
        return {label: sum(tree_cpu(pid) for pid in pids) for label, pids in self.groups.items()}

    def start(self) -> None:
        self.before = self.read()

    def stop(self) -> dict[str, float]:
        after = self.read()
        return {label: max(0.0, after[label] - self.before.get(label, 0.0)) for label in after}
