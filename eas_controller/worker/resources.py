"""Resources: what a worker offers (cpus, gpus, memory) and what is free.

A worker claims only task types whose registered ``resources`` fit in its free capacity, so a 2-cpu worker
never runs two 2-cpu tasks at once. A task type needing more than every live worker offers (a GPU on a
cluster of CPU nodes) waits in the queue; :func:`eas_controller.capacity.unmet_needs` says so.
"""

from __future__ import annotations

import glob
import os
import threading

from eas_controller.registry import TaskType


def detect_gpus() -> list[str]:
    """The GPU ids this machine offers: ``CUDA_VISIBLE_DEVICES`` if set, else the NVIDIA driver's list."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [item.strip() for item in visible.split(",") if item.strip() and item.strip() != "-1"]
    return [str(index) for index in range(len(glob.glob("/proc/driver/nvidia/gpus/*")))]


class Capacity:
    """What the worker declared (cpus, gpus, memory) and what is free right now; GPUs are handed out by id."""

    def __init__(self, cpus: float, gpus: int, memory_gb: float, slots: int, gpu_ids: list[str] | None = None):
        self.total = dict(cpu=float(cpus), gpu=int(gpus), memory_gb=float(memory_gb))
        self.free = dict(self.total)
        self.slots = slots
        self.free_slots = slots
        ids = list(gpu_ids or [])[: int(gpus)]
        self.free_gpu_ids = ids + [str(index) for index in range(len(ids), int(gpus))]
        self.lock = threading.Lock()

    @staticmethod
    def needs(task_type: TaskType) -> dict:
        return dict(cpu=task_type.cpu, gpu=task_type.gpu, memory_gb=task_type.memory_gb)

    def can_ever_run(self, task_type: TaskType) -> bool:
        return all(need <= self.total[key] + 1e-9 for key, need in self.needs(task_type).items())

    def shortfall(self, task_type: TaskType) -> str:
        """Why this worker can never run ``task_type``, e.g. ``gpu 1 > 0``."""
        return ", ".join("%s %g > %g" % (key, need, self.total[key]) for key, need in self.needs(task_type).items()
                         if need > self.total[key] + 1e-9)

    def claimable(self, types: dict[str, TaskType]) -> tuple[list[str], int]:
        """Task types that fit the free capacity, and how many of them can be claimed at once safely."""
        with self.lock:
            fitting = [t for t in types.values() if all(n <= self.free[k] + 1e-9 for k, n in self.needs(t).items())]
            if not fitting or self.free_slots < 1:
                return [], 0
            limit = self.free_slots
            for task_type in fitting:  # even if every claimed attempt is of the hungriest type, they all fit
                for key, need in self.needs(task_type).items():
                    if need > 0:
                        limit = min(limit, int((self.free[key] + 1e-9) // need))
            return sorted(t.name for t in fitting), max(limit, 0)

    def fits(self, task_type: TaskType) -> bool:
        """Whether an attempt of ``task_type`` could start now (a free slot, and its needs free)."""
        with self.lock:
            return self.free_slots >= 1 and all(n <= self.free[k] + 1e-9 for k, n in self.needs(task_type).items())

    def take(self, task_type: TaskType) -> list[str] | None:
        """Reserve what an attempt needs; returns its GPU ids (None on a worker without GPUs)."""
        with self.lock:
            self.free_slots -= 1
            for key, need in self.needs(task_type).items():
                self.free[key] -= need
            if not self.total["gpu"]:
                return None
            taken = self.free_gpu_ids[: int(task_type.gpu)]
            del self.free_gpu_ids[: int(task_type.gpu)]
            return taken

    def give_back(self, task_type: TaskType, gpu_ids: list[str] | None = None) -> None:
        with self.lock:
            self.free_slots += 1
            for key, need in self.needs(task_type).items():
                self.free[key] += need
            self.free_gpu_ids.extend(gpu_ids or [])
