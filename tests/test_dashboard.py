"""What a dashboard and a terminal see: wandb runs stepped by iteration with final and best
errors in their summary and a final table, status.json with the best val error, and a
progress bar that counts iterations across epochs."""

import json
from pathlib import Path

import lightning as L
from wandb_files import wandb_records

from reslab.callbacks import IterationProgressBar
from reslab.train import train

SMOKE = ["data=synthetic", "model.depth=8", "debug=smoke", "data.train_subset=32",
         "optim.max_steps=6", "trainer.val_check_interval=2"]  # fmt: skip


def test_wandb_run_has_iteration_axis_final_summary_and_table(tmp_path: Path, hydra_cfg) -> None:
    cfg = hydra_cfg(tmp_path, SMOKE)
    train(cfg)
    status = json.loads((tmp_path / "status.json").read_text())
    (records,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    assert wandb_records(records)[-1].HasField("exit")  # the whole run is in the file
    data = records.read_bytes()
    # every curve is stepped by Lightning's step, which reslab sets to the iteration
    assert b"trainer/global_step" in data
    # the summary and the one-row table "final" hold the final and best errors
    for key in (b"val/error_best", b"val/error_best_at", b"final", b"table-file", b"finished"):
        assert key in data, key
    (table,) = (tmp_path / "wandb").glob("offline-run-*/files/media/table/final_*.table.json")
    final = json.loads(table.read_text())
    row = dict(zip(final["columns"], final["data"][0], strict=True))
    assert row["network"] == "resnet-8A" and row["status"] == "finished"
    assert row["iterations"] == 6 and row["test/error"] == status["test/error"]
    # best val error: the lowest of the validations at iterations 2, 4 and 6
    assert status["val/error_best"] <= status["val/error"]
    assert status["val/error_best_at"] in (2, 4, 6)


class _Recorder(L.Callback):
    """Reads the progress bar's training task after each of its updates."""

    def __init__(self, bar: IterationProgressBar) -> None:
        self.bar, self.seen = bar, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar = self.bar.train_progress_bar
        self.seen.append((trainer.current_epoch, bar.n, bar.total, bar.desc))


def test_progress_bar_runs_over_iterations_across_epochs(tmp_path: Path, hydra_cfg) -> None:
    from hydra.utils import instantiate

    cfg = hydra_cfg(tmp_path, SMOKE)
    datamodule = instantiate(cfg.data)  # 32 images, batch 16: 2 iterations per epoch
    net = instantiate(cfg.model, num_classes=10, in_channels=3)
    module = instantiate(cfg.module, net=net)
    bar = IterationProgressBar()
    recorder = _Recorder(bar)
    trainer = L.Trainer(
        max_steps=6, max_epochs=-1, callbacks=[bar, recorder], logger=False,
        enable_checkpointing=False, limit_val_batches=0, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, datamodule=datamodule)
    assert [e for e, *_ in recorder.seen] == [0, 0, 1, 1, 2, 2]
    assert [(c, t) for _, c, t, _ in recorder.seen] == [(i, 6) for i in range(1, 7)]
    assert all("Iterations" in d for *_, d in recorder.seen)
