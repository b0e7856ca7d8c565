"""This process's place in a multi-process launch, read from what the launcher put into the environment.

Read before any process group exists: the run folder is locked and run_args.json written before the Trainer sets
up its devices. torchrun (and `gaudi_spawn.py` without `--use_mpi`) sets RANK and WORLD_SIZE; mpirun (`gaudi_spawn.py
--use_mpi`) sets only its own: Intel MPI and MPICH PMI_*, Open MPI OMPI_COMM_WORLD_*, MVAPICH MV2_COMM_WORLD_*. The
names and their order are accelerate's (`accelerate.utils.environment.get_cpu_distributed_information`).
"""

from __future__ import annotations

from accelerate.utils import get_int_from_env

RANK_VARIABLES = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def launched_rank() -> int:
    """This process's rank in its launch; 0 without a launcher."""
    return get_int_from_env(RANK_VARIABLES, 0)


def launched_processes() -> int:
    """How many processes the launcher started; 1 without a launcher."""
    return get_int_from_env(WORLD_SIZE_VARIABLES, 1)
