from pathlib import Path

import pytest

from reslab.loggers import has_wandb_api_key, resolve_wandb_mode, wandb_logger


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


def test_explicit_mode_and_bad_mode(no_wandb_credentials: Path) -> None:
    assert resolve_wandb_mode("online") == "online"
    with pytest.raises(ValueError, match=r"unknown wandb mode 'sometimes'; valid choices are auto"):
        resolve_wandb_mode("sometimes")


def test_logger_is_offline_without_credentials(no_wandb_credentials: Path) -> None:
    logger = wandb_logger(project="reslab", name="resnet-20A", save_dir=str(no_wandb_credentials))
    assert logger._wandb_init["mode"] == "offline"
    assert logger._wandb_init["name"] == "resnet-20A"
