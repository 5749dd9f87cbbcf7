"""The README's commands, typed as they are written (issue 22).

The code blocks of README.md marked `<!-- e2e NAME -->` (commands) and `<!-- e2e NAME: FILE -->` (a file to
write) are the sequences a user types; these tests extract them from the README and run them verbatim with
bash, `make` targets included, in a fresh folder, so a README change changes the test. What the test
provides around them, as a user's machine would:

- `fsar`, `prefect` and `make` work from any folder: the venv's bin on PATH, MAKEFILES=<repo>/Makefile
  (what `make -f <repo>/Makefile` does; the README's folder is the checkout);
- the OpenAI-compatible server the README points at (`http://127.0.0.1:8000/v1`) is the fake one
  (tests/descriptions/fake_openai_server.py) on a free port, and the Prefect server (`127.0.0.1:4200`) a
  real one on a free port: those two addresses are the only text replaced;
- the `demo` preset is the real one with test sizes (FSAR_CONFIG_DIR: fsar-micro at 32 px, T=4, two training
  episodes, three test episodes), so `PRESET=demo` runs in seconds; its descriptions settings are the real
  demo's (max_attempts included).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO / "tests" / "descriptions"))
from fake_openai_server import FakeLLM  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("make") is None or shutil.which("bash") is None, reason="needs make and bash")]

README_LLM = "http://127.0.0.1:8000/v1"
README_PREFECT = "http://127.0.0.1:4200/api"
_MARK = re.compile(r"^\s*<!-- e2e ([\w-]+)(?::\s*(\S+))? -->\s*$")
TINY = {
    "frames": {"storage_size": 40, "max_frames": 8, "workers": 1},
    "model": {"clip": "fsar-micro", "image_size": 32, "vision_adapted_layers": 1, "text_adapted_layers": 1},
    "protocol": {"num_frames": 4},
    "train": {"device": "cpu", "epochs": 1, "episodes_per_epoch": 2, "val_episodes": 2, "warmup_epochs": 0},
    "evaluate": {"device": "cpu", "episodes": 3},
}
_MAKE_VARS = ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES", "CONFIG", "DATASET", "VIDEO_ROOT", "VIDEO_LIST", "PRESET",
              "ARTIFACTS", "LLM", "MODEL", "BASE_URL", "CORPUS", "SET", "INPUT", "FSAR_ARTIFACTS", "OPENAI_API_KEY")  # fmt: skip


def readme_blocks(text: str | None = None) -> list[tuple[str, str | None, str]]:
    """[(sequence, file or None, block text)] in README order."""
    lines = (text if text is not None else (REPO / "README.md").read_text(encoding="utf-8")).splitlines()
    out, i = [], 0
    while i < len(lines):
        mark = _MARK.match(lines[i])
        i += 1
        if not mark:
            continue
        while i < len(lines) and not lines[i].strip():
            i += 1
        fence = lines[i]
        assert fence.lstrip().startswith("```"), f"README: <!-- e2e {mark.group(1)} --> is not followed by a code block"
        indent = len(fence) - len(fence.lstrip())
        body = []
        i += 1
        while not lines[i].strip().startswith("```"):
            body.append(lines[i][indent:])
            i += 1
        out.append((mark.group(1), mark.group(2), "\n".join(body) + "\n"))
    return out


def sequence(name: str) -> list[tuple[str | None, str]]:
    found = [(f, b) for n, f, b in readme_blocks() if n == name]
    assert found, f"README.md has no <!-- e2e {name} --> block"
    return found


def test_the_readme_marks_the_sequences_it_shows():
    names = [n for n, _, _ in readme_blocks()]
    assert {"run-file", "stage-by-stage", "deployment"} <= set(names)
    assert [f for n, f, _ in readme_blocks() if n == "run-file" and f] == ["fsar.yaml"]
    text = (REPO / "README.md").read_text()
    assert text.index("<!-- e2e run-file") < text.index("<!-- e2e stage-by-stage")  # the run-file way first
    stage_lines = [ln for ln in sequence("stage-by-stage")[0][1].splitlines() if ln.startswith("make ")]
    assert [ln.split()[1] for ln in stage_lines] == ["descriptions", "frames", "audit", "embeddings", "train", "evaluate"]
    assert all(all(v in ln for v in ("LLM=", "MODEL=", "BASE_URL=")) for ln in stage_lines)  # every target gets them


@pytest.fixture(scope="module")
def tiny_presets(tmp_path_factory) -> Path:
    """A preset folder whose `demo` is the real demo preset at test sizes."""
    folder = tmp_path_factory.mktemp("presets")
    demo = yaml.safe_load((REPO / "pipeline" / "configs" / "demo.yaml").read_text())
    for section, values in TINY.items():
        demo.setdefault(section, {}).update(values)
    (folder / "demo.yaml").write_text(yaml.safe_dump(demo, sort_keys=False))
    return folder


def _env(presets: Path, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _MAKE_VARS and not k.startswith("PREFECT_")}
    env.update(
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", PYTHONPATH=str(REPO), MAKEFILES=str(REPO / "Makefile"),
        VENV=str(Path(sys.prefix)), FSAR_CONFIG_DIR=str(presets), PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180", OMP_NUM_THREADS="1", **extra,
    )  # fmt: skip
    return env


def run_sequence(name: str, cwd: Path, env: dict[str, str], urls: dict[str, str], upto: int | None = None) -> str:
    """Write the sequence's files and run its command blocks with bash (each block one script), as typed."""
    output = []
    for file, block in sequence(name)[:upto]:
        for readme_url, real in urls.items():
            block = block.replace(readme_url, real)
        if file:
            (cwd / file).write_text(block, encoding="utf-8")
            continue
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
        output.append(out.stdout + out.stderr)
        assert out.returncode == 0, f"README block failed ({out.returncode}):\n{block}\n--- output ---\n{(out.stdout + out.stderr)[-6000:]}"
        assert "Traceback" not in out.stdout + out.stderr, (out.stdout + out.stderr)[-6000:]
    return "\n".join(output)


