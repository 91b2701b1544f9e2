"""sweeps/: a wandb sweep file per experiment, whose every run composes into the experiment's
network; the launcher presets of conf/hydra/launcher compose and run; a multirun of DDP jobs
runs each job once, in its own folder."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import MissingConfigException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import OmegaConf
from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

from reslab.checkpoints import CHECKPOINT_KEYS
from reslab.config import CONFIG_DIR
from reslab.resume import resume_checkpoint
from reslab.train import train

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = ROOT / "sweeps"
EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("[!_]*.yaml"))
# Top-level keys of wandb's sweep config schema (the `sweeps` package's config/schema.json).
WANDB_SWEEP_KEYS = {
    "apiVersion", "kind", "controller", "description", "program", "job", "image_uri", "entity",
    "project", "method", "command", "name", "run_cap", "metric", "metrics", "scheduler",
    "early_terminate", "parameters",
}  # fmt: skip
PARAMETER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")  # the schema's propertyNames
DEMO_NAMES = {(8, "none"): "plain-8", (8, "A"): "resnet-8A",
              (32, "none"): "plain-32", (32, "A"): "resnet-32A"}  # fmt: skip


def load_sweep(experiment: str) -> dict:
    return yaml.safe_load((SWEEPS / f"{experiment}.yaml").read_text())


def agent_command(sweep: dict, values: dict) -> list[str]:
    """The command ``wandb agent`` runs for one run of ``sweep`` with these parameter values:
    wandb's own macro values, expanded as ``wandb_agent.Agent._command_run`` expands them."""
    macros = create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    macros |= {"env": ["/usr/bin/env"], "interpreter": ["python"], "program": [sweep["program"]]}
    command: list[str] = []
    for item in map(str, create_sweep_command(list(sweep["command"]))):
        if item.startswith("${") and item.endswith("}"):
            command += macros.get(item[2:-1]) or []
        else:
            command.append(item)
    return command


def grid(sweep: dict) -> list[dict]:
    """Every run of a grid sweep: one value of each parameter."""
    params = sweep["parameters"]
    choices = [p["values"] if "values" in p else [p["value"]] for p in params.values()]
    return [dict(zip(params, combo, strict=True)) for combo in itertools.product(*choices)]


def sweeper_values(cfg) -> dict[str, list[str]]:
    """An experiment's ``hydra.sweeper.params``, each parsed into its list of values."""
    parser = OverridesParser.create()
    return {
        key: list(parser.parse_override(f"{key}={value}").sweep_string_iterator())
        for key, value in cfg.hydra.sweeper.params.items()
    }


@pytest.fixture
def compose_cfg():
    """``compose_cfg(overrides)``: the real config and Hydra's node, as reslab-train sees it."""

    def make(overrides: list[str]):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose("train", overrides=overrides, return_hydra_config=True)

    yield make
    GlobalHydra.instance().clear()


def run_reslab(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "RESLAB_LOG_DIR": str(cwd / "logs"), **env}
    return subprocess.run(
        [sys.executable, "-m", "reslab.cli", *args],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=600,
    )  # fmt: skip


def run_folders(sweep_dir: Path) -> list[str]:
    return sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and p.name[0] != ".")


def status(folder: Path) -> dict:
    return json.loads((folder / "status.json").read_text())


# -- the sweep files -------------------------------------------------------------------------


