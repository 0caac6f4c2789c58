"""The `[cri]` section of the daemon's config."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor import config
from supervisor.errors import InvalidArgument


def test_the_cri_is_on_in_k8s_io_by_default():
    cri = config.load(None).cri
    assert (cri.enabled, cri.namespace, cri.mirrors) == (True, "k8s.io", {})
    assert cri.cni_conf_dir == "/etc/cni/net.d"
    assert cri.cni_plugin_dirs() == ["/opt/cni/bin", "/usr/lib/cni"]  # containerd's, Debian's
    assert cri.cni_cache_dir == "/var/lib/cni"
    assert cri.sandbox_image == "registry.k8s.io/pause:3.6"  # containerd 1.6's


def test_the_single_cni_bin_dir_of_before_is_searched_first(tmp_path: Path):
    path = tmp_path / "c.toml"
    path.write_text('[cri]\ncni_bin_dir = "/usr/lib/cni"\ncni_bin_dirs = ["/a", "/usr/lib/cni"]\n')
    assert config.load(str(path)).cri.cni_plugin_dirs() == ["/usr/lib/cni", "/a"]


def test_the_section_is_read_with_its_mirrors(tmp_path: Path):
    path = tmp_path / "c.toml"
    path.write_text(
        '[cri]\nenabled = false\nnamespace = "kube"\n'
        '[cri.mirrors]\n"registry.k8s.io" = ["http://127.0.0.1:5000"]\n'
    )
    cri = config.load(str(path)).cri
    assert (cri.enabled, cri.namespace) == (False, "kube")
    assert cri.mirrors == {"registry.k8s.io": ["http://127.0.0.1:5000"]}


@pytest.mark.parametrize(
    "text",
    [
        '[cri.mirrors]\n"gcr.io" = "http://127.0.0.1:5000"\n',
        '[cri]\nnamespace = "no spaces"\n',
        '[cri]\nno_such_key = "registry.k8s.io/pause:3.6"\n',
    ],
)
def test_a_wrong_section_is_refused(tmp_path: Path, text: str):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(InvalidArgument):
        config.load(str(path))
