"""A private Prefect home and one session-scoped test harness for every flow test."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield home


@pytest.fixture(scope="session")
def tiny_overrides(synthetic_root) -> list[str]:
    """The smallest honest run: file-backend descriptions, fsar-micro, T=4, two training episodes."""
    return [
        "descriptions.backend=file",
        f"descriptions.corpus={synthetic_root / 'scripts.yaml'}",
        "frames.storage_size=40",
        "frames.max_frames=8",
        "frames.workers=1",
        "model.clip=fsar-micro",
        "model.pretrained=null",
        "model.image_size=32",
        "model.vision_adapted_layers=1",
        "model.text_adapted_layers=1",
        "protocol.num_frames=4",
        "train.epochs=1",
        "train.episodes_per_epoch=2",
        "train.val_episodes=2",
        "train.warmup_epochs=0",
        "evaluate.episodes=3",
        "evaluate.device=cpu",
        "train.device=cpu",
    ]