def test_every_experiment_has_a_sweep_file_and_a_readme_entry() -> None:
    assert {p.stem for p in SWEEPS.glob("*.yaml")} == set(EXPERIMENTS)
    readme = (SWEEPS / "README.md").read_text()
    for experiment in EXPERIMENTS:
        assert re.search(rf"^### {experiment}\b", readme, re.MULTILINE), experiment
        assert f"reslab-train -m experiment={experiment}" in readme
        assert f"wandb sweep sweeps/{experiment}.yaml" in readme


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_sweep_file_is_a_wandb_grid_sweep_of_one_job_per_agent_call(experiment: str) -> None:
    sweep = load_sweep(experiment)
    assert set(sweep) <= WANDB_SWEEP_KEYS, set(sweep) - WANDB_SWEEP_KEYS
    assert sweep["method"] == "grid" and sweep["program"] == "reslab-train"
    assert sweep["parameters"]["experiment"] == {"value": experiment}
    for name, spec in sweep["parameters"].items():
        assert PARAMETER_NAME.match(name), name
        assert set(spec) in ({"value"}, {"values"}), (name, spec)
        assert "value" in spec or (isinstance(spec["values"], list) and spec["values"])
    command = sweep["command"]
    assert all(isinstance(item, str) for item in command)
    assert command[:2] == ["${env}", "${program}"] and command[-1] == "${args_no_hyphens}"
    assert "hydra.mode=RUN" in command


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_sweep_values_are_the_experiments_sweeper_params(compose_cfg, experiment: str) -> None:
    sweep = load_sweep(experiment)
    expected = sweeper_values(compose_cfg([f"experiment={experiment}"]))
    swept = {k: v["values"] for k, v in sweep["parameters"].items() if k != "experiment"}
    assert {k: [str(x) for x in v] for k, v in swept.items()} == expected


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_agent_run_composes_into_one_run_of_the_experiments_network(
    compose_cfg, tmp_path: Path, experiment: str
) -> None:
    sweep = load_sweep(experiment)
    for values in grid(sweep):
        command = agent_command(sweep, values)
        assert command[:2] == ["/usr/bin/env", "reslab-train"]
        cfg = compose_cfg([*command[2:], f"paths.log_dir={tmp_path}"])
        assert cfg.hydra.mode == RunMode.RUN and cfg.group == experiment
        assert cfg.hydra.runtime.choices.experiment == experiment
        for key, value in values.items():  # a config group's choice, or a value
            chosen = cfg.hydra.runtime.choices.get(key, OmegaConf.select(cfg, key))
            assert chosen == value, key
        if experiment == "demo":
            expected = DEMO_NAMES[values["model.depth"], values["shortcut"]]
        else:
            expected, _, seed = values["net"].partition("@")
            assert cfg.seed == int(seed or 0)
        assert cfg.name == expected
        pattern = rf"{tmp_path}/agents/{experiment}/\d{{4}}(-\d\d){{2}}_\d\d(-\d\d){{2}}_{expected}"
        assert re.fullmatch(pattern, cfg.hydra.run.dir), cfg.hydra.run.dir