def test_run_file_sequence_then_predict_from_another_folder(tiny_presets, tmp_path):
    """fsar synthetic, the README's fsar.yaml, fsar plan, make full, fsar export, and fsar predict from a folder
    with no run file and no artifacts, with only --model."""
    home = tmp_path / "prefect-home"
    work = tmp_path / "work"
    work.mkdir()
    with FakeLLM() as llm:
        out = run_sequence("run-file", work, _env(tiny_presets, home), {README_LLM: llm.url})
        assert llm.calls() >= 24
    assert (work / "fsar.yaml").is_file() and (work / "bundles" / "mine" / "bundle.json").is_file()
    from pipeline import artifacts

    ev = artifacts.load("evaluate", "synthetic", root=str(work / "artifacts"))
    assert set(ev["method"]) >= {"task_adapter_pp"} and ev["episode"].nunique() == 3
    desc = artifacts.catalog(str(work / "artifacts"))
    assert (desc["stage"] == "descriptions").sum() == 1  # every stage read the run file's LLM settings
    assert "exists" in out or "build" in out  # fsar plan printed the plan
    rows = [ln for ln in out.splitlines() if ln.lstrip().startswith(("moving_up/moving_up_000.mp4", "growing/growing_000.mp4"))]
    assert len(rows) == 2, out[-3000:]  # the two queries, answered
    assert not (work / "new-clips" / "artifacts").exists()  # the bundle alone was enough


