"""Running workers beyond one terminal: Slurm job arrays, Kubernetes manifests and local worker pools.

Each module drives one outside system (``sbatch``, ``kubectl``, background processes); none of them writes
the controller's tables. The scripts in ``worker_orchestration/`` are thin doors onto these modules.
"""
