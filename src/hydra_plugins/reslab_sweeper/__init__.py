"""Hydra's plugins must live in the ``hydra_plugins`` package: reslab's one, the sweeper of
``reslab-resume SWEEP_FOLDER`` (the rest of the mechanism is reslab.sweeps)."""

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict, read_write

from reslab.run_folder import read_status
from reslab.run_lock import restore, snapshot
from reslab.sweeps import ResumeRefused, expand, folders_of, hydra_quoted


class ResumeSweeper(Sweeper):
    """``hydra/sweeper=resume`` (conf/hydra/sweeper/resume.yaml): the jobs of the sweep in
    ``hydra.sweep.dir`` that have not finished, launched through the configured launcher.
    ``params`` are the sweep's ``hydra.sweeper.params`` (an experiment's)."""

    def __init__(self, params: dict[str, str] | None = None) -> None:
        self.params = dict(params or {})
        self.config: DictConfig | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from reslab.resume import run_complete  # torch: only when resuming

        assert self.config is not None
        loader = self.hydra_context.config_loader
        parser = OverridesParser.create(config_loader=loader)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        batch, wheres, finished, diverged = [], [], [], 0
        jobs = expand(parser, [f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        for num, (job, folder) in enumerate(zip(jobs, folders_of(jobs, sweep_dir), strict=True)):
            if folder is not None:
                max_steps = loader.load_sweep_config(self.config, job).trainer.max_steps
                ended = read_status(folder).get("status")
                if ended == "diverged" or run_complete(folder, max_steps):  # results, as they are
                    finished.append(folder.name)
                    diverged += ended == "diverged"
                    continue
                where = folder.name
            else:  # its folder as Hydra's launcher names it: hydra.sweep.subdir of its config
                where = self._subdir(job, num)
            batch.append([*job, "ckpt_path=last", f"hydra.sweep.subdir={hydra_quoted(where)}"])
            wheres.append(where)
        some = f" ({diverged} diverged)" if diverged else ""
        print(f"[reslab] resuming the sweep {sweep_dir}: {len(finished)} job(s) finished{some} "
              f"and left as they are, {len(batch)} to run", flush=True)  # fmt: skip
        self._check(batch or jobs[:1])  # (every job finished: the resume's overrides, still)
        if not batch:
            return []
        kept = [snapshot(sweep_dir / where) for where in wheres]
        try:
            results = self.launcher.launch(batch, initial_job_idx=0)
        finally:  # a job refused before it started: its folder as it was
            for folder in kept:
                restore(folder)
        for result in results:
            _ = result.return_value  # a failed job raises here, as with Hydra's sweeper
        return [results]

    @contextlib.contextmanager
    def _as_job(self, job: list[str], num: int = 0) -> Iterator[DictConfig]:
        """Job ``num``'s composed config, Hydra's config of the process while it is used (its
        ``${hydra:...}`` values, as when it runs)."""
        from hydra.core.hydra_config import HydraConfig

        assert self.config is not None
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, job)
        with open_dict(cfg):
            cfg.hydra.job.num = num
        hydra = HydraConfig.instance()
        previous = hydra.cfg
        try:
            hydra.set_config(cfg)
            with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):  # as run_job
                where = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
                cfg.hydra.runtime.output_dir = str(where.absolute())
            hydra.set_config(cfg)
            yield cfg
        finally:
            hydra.cfg = previous

    def _subdir(self, job: list[str], num: int) -> str:
        """The folder (under hydra.sweep.dir) of job ``num``, as the launcher would name it:
        its config's ``hydra.sweep.subdir``, resolved with its values (``${seed}``, the job
        number, ``${folder_name:}``)."""
        with self._as_job(job, num) as cfg:
            return str(cfg.hydra.sweep.subdir)

    def _check(self, batch: list[list[str]]) -> None:
        """reslab's checks (reslab.checks.check_run) of each job to launch, on its composed
        config: when every job is refused (the resume's own overrides are bad), nothing is
        launched and no folder is made or changed (:class:`reslab.sweeps.ResumeRefused`); a job
        refused alone fails alone, as in the sweep's first start."""
        from reslab import console
        from reslab.checks import check_run
        from reslab.cli import explain

        console.quiet_third_party()  # Lightning's notices, as in a job
        first = None
        for job in batch:
            try:
                with self._as_job(job) as cfg:
                    check_run(cfg)
                return
            except Exception as err:  # the job's own error, said below
                first = first or err
        raise ResumeRefused(
            f"the sweep's resume is refused, no job was launched and its folder is as it was: "
            f"{explain(first) or first}"
        ) from first