def test_stage_by_stage_with_make_variables(tiny_presets, tmp_path):
    home = tmp_path / "prefect-home"
    work = tmp_path / "work"
    work.mkdir()
    with FakeLLM() as llm:
        out = run_sequence("stage-by-stage", work, _env(tiny_presets, home), {README_LLM: llm.url})
        assert {e["model"] for e in llm.log} == {"Qwen/Qwen2.5-7B-Instruct"}
    from pipeline import artifacts

    cat = artifacts.catalog(str(work / "artifacts"))
    assert sorted(set(cat["stage"])) == ["audit", "descriptions", "embeddings", "evaluate", "frames", "prefix", "train"]
    assert (cat["stage"] == "descriptions").sum() == 1  # the later targets implied the same descriptions version
    assert "evaluate: evaluate/synthetic/" in out


@pytest.fixture()
def prefect_server(prefect_server_env):
    return prefect_server_env["PREFECT_API_URL"], Path(prefect_server_env["PREFECT_HOME"])


@pytest.mark.server
def test_deployment_with_the_demo_preset_completes_through_a_worker(prefect_server, tiny_presets, tmp_path):
    """make deploy, prefect deployment run fsar/full ... -p preset=demo, make worker-once: COMPLETED, although the
    LLM's first answer for one class does not parse (the demo preset asks again); then a run where a class never
    gets a usable answer ends Failed with the one-line reason, and the worker's log holds no traceback."""
    import httpx

    api, home = prefect_server
    work = tmp_path / "work"
    work.mkdir()
    with FakeLLM(script={"moving up": ["malformed"]}) as llm:
        presets = tmp_path / "presets"  # the deployment names only the preset: its LLM is the fake server here
        presets.mkdir()
        demo = yaml.safe_load((tiny_presets / "demo.yaml").read_text())
        demo["descriptions"].update(backend="openai", base_url=llm.url, model="fake-model")
        (presets / "demo.yaml").write_text(yaml.safe_dump(demo, sort_keys=False))
        env = _env(presets, home)
        run_sequence("run-file", work, env, {README_LLM: llm.url}, upto=1)  # the synthetic videos the README starts from
        out = run_sequence("deployment", work, env, {README_PREFECT: api})
        assert [e["behaviour"] for e in llm.log if e["action"] == "moving up"] == ["malformed", "ok"]
        assert "fsar/full" in out
        runs = httpx.post(f"{api}/flow_runs/filter", json={}, timeout=10).json()
        deployed = [r for r in runs if r.get("deployment_id")]
        assert [r["state"]["type"] for r in deployed] == ["COMPLETED"], [(r["name"], r["state"]) for r in runs]
        assert deployed[0]["parameters"]["preset"] == "demo" and deployed[0]["parameters"]["video_root"] == str(work / "videos")
        from pipeline import artifacts

        ev = artifacts.load("evaluate", "synthetic", root=str(work / "deployed"))
        assert set(ev["method"]) >= {"task_adapter_pp"}

        # A class the LLM never answers usably: the run ends Failed with the one line, and no traceback in the worker's log.
        llm.script["moving down"] = ["malformed"] * 9
        env = {**env, "PREFECT_API_URL": api}
        params = ["-p", "dataset=synthetic", "-p", f"video_root={work / 'videos'}", "-p", f"artifacts={work / 'failing'}", "-p", "preset=demo",
                  "--param", "overrides=" + json.dumps(["descriptions.max_attempts=2"])]  # fmt: skip
        for cmd in (["prefect", "deployment", "run", "fsar/full", *params], ["make", "worker-once"]):
            res = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
            assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
        log = res.stdout + res.stderr
        assert "Traceback" not in log, log[-6000:]
        assert "no usable answer for 1 of 24 classes: test/'moving down'" in log
    runs = httpx.post(f"{api}/flow_runs/filter", json={"sort": "START_TIME_DESC"}, timeout=10).json()
    failed = [r for r in runs if r.get("deployment_id") and r["state"]["type"] == "FAILED"]
    assert len(failed) == 1 and failed[0]["state"]["message"].startswith("descriptions: no usable answer for 1 of 24 classes"), runs
    assert "\n" not in failed[0]["state"]["message"] and "'moving down'" in failed[0]["state"]["message"]
