import socket
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from wandb_files import offline_runs, wandb_history, wandb_records

from reslab.loggers import AppendingCSVLogger, has_wandb_api_key, resolve_wandb_mode, wandb_logger


@pytest.fixture
def no_wandb_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    return tmp_path


def test_no_api_key_means_offline(no_wandb_credentials: Path) -> None:
    assert not has_wandb_api_key()
    assert resolve_wandb_mode("auto") == "offline"


def test_api_key_in_netrc_is_found(no_wandb_credentials: Path) -> None:
    netrc = no_wandb_credentials / ".netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "0" * 40 + "\n")
    netrc.chmod(0o600)
    assert has_wandb_api_key()


def test_wandb_mode_environment_wins(
    no_wandb_credentials: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode("auto") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert resolve_wandb_mode("auto") == "offline"


def test_a_self_hosted_server_is_reached_at_its_own_port(
    no_wandb_credentials: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    with socket.create_server(("127.0.0.1", 0)) as server:  # a real listening port
        port = server.getsockname()[1]
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
        assert resolve_wandb_mode("auto") == "online"
    with pytest.warns(UserWarning, match=f"127.0.0.1:{port} is unreachable"):  # closed now
        assert resolve_wandb_mode("auto") == "offline"


@pytest.mark.parametrize("url", ["http://host:abc", "http://127.0.0.1:99999", "http://[::1",
                                 "127.0.0.1:1", "::::", "   "])  # fmt: skip
def test_a_malformed_server_url_means_offline_not_a_crash(
    no_wandb_credentials: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", url)
    with pytest.warns(UserWarning, match="unreachable: logging offline"):
        assert resolve_wandb_mode("auto") == "offline"


def test_explicit_mode_and_bad_mode(no_wandb_credentials: Path) -> None:
    assert resolve_wandb_mode("online") == "online"
    with pytest.raises(ValueError, match=r"unknown wandb mode 'sometimes'; valid choices are auto"):
        resolve_wandb_mode("sometimes")


def test_logger_is_offline_without_credentials(no_wandb_credentials: Path) -> None:
    logger = wandb_logger(project="reslab", name="resnet-20A", save_dir=str(no_wandb_credentials))
    assert logger.experiment.offline and logger.experiment.name == "resnet-20A"
    assert logger.experiment.project == "reslab"
    logger.experiment.finish()
    assert offline_runs(no_wandb_credentials)  # a run folder that `wandb sync` uploads


def test_csv_logger_appends_to_the_metrics_of_the_run_it_continues(tmp_path: Path) -> None:
    """Lightning's CSVLogger deletes an existing metrics.csv; the run folder's logger writes
    the same file (sorted columns, a new column widens the header of every row) and appends."""
    (tmp_path / "metrics.csv").write_text("lr,step\r\n0.1,1\r\n")
    logger = AppendingCSVLogger(tmp_path)
    logger.log_metrics({"lr": torch.tensor(0.25)}, step=2)  # a float32 tensor
    logger.log_metrics({"val/error": 50.0}, step=2)
    logger.log_hyperparams({"seed": 0})
    logger.log_hyperparams({"network": "resnet-8A"})
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines == ["lr,step,val/error", "0.1,1,", "0.25,2,", ",2,50.0"]
    assert OmegaConf.load(tmp_path / "hparams.yaml") == {"seed": 0, "network": "resnet-8A"}
    fresh = AppendingCSVLogger(tmp_path / "new")
    fresh.log_metrics({"train/loss": 2.5}, step=1)
    assert (tmp_path / "new" / "metrics.csv").read_bytes() == b"step,train/loss\r\n1,2.5\r\n"


def test_a_resumed_wandb_run_steps_by_iteration_above_its_earlier_pieces(
    no_wandb_credentials: Path,
) -> None:
    """The second piece of a run folder's wandb run logs only the iterations above the rows
    its first piece holds (a run killed after its checkpoint at 4 wrote 6; it redoes 5-6)."""
    folder = no_wandb_credentials
    first = wandb_logger(project="reslab", save_dir=str(folder))
    assert first.after_step is None
    for step in (2, 4, 6):
        first.log_metrics({"train/loss": float(step)}, step=step)
    first.experiment.finish()
    run_id = (folder / "wandb_id.txt").read_text().strip()
    (piece,) = offline_runs(folder)
    wandb_records(piece / f"run-{run_id}.wandb")  # once wandb's service has written it all

    time.sleep(1.1)  # a piece's folder is named by its start, to the second
    second = wandb_logger(project="reslab", save_dir=str(folder))
    assert second.after_step == 6 and second.experiment.id == run_id
    for step in (6, 8):  # 6 redone: its row is the first piece's
        second.log_metrics({"train/loss": float(step)}, step=step)
        second.log_metrics({"val/error": 50.0}, step=step)
    second.experiment.finish()
    pieces = offline_runs(folder)
    rows = [wandb_history(p / f"run-{run_id}.wandb") for p in pieces]
    assert [[r["_step"] for r in piece] for piece in rows] == [[2, 4, 6], [8]]
    assert rows[1][0]["train/loss"] == 8.0 and rows[1][0]["val/error"] == 50.0
    assert rows[1][0]["trainer/global_step"] == 8
