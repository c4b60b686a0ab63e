"""Start-up and plugin failures: the listing cache, light help, broken plugins, factory errors.

Whether torch was imported is checked in fresh processes (this test process has it already);
the rest runs in-process with fake distributions (``install_fake_plugin`` in conftest.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from retrievalkit import plugin_cache
from retrievalkit.cli import COMMANDS, main
from retrievalkit.errors import ComponentOptionError, PluginError, UnknownComponentError
from retrievalkit.plugins import PluginHost, PluginWarning

REPO = Path(__file__).resolve().parents[1]

#: Runs ``main(argv)`` for each argv in a fresh interpreter; prints exit codes and whether torch
#: (or a fake plugin module) got imported.
PROBE = """
import json, sys
from retrievalkit.cli import main
codes = []
for argv in json.loads(sys.argv[1]):
    try:
        main(argv)
        codes.append(0)
    except SystemExit as exc:
        codes.append(exc.code)
print("PROBE" + json.dumps({"codes": codes, "torch": "torch" in sys.modules,
                             "modules": sorted(m for m in sys.modules if m.startswith("fake_"))}))
"""

COUNTED_POOLING = """
    import builtins
    from retrievalkit import Component, hookimpl

    builtins.rkit_test_imports = getattr(builtins, "rkit_test_imports", 0) + 1

    def build(k: int = 3):
        if k % 2 == 0:
            raise ValueError(f"k must be odd, got {k}")
        return ("odd-pooling", k)

    @hookimpl
    def rkit_poolings():
        return [Component("odd", build, "a pooling that wants an odd k")]
"""


def probe(argvs: list[list[str]], env: dict[str, str]) -> tuple[dict, str]:
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argvs)], capture_output=True, text=True,
                          env=env, cwd=env.get("PROBE_CWD", str(REPO)), timeout=300)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("PROBE")), None)
    assert line is not None, done.stdout + done.stderr
    return json.loads(line[len("PROBE"):]), done.stderr


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    """RKIT_CACHE in a temporary folder, for this process and for subprocesses."""
    monkeypatch.setenv("RKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RKIT_BLOCK_PLUGINS", raising=False)
    monkeypatch.delenv(plugin_cache.NO_CACHE_ENV_VAR, raising=False)
    yield {**os.environ, "PROBE_CWD": str(tmp_path)}
    for name in [m for m in sys.modules if m.startswith("fake_")]:
        del sys.modules[name]


#: Built-in plugins that import torch / torchvision: blocked where a test needs none of them,
#: so that a fresh process that imports every plugin stays quick.
TORCH_PLUGINS = "backbones.torchvision,backbones.efficientnet_lite,poolings.mac,poolings.spoc,poolings.gem," \
                "losses.contrastive,losses.triplet"


def _with_path(env: dict[str, str], site: Path) -> dict[str, str]:
    return {**env, "PYTHONPATH": os.pathsep.join([str(site), env.get("PYTHONPATH", "")])}


# -- no torch for help, listings and option errors --------------------------------------------

def test_help_of_every_command_and_import_need_no_torch(cache_env):
    argvs = [["--help"]] + [[name, "--help"] for name in COMMANDS] + [["whiten", "fit", "--help"]]
    result, err = probe(argvs, cache_env)
    assert result["codes"] == [0] * len(argvs), err
    assert result["torch"] is False
    done = subprocess.run([sys.executable, "-c", "import sys, retrievalkit; print('torch' in sys.modules)"],
                          capture_output=True, text=True, env=cache_env, timeout=60)
    assert done.stdout.strip() == "False"


def test_listing_and_option_errors_come_from_the_cache_without_torch(cache_env, tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    cache_env = {**cache_env, "RKIT_BLOCK_PLUGINS": "backbones.torchvision"}  # the slowest to import
    cold, _ = probe([["plugins"]], cache_env)
    assert cold == {"codes": [0], "torch": True, "modules": []}  # a miss imports every plugin
    assert list((tmp_path / "cache" / "plugins").glob("listing-*.json"))
    argvs = [["plugins"], ["plugins", "--options", "--json"],
             ["extract", str(images), "--pooling", "bogus"],
             ["extract", str(images), "--pooling", "gem:p=abc"],
             ["eval", str(images), "--backbone", "efficientnet-lite0:depth=3"]]
    warm, err = probe(argvs, cache_env)
    assert warm["codes"] == [0, 0, 2, 2, 2] and warm["torch"] is False, err
    assert "unknown pooling 'bogus'" in err and "Available poolings:" in err
    assert "option 'p' of 'gem' must be a value of type float" in err
    assert "'efficientnet-lite0' has no option 'depth'" in err


def test_a_changed_plugin_file_is_a_cache_miss(install_fake_plugin, cache_env, monkeypatch):
    monkeypatch.setenv("RKIT_BLOCK_PLUGINS", TORCH_PLUGINS)
    site = install_fake_plugin("rkit-odd", "odd-pooling", "fake_odd", COUNTED_POOLING)
    host = PluginHost()
    assert host.get("pooling", "odd").summary == "a pooling that wants an odd k"
    assert plugin_cache.read_listing(host._key) is not None  # written after a full, valid load
    source = site / "fake_odd.py"
    source.write_text(source.read_text().replace("an odd k", "an odd k, changed"))
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
    changed_key = plugin_cache.listing_key(entry_points(group="retrievalkit"), TORCH_PLUGINS.split(","))
    assert changed_key != host._key and plugin_cache.read_listing(changed_key) is None


def test_a_cached_listing_imports_only_the_plugin_that_is_built(install_fake_plugin, cache_env):
    import builtins

    install_fake_plugin("rkit-odd", "odd-pooling", "fake_odd", COUNTED_POOLING)
    PluginHost().all_components()  # cold: imports it, writes the listing
    sys.modules.pop("fake_odd", None)
    builtins.rkit_test_imports = 0
    host = PluginHost()
    assert host.get("pooling", "odd").options["k"].default == 3
    assert host.check("pooling", "odd:k=5") == {"k": 5}
    with pytest.raises(ComponentOptionError, match="must be a value of type int"):
        host.check("pooling", "odd:k=x")
    assert builtins.rkit_test_imports == 0
    assert host.build("pooling", "odd:k=5") == ("odd-pooling", 5)
    assert builtins.rkit_test_imports == 1


# -- one-line errors for a factory's own ValueError ---------------------------------------------

def test_factory_value_error_becomes_component_option_error(install_fake_plugin, cache_env):
    install_fake_plugin("rkit-odd", "odd-pooling", "fake_odd", COUNTED_POOLING)
    with pytest.raises(ComponentOptionError) as info:
        PluginHost().build("pooling", "odd:k=4")
    message = str(info.value)
    assert "pooling 'odd'" in message and "k=4" in message and "k must be odd, got 4" in message
    assert "\n" not in message


# -- broken plugins --------------------------------------------------------------------------

BROKEN_IMPORT = """
    import retrievalkit_missing_dependency_xyz
