"""Multi-process training: 2 CPU processes (torchrun, gloo) against 1, launcher hand-off, accelerate configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ftkit.cli import main
from ftkit.recipe import load_recipe
from ftkit.runs import RunDir
from ftkit.training import distributed

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "recipes" / "accelerate"

# Every optimizer step sees all 32 training rows (2 processes x 8 x 2 micro-batches, or 1 x 32 x 1), so
# both runs take their gradients over the same examples whatever order the samplers draw them in.
WHOLE_DATA_STEPS = {
    "max_steps": 3,
    "learning_rate": 1e-3,
    "warmup_ratio": 0.0,
    "group_by_length": False,
    "save_every": 2,
    "log_every": 1,
}


def _ftkit(*args: str, launcher: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [*(launcher or [sys.executable]), "-m", "ftkit.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=os.environ.copy())


def _losses(run: RunDir) -> list[float]:
    return [row["loss"] for row in map(json.loads, run.train_log.read_text().splitlines()) if "loss" in row]


def test_two_processes_train_like_one_with_the_same_effective_batch(write_recipe) -> None:
    ddp_path = write_recipe("ddp", train=WHOLE_DATA_STEPS | {"batch_size": 8, "grad_accum": 2})
    one_path = write_recipe("one", train=WHOLE_DATA_STEPS | {"batch_size": 32, "grad_accum": 1})

    done = _ftkit("train", str(ddp_path), "--nproc", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "effective batch 32 examples = 8 per process × 2 processes × 2 accumulation steps" in done.stderr
    assert main(["train", str(one_path), "--no-eval"]) == 0

    ddp, one = RunDir(load_recipe(ddp_path).run_dir), RunDir(load_recipe(one_path).run_dir)
    launch = json.loads(ddp.launch.read_text())
    assert (launch["processes"], launch["distributed_type"], launch["backend"]) == (2, "MULTI_CPU", "gloo")
    assert json.loads(one.launch.read_text())["effective_batch"] == launch["effective_batch"] == 32

    # Same data, seed and effective batch: the same losses and the same adapter, up to the order in which
    # gloo sums the gradients (measured: 7e-9 apart, for LoRA B values up to 2e-3).
    assert _losses(ddp) == pytest.approx(_losses(one), rel=1e-5)
    a, b = load_file(ddp.adapter / "adapter_model.safetensors"), load_file(one.adapter / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)

    # Only the main process wrote: one log line per step, one report, no stray temporary files.
    lines = ddp.train_log.read_text().splitlines()
    assert len(lines) == len(set(lines))
    assert [json.loads(line)["step"] for line in lines if "loss" in json.loads(line)] == [1, 2, 3]
    assert not [p for p in ddp.path.rglob(".*")], "a temporary or duplicate file was left behind"
    assert len(ddp.predictions.read_text().splitlines()) == 12
    assert json.loads(ddp.metrics.read_text())["training"]["effective_batch"] == 32
    assert done.stdout.count("trained 3 steps") == 1 and done.stdout.count("reports:") == 1

    # The checkpoints assume 2 processes: resuming with one would change the effective batch.
    assert main(["train", str(ddp_path), "--resume"]) == 2


def test_accelerate_cpu_launch_of_several_processes_is_refused(monkeypatch) -> None:
    """`accelerate launch --cpu --num_processes 2` runs one plain process; ftkit says so instead of training.

    A dry run of accelerate's own launcher code: the command it would run and the environment it would give.
    """
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_simple_launcher_cmd_env

    args = launch_command_parser().parse_args(["--cpu", "--num_processes", "2", "-m", "ftkit.cli", "train", "r.yaml"])
    command, env = prepare_simple_launcher_cmd_env(_validate_launch_command(args)[0])
    assert command[:2] == [sys.executable, "-m"], "one python process, no mpirun"
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(distributed.DistributedError, match="started 1 process, not N .* --nproc N"):
        distributed.check_world_size()


def test_world_size_other_than_asked_is_refused(monkeypatch) -> None:
    monkeypatch.setenv(distributed.EXPECTED_ENV, "2")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(distributed.DistributedError, match="2 processes were asked for .* started 1"):
        distributed.check_world_size()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.check_world_size() == 2


def test_nproc_hands_off_to_an_existing_launcher() -> None:
    cpu = distributed.launcher_command(2, ["train", "r.yaml", "--overwrite"], gpus=0)
    assert cpu[1:] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "ftkit.cli",
        "train",
        "r.yaml",
        "--overwrite",
    ]
    gpu = distributed.launcher_command(2, ["train", "r.yaml"], gpus=4)
    assert gpu[1:5] == ["-m", "accelerate.commands.launch", "--num_processes", "2"]
    with pytest.raises(distributed.DistributedError, match="only 2 CUDA GPU"):
        distributed.launcher_command(3, ["train", "r.yaml"], gpus=2)
    with pytest.raises(distributed.DistributedError, match="at least 1"):
        distributed.launcher_command(0, ["train", "r.yaml"], gpus=0)


def test_nproc_refuses_an_existing_run_before_starting_processes(write_recipe, capsys) -> None:
    path = write_recipe("exists")
    run_dir = load_recipe(path).run_dir
    run_dir.mkdir(parents=True)
    (run_dir / "keep.txt").write_text("earlier run")
    assert main(["train", str(path), "--nproc", "2"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "starting 2 processes" not in err
    assert (run_dir / "keep.txt").read_text() == "earlier run"


def _launcher_env(config: Path) -> dict[str, str]:
    """The environment `accelerate launch --config_file <config>` gives its processes, computed by
    accelerate's own launcher code without starting anything (a dry run; deepspeed need not be installed)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config), "-m", "ftkit.cli", "train", "r.yaml"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        return prepare_deepspeed_cmd_env(args)[1]
    return prepare_multi_gpu_env(args)


@pytest.mark.parametrize(
    ("name", "kind", "processes", "sharded"),
    [
        ("ddp", "MULTI_GPU", 2, False),
        ("multi-node", "MULTI_GPU", 8, False),
        ("fsdp-qlora", "FSDP", 2, True),
        ("deepspeed-zero2", "DEEPSPEED", 2, False),
        ("deepspeed-zero3", "DEEPSPEED", 2, True),
    ],
)
def test_accelerate_configs_parse_and_ftkit_adapts_to_them(
    name: str, kind: str, processes: int, sharded: bool, monkeypatch
) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    from ftkit.models import ModelError, compute_dtype, quantization_config
    from ftkit.recipe import ModelConfig

    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert config.distributed_type.value == kind and config.num_processes == processes
    env = _launcher_env(CONFIGS / f"{name}.yaml")
    if kind == "FSDP":
        assert env["FSDP_USE_ORIG_PARAMS"] == "false" and env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"
        assert env["FSDP_SYNC_MODULE_STATES"] == "true"
    if name == "deepspeed-zero3":
        assert env["ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL"] == "true", "needed to gather the adapter for saving"
    if kind == "DEEPSPEED":
        assert "ACCELERATE_GRADIENT_ACCUMULATION_STEPS" not in env, "left to the recipe's train.grad_accum"

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert distributed.shards_parameters() is sharded
    four_bit = quantization_config(ModelConfig(quantization="4bit"))
    assert four_bit.bnb_4bit_quant_storage == (compute_dtype("auto") if sharded else torch.uint8)  # the compute dtype
    if sharded:
        with pytest.raises(ModelError, match="8bit weights cannot be sharded"):
            quantization_config(ModelConfig(quantization="8bit"))
    else:
        assert quantization_config(ModelConfig(quantization="8bit")).load_in_8bit
