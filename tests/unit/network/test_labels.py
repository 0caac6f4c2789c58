"""The network labels' contract: which aliases a container has on which network."""

from __future__ import annotations

from supervisor.network.labels import NetworkSettings, network_aliases_label


def test_run_aliases_are_scoped_to_the_first_network_as_dockers_network_alias() -> None:
    settings = NetworkSettings.from_labels(
        {"ctrd.io/networks": "front,back", "ctrd.io/network-aliases": "web, www"}
    )

    assert settings.aliases_on("front") == ("web", "www")
    assert settings.aliases_on("back") == ()


def test_aliases_given_at_connect_are_kept_per_network_for_the_next_start() -> None:
    settings = NetworkSettings.from_labels(
        {
            "ctrd.io/networks": "front,back",
            "ctrd.io/network-aliases": "web",
            network_aliases_label("back"): "db,cache",
            network_aliases_label("front"): "web,edge",
        }
    )

    assert settings.aliases_on("back") == ("db", "cache")
    assert settings.aliases_on("front") == ("web", "edge")  # once each, in order
    assert settings.aliases_on("other") == ()


def test_the_label_key_carries_the_network_name() -> None:
    assert network_aliases_label("front") == "ctrd.io/network-aliases.front"
