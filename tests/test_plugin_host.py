"""The plugin host: entry-point discovery, hook validation, name clashes, blocking, lookups."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from retrievalkit.cli import cli
from retrievalkit.errors import PluginError, UnknownComponentError
from retrievalkit.plugins import PluginHost, PluginWarning

EXTRA_POOLING = """
    import torch
    from retrievalkit import Component, hookimpl

    class MeanPooling(torch.nn.Module):
        def forward(self, x):
            return x.clamp(min=0).mean(dim=(-2, -1))

    @hookimpl
    def rkit_poolings():
        return [Component("{name}", MeanPooling, "average of each rectified channel")]
"""


def test_builtins_come_through_the_entry_point_group():
    host = PluginHost()
    mac = host.get("pooling", "mac")
    assert mac.plugin == "poolings.mac"
    assert mac.distribution == "retrievalkit"
    assert mac.version
    assert "poolings.mac" in host.plugin_names()


def test_third_party_distribution_is_found(install_fake_plugin):
    install_fake_plugin("rkit-mean", "mean-pooling", "rkit_mean_mod", EXTRA_POOLING.format(name="mean"))
    host = PluginHost()
    registered = host.get("pooling", "mean")
    assert (registered.plugin, registered.distribution, registered.version) == ("mean-pooling", "rkit-mean", "0.1")
    import torch

    pooled = host.build("pooling", "mean")(torch.ones(1, 2, 3, 3) * torch.tensor([1.0, -1.0]).view(1, 2, 1, 1))
    assert pooled.tolist() == [[1.0, 0.0]]


def test_hook_implementation_matching_no_spec_is_an_error(install_fake_plugin):
    install_fake_plugin("rkit-typo", "typo", "rkit_typo_mod", """
        from retrievalkit import hookimpl

        @hookimpl
        def rkit_pooling():  # missing the final s
            return []
    """)
    with pytest.raises(PluginError) as info:
        PluginHost()
    message = str(info.value)
    assert "typo" in message and "rkit_pooling" in message and "rkit_poolings" in message


def test_duplicate_name_names_both_plugins(install_fake_plugin):
    install_fake_plugin("rkit-clash", "my-mac", "rkit_clash_mod", EXTRA_POOLING.format(name="mac"))
    host = PluginHost()
    with pytest.raises(PluginError) as info:
        host.get("pooling", "mac")
    message = str(info.value)
    assert "poolings.mac" in message and "my-mac" in message and "rkit-clash" in message


def test_block_list_from_environment(install_fake_plugin, monkeypatch):
    install_fake_plugin("rkit-clash", "my-mac", "rkit_clash_mod", EXTRA_POOLING.format(name="mac"))
    monkeypatch.setenv("RKIT_BLOCK_PLUGINS", "my-mac, unrelated")
    with pytest.warns(PluginWarning, match="'unrelated', which no installed plugin is called"):
        host = PluginHost()
    assert host.get("pooling", "mac").plugin == "poolings.mac"
    monkeypatch.setenv("RKIT_BLOCK_PLUGINS", "poolings.mac")
    assert "mac" in PluginHost().names("pooling")  # now only the third-party one offers it
    assert PluginHost().get("pooling", "mac").plugin == "my-mac"


def test_unknown_component_lists_available_and_suggests():
    host = PluginHost()
    with pytest.raises(UnknownComponentError) as info:
        host.get("pooling", "mca")
    message = str(info.value)
    assert "'mac'" in message and "Available poolings:" in message


def test_register_directly_is_validated():
    host = PluginHost(load_entry_points=False)

    class Bad:
        from retrievalkit import hookimpl

        @hookimpl
        def rkit_whitening(self):  # typo
            return []

    with pytest.raises(PluginError):
        host.register(Bad(), name="bad")


def test_rkit_plugins_command_lists_components_and_sources(fresh_host):
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0, result.output
    assert "poolings" in result.output and "mac" in result.output
    assert "poolings.mac from retrievalkit" in result.output
    data = json.loads(CliRunner().invoke(cli, ["plugins", "--json"]).output)
    mac = next(c for c in data["pooling"] if c["name"] == "mac")
    assert mac["distribution"] == "retrievalkit"
