"""Experiment files (--config): precedence, tables, errors, and the resolved config written back."""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types
from pathlib import Path

import click
import pytest

from retrievalkit import cli as cli_module
from retrievalkit.config import (
    ConfigError,
    command_defaults,
    load_config_file,
    table_for,
    write_resolved_config,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _install_fake_commands(monkeypatch: pytest.MonkeyPatch, out: dict) -> None:
    """Register two commands in the real `rkit` group: `fake` and the group `fakegroup fit`."""

    @click.command("fake")
    @click.option("--image-size", type=int, default=1024)
    @click.option("--pooling", default="gem")
    @click.option("--scales", type=float, multiple=True, default=(1.0,))
    @click.option("--grid", multiple=True)
    @click.option("--device", default="auto")
    @click.option("--out", type=click.Path(path_type=Path), default=None)
    def fake(**kwargs):
        out.update(kwargs)
        if kwargs["out"] is not None:
            write_resolved_config(kwargs["out"])

    @click.group("fakegroup")
    def fakegroup():
        pass

    @fakegroup.command("fit")
    @click.option("--dim", type=int, default=None)
    @click.option("--device", default="auto")
    def fit(dim, device):
        out.update(dim=dim, device=device)

    module = types.ModuleType("rkit_fake_cli")
    module.__spec__ = importlib.machinery.ModuleSpec("rkit_fake_cli", None)
    module.command, module.group = fake, fakegroup
    monkeypatch.setitem(sys.modules, "rkit_fake_cli", module)
    monkeypatch.setitem(cli_module.COMMANDS, "fake", ("rkit_fake_cli", "command", "test"))
    monkeypatch.setitem(cli_module.COMMANDS, "fakegroup", ("rkit_fake_cli", "group", "test"))


def _run(args: list[str]) -> None:
    cli_module.main(args)


@pytest.fixture()
def seen(monkeypatch):
    out: dict = {}
    _install_fake_commands(monkeypatch, out)
    return out


def test_command_table_sets_defaults_and_flags_override(tmp_path, seen):
    cfg = tmp_path / "exp.toml"
    cfg.write_text('device = "cpu"\n[fake]\nimage_size = 448\npooling = "mac"\nscales = [1, 0.5]\n'
                   '[fake.grid]\npooling = ["mac", "gem:p=4"]\ndim = [32, 64]\n')
    _run(["--config", str(cfg), "fake"])
    assert seen["image_size"] == 448 and seen["pooling"] == "mac" and seen["device"] == "cpu"
    assert seen["scales"] == (1.0, 0.5)
    assert seen["grid"] == ("pooling=mac,gem:p=4", "dim=32,64")
    # file < flag: the flag wins, the other keys still come from the file
    _run(["--config", str(cfg), "fake", "--image-size", "224"])
    assert seen["image_size"] == 224 and seen["pooling"] == "mac"
    # the command-level --config works the same way
    _run(["fake", "--config", str(cfg), "--pooling", "spoc"])
    assert seen["pooling"] == "spoc" and seen["image_size"] == 448


def test_command_level_file_overrides_group_level_file(tmp_path, seen):
    base, own = tmp_path / "base.toml", tmp_path / "own.toml"
    base.write_text("[fake]\nimage_size = 448\npooling = \"mac\"\n")
    own.write_text("pooling = \"spoc\"\n")  # flat file: one command
    _run(["--config", str(base), "fake", "--config", str(own)])
    assert seen["image_size"] == 448 and seen["pooling"] == "spoc"


def test_subcommand_table_and_flat_keys(tmp_path, seen):
    cfg = tmp_path / "exp.toml"
    cfg.write_text('device = "cuda"\n[fakegroup]\ndevice = "cpu"\n[fakegroup.fit]\ndim = 64\n'
                   '[fake]\npooling = "mac"\n')
    _run(["--config", str(cfg), "fakegroup", "fit"])
    assert seen == {"dim": 64, "device": "cpu"}  # [fakegroup] beats the top level


def test_unknown_key_is_an_error_with_suggestion(tmp_path, seen, capsys):
    cfg = tmp_path / "exp.toml"
    cfg.write_text("[fake]\nimagesize = 448\n")
    with pytest.raises(SystemExit) as exc:
        _run(["--config", str(cfg), "fake"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown key 'imagesize'" in err and "image_size" in err
    # flat keys of a multi-command file that this command lacks are for other commands: fine
    cfg.write_text("dim = 3\n[fake]\nimage_size = 100\n")
    _run(["--config", str(cfg), "fake"])
    assert seen["image_size"] == 100


def test_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[fake\nx = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config_file(bad)
    cmd = click.Command("x", params=[click.Option(["--size"], type=int)])
    with pytest.raises(ConfigError, match="takes one value"):
        command_defaults(cmd, {"size": [1, 2]}, strict=True, where="f")


def test_table_for_merges_levels():
    data = {"device": "cpu", "extract": {"image_size": 300, "device": "cuda"}, "train": {"epochs": 3}}
    keys, strict = table_for(data, ["extract"], {"": {"extract", "train"}})
    assert keys == {"device": "cuda", "image_size": 300} and strict == {"device", "image_size"}
    keys, strict = table_for(data, ["search"], {"": {"extract", "train", "search"}})
    assert keys == {"device": "cpu"} and strict == set()
    keys, strict = table_for({"device": "cpu", "grid": {"dim": [1]}}, ["ablate"], {"": {"ablate"}})
    assert keys == {"device": "cpu", "grid": {"dim": [1]}} and strict == {"device", "grid"}


def test_resolved_config_round_trips(tmp_path, seen):
    cfg = tmp_path / "exp.toml"
    cfg.write_text("[fake]\nimage_size = 448\n")
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    _run(["--config", str(cfg), "fake", "--pooling", "gem:p=4", "--scales", "1", "--scales", "0.5",
          "--out", str(out_dir)])
    first = dict(seen)
    text = (out_dir / "rkit-config.toml").read_text()
    assert 'image_size = 448  # config file' in text
    assert 'pooling = "gem:p=4"  # command line' in text
    assert 'device = "auto"  # default' in text
    parsed = tomllib.loads(text)["fake"]
    assert parsed["scales"] == [1.0, 0.5] and parsed["out"] == str(out_dir)
    # feeding it back reproduces the run exactly
    seen.clear()
    _run(["fake", "--config", str(out_dir / "rkit-config.toml")])
    assert seen == first


def test_every_real_command_gets_config_option():
    ctx = click.Context(cli_module.cli)
    cmd = cli_module.cli.get_command(ctx, "plugins")
    assert any(p.name == "config" for p in cmd.params)


def test_real_plugins_command_reads_config(tmp_path, capsys):
    cfg = tmp_path / "exp.toml"
    cfg.write_text("[plugins]\njson = true\n")
    _run(["--config", str(cfg), "plugins"])
    listing = json.loads(capsys.readouterr().out)
    assert "mac" in {c["name"] for c in listing["pooling"]}


def test_resolved_config_path(tmp_path):
    from retrievalkit.config import resolved_config_path

    assert resolved_config_path(tmp_path) == tmp_path / "rkit-config.toml"
    assert resolved_config_path(tmp_path / "runs" / "db.npz") == tmp_path / "runs" / "db.rkit-config.toml"
    assert resolved_config_path(tmp_path / "x.toml") == tmp_path / "x.toml"
    assert resolved_config_path(tmp_path / "new_run_dir") == tmp_path / "new_run_dir" / "rkit-config.toml"
