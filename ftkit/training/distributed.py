"""Several processes, one run: what ftkit needs to know when `torchrun` or `accelerate launch` starts it.

ftkit has no launcher and no data-parallel code of its own. Every process runs the same `ftkit train`;
the Trainer (through accelerate) wraps the model in DDP, FSDP or DeepSpeed and gives each process its
own shard of the data. What is left for ftkit, and lives here:

- who this process is (rank, world size, main or not), read from the launcher's environment so it is
  known before any process group exists;
- whether the world is as big as was asked: `accelerate launch --cpu --num_processes 2` silently starts
  *one* process (accelerate starts several CPU processes only through mpirun), which would train with half
  the effective batch and look like a success;
- one hand-shake: the main process prepares the run directory while the others wait, then tells them
  whether it worked (so they neither race it nor hang when it refuses, e.g. an existing run dir);
- what sharded parameters (FSDP, ZeRO-3) change: 4-bit storage dtype, no device map, gathering the
  adapter before it is written;
- `ftkit train --nproc N`: an existing launcher (torchrun for CPU processes with the gloo backend, accelerate
  for CUDA GPUs) run through its Python entry point, with the processes' output streamed and their exit code kept.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from ftkit.errors import FtkitError

EXPECTED_ENV = "FTKIT_EXPECTED_WORLD_SIZE"
"""Set by `ftkit train --nproc N` for its children: the number of processes that was asked for."""

TIMEOUT = timedelta(minutes=30)
"""How long the other processes wait for the main one (pre-flight, model conversion) before giving up;
the Trainer's own default (`ddp_timeout`)."""


class DistributedError(FtkitError):
    """A multi-process launch that does not match what was asked for."""


def _info() -> Any:
    """Rank, world size and local rank from the launcher's variables (torchrun, accelerate, mpirun)."""
    from accelerate.utils import get_cpu_distributed_information

    return get_cpu_distributed_information()


def world_size() -> int:
    return int(_info().world_size)


def rank() -> int:
    return int(_info().rank)


def local_rank() -> int:
    return int(_info().local_rank)


def is_main_process() -> bool:
    return rank() == 0


def _flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def check_world_size() -> int:
    """Return the number of processes; raise when it is not the number that was asked for."""
    actual = world_size()
    expected = os.environ.get(EXPECTED_ENV)
    if expected and int(expected) != actual:
        raise DistributedError(
            f"{expected} processes were asked for (--nproc {expected}) but the launcher started {actual} "
            f"(WORLD_SIZE={actual}); training would run with a different effective batch. Check the launcher's "
            "output above, or run the same command with torchrun --nproc_per_node N"
        )
    # `accelerate launch --cpu --num_processes N>1` exports MASTER_ADDR for N processes, then starts one.
    if actual == 1 and _flag("ACCELERATE_USE_CPU") and "MASTER_ADDR" in os.environ:
        raise DistributedError(
            "accelerate launch --cpu --num_processes N started 1 process, not N (accelerate starts several "
            "CPU processes only through mpirun); use `ftkit train --nproc N` or "
            "`torchrun --nproc_per_node N -m ftkit.cli train ...`, which start N processes with the gloo backend"
        )
    return actual


def use_cpu() -> bool:
    """The same choice `train.training_arguments` and the Trainer make: CPU unless CUDA is there and wanted."""
    import torch

    return not torch.cuda.is_available() or _flag("ACCELERATE_USE_CPU")


def start() -> int:
    """Check the world size and, with several processes, join their process group now.

    The Trainer would initialise the group itself, but only when its `TrainingArguments` set up the
    device, which is after the run directory must exist. The non-main processes have to wait for the main
    one before that, and waiting across processes needs the group. accelerate's `PartialState` creates it
    exactly as the Trainer would (gloo on CPU, NCCL on GPUs, DeepSpeed's when launched for it); the
    Trainer later resets that state and builds a new one, which finds the group initialised and reuses it.
    """
    processes = check_world_size()
    if processes > 1:
        from accelerate import PartialState

        PartialState(cpu=use_cpu(), timeout=TIMEOUT)
    return processes


def _broadcast_from_main(value: str | None) -> str | None:
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextmanager
def main_prepares() -> Iterator[None]:
    """On the main process: run the block (lock, checks, run directory), then tell the others how it went.

    Every way out of the block is announced, a refusal included, so that the waiting processes stop
    instead of hanging in `wait_for_main` until the timeout.
    """
    if world_size() == 1:
        yield
        return
    try:
        yield
    except BaseException as error:
        _broadcast_from_main(str(error).splitlines()[0] if str(error) else type(error).__name__)
        raise
    _broadcast_from_main(None)