"""
RAISING_HOOK = """
    from retrievalkit import hookimpl

    @hookimpl
    def rkit_poolings():
        raise RuntimeError("cannot find my model files")
"""


def test_a_plugin_that_fails_to_import_is_a_warning_and_the_rest_works(install_fake_plugin, cache_env):
    install_fake_plugin("rkit-broken", "broken-plugin", "fake_broken", BROKEN_IMPORT)
    with pytest.warns(PluginWarning, match=r"'broken-plugin'.*RKIT_BLOCK_PLUGINS=broken-plugin"):
        host = PluginHost()
    assert host.failures["broken-plugin"].startswith("ModuleNotFoundError")
    assert host.get("pooling", "mac").plugin == "poolings.mac"
    assert host.build("pooling", "mac") is not None
    with pytest.raises(UnknownComponentError) as info:
        host.get("pooling", "ghost")
    assert "'broken-plugin' failed to import" in str(info.value)
    assert "RKIT_BLOCK_PLUGINS=broken-plugin" in str(info.value)
    assert plugin_cache.read_listing(host._key) is None  # never cached: reported on every run


def test_rkit_with_a_broken_plugin_warns_names_it_and_runs(install_fake_plugin, cache_env):
    site = install_fake_plugin("rkit-broken", "broken-plugin", "fake_broken", BROKEN_IMPORT)
    env = {**_with_path(cache_env, site), "RKIT_BLOCK_PLUGINS": TORCH_PLUGINS}
    result, err = probe([["plugins"]], env)
    assert result["codes"] == [0]
    assert "Warning: plugin 'broken-plugin' (from rkit-broken) failed to import" in err
    assert "RKIT_BLOCK_PLUGINS=broken-plugin" in err
    result, err = probe([["plugins"]], {**env, "RKIT_BLOCK_PLUGINS": f"{TORCH_PLUGINS},broken-plugin"})
    assert result["codes"] == [0] and "Warning" not in err


def test_rkit_extract_runs_beside_a_broken_plugin(install_fake_plugin, cache_env, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from retrievalkit.descriptors import DescriptorSet

    install_fake_plugin("rkit-broken", "broken-plugin", "fake_broken", BROKEN_IMPORT)
    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(images / name)
    out = tmp_path / "d.npz"
    with pytest.warns(PluginWarning, match="RKIT_BLOCK_PLUGINS=broken-plugin"):
        try:
            main(["extract", str(images), "--pooling", "mac", "--weights", "none", "--image-size", "48",
                  "--workers", "0", "--device", "cpu", "--no-progress", "--out", str(out)])
        except SystemExit as exit_:
            pytest.fail(f"rkit extract exited with {exit_.code}: {capsys.readouterr().err}")
    assert DescriptorSet.load(out).paths == ["a.png", "b.png"]


def test_a_hook_that_raises_is_an_error_naming_the_plugin(install_fake_plugin, cache_env, capsys):
    install_fake_plugin("rkit-raiser", "raising-plugin", "fake_raiser", RAISING_HOOK)
    with pytest.raises(PluginError) as info:
        PluginHost().all_components()
    message = str(info.value)
    assert "'raising-plugin'" in message and "rkit_poolings() raised RuntimeError" in message
    assert "cannot find my model files" in message and "RKIT_BLOCK_PLUGINS=raising-plugin" in message
    with pytest.raises(SystemExit) as exit_info:
        main(["plugins"])
    assert exit_info.value.code == 2
    assert "Error: plugin 'raising-plugin'" in capsys.readouterr().err


def test_unknown_name_in_block_list_is_a_warning(cache_env, monkeypatch, fresh_host):
    monkeypatch.setenv("RKIT_BLOCK_PLUGINS", "poolings.spoc,no-such-plugin")
    with pytest.warns(PluginWarning, match="'no-such-plugin', which no installed plugin is called"):
        host = PluginHost()
    assert "spoc" not in host.names("pooling") and "mac" in host.names("pooling")


def test_listing_cache_can_be_switched_off(cache_env, monkeypatch):
    monkeypatch.setenv(plugin_cache.NO_CACHE_ENV_VAR, "1")
    host = PluginHost()
    assert host._key is None and "mac" in host.names("pooling")
    assert not (Path(os.environ["RKIT_CACHE"]) / "plugins").exists()


def test_cache_file_is_replaced_not_appended_forever(cache_env):
    for n in range(6):
        plugin_cache.write_listing({"n": n}, {"pooling": []})
    stored = json.loads(plugin_cache.cache_path().read_text())
    assert [entry["key"]["n"] for entry in stored["entries"]] == [5, 4, 3, 2]
    assert plugin_cache.read_listing({"n": 1}) is None and plugin_cache.read_listing({"n": 4}) == {"pooling": []}
    plugin_cache.cache_path().write_text("{not json")
    assert plugin_cache.read_listing({"n": 5}) is None


def test_every_kind_has_its_hook_specification():
    from retrievalkit import hookspecs
    from retrievalkit.components import KINDS

    for kind in KINDS:
        assert callable(getattr(hookspecs, hookspecs.HOOK_FOR_KIND[kind]))


def test_a_command_whose_dependency_is_missing_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from retrievalkit import cli as cli_package

    (tmp_path / "fake_cmd_module.py").write_text("import retrievalkit_missing_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli_package.COMMANDS, "broken", ("fake_cmd_module", "command", "A broken command."))
    with pytest.raises(SystemExit) as info:
        main(["broken", "--help"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "`rkit broken` cannot start: ModuleNotFoundError" in err and "retrievalkit_missing_dependency_xyz" in err
    sys.modules.pop("fake_cmd_module", None)


def test_the_cached_listing_equals_the_one_read_from_the_plugins(cache_env):
    loaded = PluginHost(use_cache=False).all_components()
    PluginHost().all_components()  # writes the listing
    cached_host = PluginHost()
    assert cached_host._cached is not None
    cached = cached_host.all_components()
    for kind, components in loaded.items():
        assert sorted(cached[kind]) == sorted(components)
        for name, rc in components.items():
            twin = cached[kind][name]
            assert (twin.summary, twin.reference, twin.plugin, twin.distribution, twin.version) == \
                (rc.summary, rc.reference, rc.plugin, rc.distribution, rc.version)
            assert {o.name: (o.type, o.required, o.describe()) for o in twin.options.values()} == \
                {o.name: (o.type, o.required, o.describe()) for o in rc.options.values()}