def test_an_agent_command_trains_one_network_in_run_mode(tmp_path: Path) -> None:
    """What ``wandb agent`` runs for fig1's first network, on synthetic data for a few steps."""
    sweep = load_sweep("fig1")
    command = agent_command(sweep, grid(sweep)[0])
    smoke = ["debug=smoke", "data=synthetic", "logger=csv", f"paths.log_dir={tmp_path}"]
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # reslab-train
    env = {**os.environ, "WANDB_MODE": "offline", "PATH": path}
    result = subprocess.run(
        [*command, *smoke], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Launching" not in result.stdout + result.stderr  # no multirun
    (run,) = (tmp_path / "agents" / "fig1").iterdir()
    assert run.name.endswith("_plain-20") and status(run)["status"] == "finished"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agents"]


# -- the launcher presets -----------------------------------------------------------------


def test_local_launcher_is_joblib_with_parallel_worker_processes(compose_cfg) -> None:
    cfg = compose_cfg(["experiment=fig1", "hydra/launcher=local"])
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__module__ == "hydra_plugins.hydra_joblib_launcher.joblib_launcher"
    assert type(launcher).__name__ == "JoblibLauncher"
    assert launcher.joblib["n_jobs"] == 2 and launcher.joblib["backend"] == "loky"
    assert launcher.joblib["prefer"] == "processes"


def test_slurm_launcher_asks_one_task_per_gpu_of_the_trainer(compose_cfg) -> None:
    overrides = ["experiment=fig1", "hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4"]
    launcher = instantiate(compose_cfg(overrides).hydra.launcher)
    assert type(launcher).__name__ == "SlurmLauncher" and type(launcher).__module__.startswith(
        "hydra_plugins.hydra_submitit_launcher"
    )
    params = launcher.params
    assert params["tasks_per_node"] == 4 and params["gpus_per_node"] == 4 and params["nodes"] == 1
    assert params["name"] == "reslab-fig1" and params["max_num_timeout"] > 0
    assert params["timeout_min"] == 1440 and params["cpus_per_task"] == 8
    assert {"partition", "account", "mem_gb", "signal_delay_s"} <= set(params)
    two_nodes = compose_cfg(["hydra/launcher=slurm", "trainer=gpu", "++trainer.num_nodes=2"])
    params = instantiate(two_nodes.hydra.launcher).params
    assert params["nodes"] == 2 and params["tasks_per_node"] == params["gpus_per_node"] == 1


def test_an_unknown_launcher_names_the_presets(compose_cfg) -> None:
    with pytest.raises(MissingConfigException, match=r"slurmm(.|\n)*local(.|\n)*slurm"):
        compose_cfg(["hydra/launcher=slurmm"])


def test_a_requeued_job_that_names_no_checkpoint_resumes_its_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, chosen = tmp_path / "run", tmp_path / "chosen.ckpt"
    held = {key: {} for key in CHECKPOINT_KEYS}  # what a resume reads, empty
    torch.save({**held, "global_step": 3}, chosen)
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert resume_checkpoint(None, run) is None
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert resume_checkpoint(None, run) is None  # requeued before its first checkpoint
    (run / "checkpoints").mkdir(parents=True)
    torch.save({**held, "global_step": 2}, run / "checkpoints" / "last.ckpt")
    assert resume_checkpoint(None, run) == str(run / "checkpoints" / "last.ckpt")
    assert resume_checkpoint(str(chosen), run) == str(chosen)  # a checkpoint the user named wins


@pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before")
def test_requeued_run_trains_on_from_its_last_checkpoint(
    tmp_path: Path, hydra_cfg, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A job SLURM requeued runs again in its folder: it resumes, here from iteration 2 of 4."""
    run = tmp_path / "run"
    args = ["model.depth=8", "data=synthetic", "debug=smoke", "logger=csv"]
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    train(hydra_cfg(run, [*args, "optim.max_steps=2"]))
    assert (run / "checkpoints" / "last.ckpt").is_file() and status(run)["iterations"] == 2
    caplog.clear()
    caplog.set_level(logging.INFO, logger="lightning.pytorch")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    train(hydra_cfg(run, [*args, "optim.max_steps=4"]))
    restored = f"Restoring states from the checkpoint path at {run}/checkpoints/last.ckpt"
    assert restored in caplog.text
    assert status(run)["status"] == "finished" and status(run)["iterations"] == 4


@pytest.mark.slow
def test_joblib_multirun_runs_both_jobs_at_once(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_reslab(
        ["-m", "hydra/launcher=local", "model.depth=8,14", "data=synthetic", "debug=smoke",
         "logger=csv", f"hydra.sweep.dir={sweep}", "+callbacks.meet._target_=sigkill.MeetInSetup",
         f"+callbacks.meet.folder={tmp_path / 'met'}", "+callbacks.meet.jobs=2"], tmp_path,
        PYTHONPATH=str(Path(__file__).resolve().parent),
    )  # fmt: skip  (each job waits in setup for the other: run one after the other, they fail)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    assert run_folders(sweep) == ["0_resnet-8A", "1_resnet-14A"]
    for run in run_folders(sweep):
        assert status(sweep / run)["status"] == "finished"
        # the job records the command the user typed, not loky's worker's
        command = json.loads((sweep / run / "provenance.json").read_text())["command"]
        assert "reslab.cli -m hydra/launcher=local model.depth=8,14" in command, command
    assert len(list((tmp_path / "met").iterdir())) == 2  # two processes met in setup


@pytest.mark.slow
def test_ddp_multirun_runs_each_job_once_with_its_own_ranks(tmp_path: Path) -> None:
    """Two jobs, each DDP on 2 CPU processes (gloo). Lightning alone would re-run the whole
    sweep in rank 1 (a second sweep folder, its jobs in step with rank 0's by luck)."""
    sweep = tmp_path / "sweep"
    result = run_reslab(
        ["-m", "model.depth=8,14", "data=synthetic", "debug=smoke", "logger=csv", "trainer=ddp",
         "trainer.accelerator=cpu", "trainer.devices=2", f"hydra.sweep.dir={sweep}"], tmp_path,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert output.count("Launching 2 jobs") == 1, output[-3000:]
    assert output.count("Starting with 2 processes") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]  # no other sweep, no runs/
    assert run_folders(sweep) == ["0_resnet-8A", "1_resnet-14A"]
    for run in run_folders(sweep):
        assert status(sweep / run)["status"] == "finished"
        assert status(sweep / run)["iterations"] == 4
        assert (sweep / run / "train_ddp_process_1.log").is_file()  # rank 1 ran this job, here