def wait_for_main() -> bool:
    """On the other processes: block until the main process has prepared the run; False if it could not.

    The main process prints why and exits with its error code. This one should then end quietly and
    successfully: launchers stop every other process as soon as one fails, so a failing exit here could
    stop the main process before its message is out.
    """
    return _broadcast_from_main(None) is None


def shards_parameters() -> bool:
    """Whether the launcher shards the parameters themselves across processes (FSDP, DeepSpeed ZeRO-3).

    Then no process holds the whole model: the 4-bit weights must be stored in a float dtype that can be
    sharded with the other layers, the base must not be placed on a device by `device_map`, the adapter
    must be gathered before it is written, and the model cannot be evaluated by the main process alone.
    """
    zero3 = _flag("ACCELERATE_USE_DEEPSPEED") and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3"
    return _flag("ACCELERATE_USE_FSDP") or zero3


def device_map() -> dict[str, int] | None:
    """Where a base is loaded: this process's own GPU (under DDP each process has one), quantized or not,
    so that evaluation, merge, chat and serve run there too and not only the Trainer (which would move an
    unquantized model itself, but nothing else does); nowhere on CPU, and nowhere when parameters are
    sharded, since FSDP/DeepSpeed place the shards."""
    if use_cpu() or shards_parameters():
        return None
    return {"": local_rank()}


def gathered_state_dict(trainer: Any) -> dict[str, Any] | None:
    """The full state dict when parameters are sharded (collective: every process must call it), else None.

    With FSDP or ZeRO-3, `save_pretrained` on one process would write its shard only; accelerate gathers
    the full weights onto the main process (ZeRO-3 needs `zero3_save_16bit_model: true`).
    """
    if not shards_parameters():
        return None
    return trainer.accelerator.get_state_dict(trainer.model_wrapped)


def batch_summary(per_device: int, processes: int, accumulation: int) -> dict[str, int]:
    """The effective batch: what one optimizer step averages over, in examples."""
    return {
        "processes": processes,
        "per_device_batch": per_device,
        "grad_accum": accumulation,
        "effective_batch": per_device * processes * accumulation,
    }


def describe_batch(summary: dict[str, int]) -> str:
    p, n, a = summary["per_device_batch"], summary["processes"], summary["grad_accum"]
    return (
        f"effective batch {summary['effective_batch']} examples = {p} per process × {n} process{'es' * (n != 1)} "
        f"× {a} accumulation step{'s' * (a != 1)}"
    )


def launcher_command(nproc: int, ftkit_args: list[str], *, gpus: int) -> list[str]:
    """The command that starts `nproc` processes of `python -m ftkit.cli <ftkit_args>`.

    CUDA GPUs: `accelerate launch`, which also applies the user's default accelerate config (FSDP,
    DeepSpeed) if there is one. CPU: `torch.distributed.run` (torchrun) on a free local port, with gloo;
    not `accelerate launch --cpu`, which starts a single process.
    """
    if nproc < 1:
        raise DistributedError(f"--nproc {nproc}: the number of processes must be at least 1")
    if gpus:
        if nproc > gpus:
            raise DistributedError(
                f"--nproc {nproc}: only {gpus} CUDA GPU(s) are visible; use at most one process per GPU"
            )
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(nproc)]
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    return [*launcher, "-m", "ftkit.cli", *ftkit_args]


def _exit_code(returncode: int) -> int:
    """A child killed by a signal reports -N; a shell reports 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def _entry_point(module: str) -> Any:
    """The launcher's own Python entry point (what its console script runs), taking its arguments."""
    if module == "torch.distributed.run":
        from torch.distributed.run import parse_args, run

        return lambda argv: run(parse_args(argv))
    from accelerate.commands.launch import launch_command, launch_command_parser

    return lambda argv: launch_command(launch_command_parser().parse_args(argv))


def run_launcher(command: list[str], nproc: int) -> int:
    """Run the launcher of `launcher_command` through its Python entry point; return the exit code.

    The processes it starts inherit stdout and stderr, so their progress streams as it happens. When one
    fails, the exit code is that of the first to fail (the `torchrun` command would exit 1 after a
    page-long report; each ftkit process has printed its own one-line error). On Ctrl-C the launcher
    passes the signal to its processes and waits for them to stop (killing them after a timeout), and
    the interruption is reported like any other.
    """
    from accelerate.utils import patch_environment
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    env = {EXPECTED_ENV: str(nproc)}
    if "OMP_NUM_THREADS" not in os.environ:  # torchrun would give every process one thread; share the cores
        env["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // nproc))
    try:
        with patch_environment(**env):
            _entry_point(command[2])(command[3:])
    except ChildFailedError as failed:
        return _exit_code(failed.get_first_failure()[1].exitcode)
    except subprocess.CalledProcessError as failed:  # accelerate's DeepSpeed launcher runs a subprocess
        return _exit_code(failed.returncode)
    except SignalException:
        raise KeyboardInterrupt from None
    return 0
