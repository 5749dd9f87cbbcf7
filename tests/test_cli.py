import json
from typer.testing import CliRunner

from pipeline.cli import app

runner = CliRunner()


def test_help_lists_the_stages():
    out = runner.invoke(app, ["--help"])
    assert out.exit_code == 0
    for stage in ("descriptions", "frames", "audit", "embeddings", "train", "evaluate", "model-info", "pretrain-backbone", "synthetic"):
        assert stage in out.output


def test_bad_input_is_one_clear_line_and_writes_nothing(tmp_path):
    root = tmp_path / "art"
    cases = [
        (["frames", "--dataset", "nope", "--artifacts", str(root)], "unknown dataset 'nope'; choose one of"),
        (["frames", "--dataset", "hmdb51", "--artifacts", str(root), "--set", "dataset.split_dir=" + str(tmp_path)], "VIDEO_ROOT"),
        (["frames", "--dataset", "synthetic", "--artifacts", str(root)], "fsar synthetic --out"),
        (["train", "--dataset", "hmdb51", "--artifacts", str(root), "--set", "train.lr=-1"], "config key 'train.lr'"),
        (["train", "--dataset", "hmdb51", "--artifacts", str(root), "--set", "model.scores=released", "--set", "protocol.query=2"],
         "config key 'model.scores'"),
        (["embeddings", "--dataset", "hmdb51", "--artifacts", str(root)], "embeddings needs the descriptions artifact hmdb51/"),
    ]
    for args, message in cases:
        out = runner.invoke(app, args)
        assert out.exit_code == 2, out.output
        assert message in out.output
        assert "Traceback" not in out.output
    assert not root.exists() or not any(p.name != ".staging" for p in root.iterdir())


def test_synthetic_command_writes_a_dataset(tmp_path):
    out = runner.invoke(app, ["synthetic", "--out", str(tmp_path / "syn"), "--videos-per-class", "1", "--frames", "4"])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "syn" / "synthetic.csv").is_file() and (tmp_path / "syn" / "scripts.yaml").is_file()


def test_a_flag_and_a_set_for_the_same_key_must_agree(tmp_path):
    out = runner.invoke(app, ["evaluate", "--dataset", "hmdb51", "--artifacts", str(tmp_path), "--episodes", "10", "--set", "evaluate.episodes=50"])
    assert out.exit_code == 2 and "evaluate.episodes=10" in out.output and "evaluate.episodes=50" in out.output, out.output
    out = runner.invoke(app, ["config", "--dataset", "hmdb51", "--set", "dataset.name=ucf101"])
    assert out.exit_code == 2 and "give one of them" in out.output, out.output
    out = runner.invoke(app, ["config", "--dataset", "hmdb51", "--set", "dataset.name=hmdb51"])  # agreeing is fine
    assert out.exit_code == 0, out.output
    assert not tmp_path.joinpath("evaluate").exists()


def test_model_info_takes_a_dataset():
    out = runner.invoke(app, ["model-info", "--dataset", "ssv2_small", "--clip", "ViT-B-16", "--no-pretrained"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["trainable"] == 7370496  # the ssv2_small preset, chosen by --dataset
