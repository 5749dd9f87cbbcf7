import pytest

from pipeline.config import Config, ConfigError, list_presets, load_config


def test_presets_hold_the_paper_values():
    assert {"hmdb51", "ucf101", "kinetics100", "ssv2_small", "ssv2_full", "demo"} <= set(list_presets())
    for name in ("hmdb51", "ucf101", "kinetics100"):
        cfg = load_config(name)
        assert cfg.dataset.name == name
        assert (cfg.model.vision_adapted_layers, cfg.model.text_adapted_layers) == (2, 8)
        assert not cfg.model.ca_layernorm
    small, full = load_config("ssv2_small"), load_config("ssv2_full")
    assert (small.model.vision_adapted_layers, small.model.text_adapted_layers, small.model.ca_layernorm) == (6, 2, False)
    assert (full.model.vision_adapted_layers, full.model.text_adapted_layers, full.model.ca_layernorm) == (6, 2, True)
    p = load_config("hmdb51").protocol
    assert (p.num_frames, p.num_sub_actions, p.way, p.shot, p.query) == (8, 3, 5, 1, 1)
    t = load_config("hmdb51").train
    assert (t.optimizer, t.lr, t.momentum, t.epochs, t.episodes_per_epoch, t.warmup_epochs) == ("sgd", 1e-3, 0.0, 10, 1000, 9)
    assert load_config("hmdb51").evaluate.episodes == 10000


def test_overrides_parse_yaml_scalars():
    cfg = load_config("hmdb51", overrides=["model.task_context=inductive", "protocol.way=3", "train.lr=0.01"])
    assert cfg.model.task_context == "inductive" and cfg.protocol.way == 3 and cfg.train.lr == 0.01
    again = cfg.override("frames.max_frames=null")
    assert again.frames.max_frames is None and cfg.frames.max_frames == 32


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.nope=1", "unknown config key 'model.nope' (overrides); allowed keys in model: clip"),
        ("nope.x=1", "unknown config key 'nope.x' (overrides); allowed keys in the top level"),
        ("model.task_context=bad", "config key 'model.task_context' (overrides)"),
        ("protocol.way=1", "config key 'protocol.way' (overrides)"),
        ("model=3", "config key 'model' (overrides) is a section"),
        ("novalue", "not of the form key=value"),
    ],
)
def test_wrong_keys_and_values_are_one_line_errors(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config("hmdb51", overrides=[override])
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_preset_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="preset 'nope' not found"):
        load_config("nope")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("model:\n  widht: 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'model.widht'"):
        load_config(unknown)


def test_dump_roundtrips_and_holds_no_secret(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value")
    cfg = load_config("hmdb51")
    dumped = cfg.dump()
    assert Config.model_validate(dumped) == cfg
    assert "sk-secret-value" not in str(dumped)


def test_one_redaction_for_every_form_of_secret(monkeypatch, capsys):
    """URL user info, URL query values (every one), secret-named ?name=value pairs outside a URL and secret environment
    values are masked alike wherever fsar writes or prints: config dumps, stored configs, `fsar config` in both forms,
    log lines and error lines."""
    import json
    import logging

    from typer.testing import CliRunner

    from pipeline.cli import app
    from pipeline.cli_common import fail
    from pipeline.logs import install
    from pipeline.secrets import redact_text, redact_url

    monkeypatch.setenv("FSAR_TEST_TOKEN", "canary-env-0123")
    url = "http://me:canary-user@127.0.0.1:8000/v1/canary-env-0123?api_key=canary-query&x=1#top"
    masked = "http://***@127.0.0.1:8000/v1/***?api_key=***&x=***#top"
    assert redact_text(f"see {url}.") == f"see {masked}." and redact_url(url) == masked and redact_url(None) is None
    assert redact_text("host:8000/v1?token=canary-bare&page=2") == "host:8000/v1?token=***&page=2"  # no scheme: secret names only
    cfg = load_config("demo", overrides=[f"descriptions.base_url={url}"])
    assert cfg.descriptions.base_url == url  # the code that calls the server gets the real value
    for form in (cfg.dump(), cfg.stored(), json.loads(cfg.model_dump_json())):
        assert "canary" not in json.dumps(form)
    assert cfg.dump()["descriptions"]["base_url"] == masked
    runner = CliRunner()
    for args in (["config"], ["config", "--json"]):
        out = runner.invoke(app, [*args, "--dataset", "synthetic", "--set", f"descriptions.base_url={url}"])
        assert out.exit_code == 0 and masked in out.output and "canary" not in out.output, out.output
    install()
    logging.getLogger("fsar").warning("server %s refused", url)
    try:
        fail(ConfigError(f"descriptions: {url} is down"))
    except BaseException:  # typer.Exit
        pass
    printed = capsys.readouterr()
    assert printed.err.splitlines() == [f"[fsar] warning: server {masked} refused", f"error: descriptions: {masked} is down"]


def test_late_fields_at_their_defaults_leave_versions_and_stored_configs_as_they_were():
    from pipeline.config import section_dict
    from pipeline.settings.model import model_fields

    cfg = load_config("demo")
    stored = cfg.stored()
    assert "scores" not in stored["model"] and "val_split" not in stored["train"] and "query_order" not in stored["evaluate"]
    assert "scores" not in model_fields(cfg.model) and "val_split" not in section_dict(cfg.train)
    changed = cfg.override("model.scores=released", "train.val_split=test", "evaluate.query_order=shuffled")
    assert model_fields(changed.model)["scores"] == "released" and section_dict(changed.train)["val_split"] == "test"
    assert changed.stored()["evaluate"]["query_order"] == "shuffled"


def test_released_scores_need_one_query_per_class():
    assert load_config("hmdb51", overrides=["model.scores=released"]).model.scores == "released"
    with pytest.raises(ConfigError, match="config key 'model.scores'.*protocol.query=2") as err:
        load_config("hmdb51", overrides=["model.scores=released", "protocol.query=2"])
    assert "\n" not in str(err.value)
