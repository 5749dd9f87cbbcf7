"""Shared fixtures: the read-only shared/ folder, a temporary artifact store, a small synthetic dataset."""

from __future__ import annotations

import os
from pathlib import Path

# prefect.main configures Prefect's logging once, and its console handler keeps the stream it sees then: imported here,
# at collection, that is pytest's session-long capture, not one test's capsys stream (closed after that test; flows
# run by later tests then failed on it, when tests/predict/test_predict_demo.py ran first).
import prefect.main  # noqa: F401
import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared() -> Path:
    return Path(os.environ.get("FSAR_SHARED", REPO.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = _shared()
    if not (path / "splits").is_dir():
        pytest.skip(f"the shared folder with the standard split files is not at {path} (set FSAR_SHARED)")
    return path


@pytest.fixture(scope="session")
def splits_dir(shared_dir: Path) -> Path:
    return shared_dir / "splits"


@pytest.fixture()
def store(tmp_path: Path):
    from pipeline.artifacts import ArtifactStore

    return ArtifactStore(tmp_path / "artifacts")


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 classes x 3 videos of 16 frames at 64 px (about 2 s to write)."""
    from pipeline.datasets.synthetic import generate

    return generate(tmp_path_factory.mktemp("synthetic"), 3, seed=0, num_frames=16, size=64)


@pytest.fixture(scope="session")
def tiny_overrides(synthetic_root: Path) -> list[str]:
    """The smallest honest pipeline: script descriptions (file backend), fsar-micro, T=4, two training episodes."""
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
        "train.device=cpu",
        "evaluate.device=cpu",
        "train.epochs=1",
        "train.episodes_per_epoch=2",
        "train.val_episodes=2",
        "train.warmup_epochs=0",
        "evaluate.episodes=3",
    ]


@pytest.fixture()
def prefect_server_env(tmp_path: Path):
    """A real `prefect server` on a free 127.0.0.1 port with a private PREFECT_HOME, stopped afterwards; yields the
    environment that reaches it (no inherited PREFECT_* setting, analytics off, PREFECT_API_URL set)."""
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}, "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_API_HOST": "127.0.0.1",
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}  # fmt: skip
    log_path = tmp_path / "server.log"
    log = open(log_path, "w")
    prefect = Path(sys.executable).parent / "prefect"
    proc = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited early:\n{log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("prefect server did not become healthy within 180 s")
            time.sleep(1)
        yield env
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


# ------------------------------------------------------------------ a tiny real pipeline (train, evaluate, the few-shot core)
def script_descriptions(cfg, store, corpus_path):
    """A descriptions artifact from the synthetic scripts (the descriptions stage's own tests cover its backends)."""
    import pandas as pd
    import yaml

    from pipeline.contract import build_once
    from pipeline.datasets import get_dataset

    corpus = yaml.safe_load(corpus_path.read_text())
    spec = get_dataset(cfg.dataset)
    rows = [
        {"split": s, "class": c, "k": k, "text": t}
        for s, c in spec.all_classes()
        for k, t in enumerate(corpus[c]["sub_act_en_li"][: cfg.protocol.num_sub_actions])
    ]
    return build_once(
        store, "descriptions", cfg.dataset.name, config={"corpus": str(corpus_path)}, inputs={},
        build=lambda st: st.write_parquet("descriptions.parquet", pd.DataFrame(rows)), main="descriptions.parquet",
    )


@pytest.fixture(scope="session")
def tiny(synthetic_root, tiny_overrides, tmp_path_factory):
    """(config, store, {frames, descriptions, embeddings} refs) at the smallest honest size."""
    from pipeline import embeddings, frames
    from pipeline.artifacts import ArtifactStore
    from pipeline.config import load_config

    root = tmp_path_factory.mktemp("training-artifacts")
    cfg = load_config("demo", overrides=[f"dataset.video_root={synthetic_root}", f"artifacts={root}", *tiny_overrides, "train.checkpoint_every=1", "evaluate.episodes=4"])
    store = ArtifactStore(root)
    fr = frames.run(cfg, {}, store)
    desc = script_descriptions(cfg, store, synthetic_root / "scripts.yaml")
    emb = embeddings.run(cfg, {"descriptions": desc}, store)
    return cfg, store, {"frames": fr, "descriptions": desc, "embeddings": emb}


@pytest.fixture(autouse=True)
def _fsar_logger_as_it_was():
    """A CLI command run in-process installs fsar's line printer (`pipeline.logs.install`); each test ends with the
    `fsar` logger as it found it, so printing and caplog behave the same whatever ran before."""
    import logging
    import warnings

    logger = logging.getLogger("fsar")
    state = (list(logger.handlers), logger.level, logger.propagate, warnings.showwarning)
    yield
    logger.handlers[:], logger.level, logger.propagate, warnings.showwarning = state


@pytest.fixture()
def fsar_lines():
    """fsar's log lines printed as the `fsar` command prints them (a library call alone prints nothing)."""
    from pipeline.logs import install

    install()
