"""ctl.volopts: `-v`, `--mount`, `--tmpfs` and `--volumes-from` read as Docker Engine 20.10 reads
them (the words checked against dockerd 20.10 on ctrd), and what they become: the
`ctrd.io/volumes` label, spec mounts, inspect's mount points."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable

import pytest

from ctl import volopts
from ctl.volopts import BindMount, MountError, TmpfsMount, VolumeMount

BAD_NAME = (
    'create {0}: "{0}" includes invalid characters for a local volume name, only'
    ' "[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you intended to pass a host directory, use'
    " absolute path"
)


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        ("/data", VolumeMount("/data", anonymous=True)),
        ("/data/", VolumeMount("/data", anonymous=True)),
        ("vol:/data", VolumeMount("/data", "vol", mode="z")),
        ("vol:/data:ro", VolumeMount("/data", "vol", readonly=True, mode="ro")),
        ("vol:/data:rw,nocopy", VolumeMount("/data", "vol", nocopy=True, mode="rw,nocopy")),
        ("vol:/data:ro,nocopy,z", VolumeMount("/data", "vol", readonly=True, nocopy=True,
                                              mode="ro,nocopy,z")),
        ("my_vol.2-x:/a/../b", VolumeMount("/b", "my_vol.2-x", mode="z")),
        ("/host:/in", BindMount("/host", "/in", make_source=True)),
        ("/host/./x/:/in:ro", BindMount("/host/x", "/in", True, mode="ro", make_source=True)),
        ("/host:/in:rshared,rw", BindMount("/host", "/in", False, "rshared", "rshared,rw",
                                           make_source=True)),
        ("/host:/in:Z,cached", BindMount("/host", "/in", mode="Z,cached", make_source=True)),
    ],
)  # fmt: skip
def test_volume_flag_forms(raw, parsed):
    assert volopts.parse_volume(raw) == parsed


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ("a/b:/x", BAD_NAME.format("a/b")),
        ("../x:/y", BAD_NAME.format("../x")),
        ("..:/y", BAD_NAME.format("..")),
        ("x:/y", "create x: volume name is too short, names should be at least two alphanumeric"
                 " characters"),
        ("vol:rel", "invalid volume specification: 'vol:rel': invalid mount config for type"
                    " \"volume\": invalid mount path: 'rel' mount path must be absolute"),
        ("/host:rel", "invalid volume specification: '/host:rel': invalid mount config for type"
                      " \"bind\": invalid mount path: 'rel' mount path must be absolute"),
        ("vol:/", "invalid volume specification: 'vol:/': invalid mount config for type"
                  " \"volume\": invalid specification: destination can't be '/'"),
        ("/", "invalid volume specification: '/': invalid mount config for type \"volume\":"
              " invalid specification: destination can't be '/'"),
        ("rel", "invalid volume specification: 'rel': invalid mount config for type \"volume\":"
                " invalid mount path: 'rel' mount path must be absolute"),
        ("/data:ro", "invalid volume specification: '/data:ro'"),
        ("vol:", "invalid volume specification: 'vol:'"),
        ("", "invalid volume specification: ''"),
        (":/x", "invalid volume specification: ':/x'"),
        ("/a:/b:/c:/d", "invalid volume specification: '/a:/b:/c:/d'"),
        ("vol:/x:bogus", "invalid mode: bogus"),
        ("vol:/x:ro,rw", "invalid mode: ro,rw"),
        ("vol:/x:z,Z", "invalid mode: z,Z"),
        ("vol:/x:ro,rprivate", "invalid volume specification: 'vol:/x:ro,rprivate': invalid"
                               " mount config for type \"volume\": field BindOptions must not be"
                               " specified"),
        ("/h:/x:nocopy", "invalid volume specification: '/h:/x:nocopy': invalid mount config"
                         " for type \"bind\": field VolumeOptions must not be specified"),
    ],
)  # fmt: skip
def test_volume_flag_errors_are_dockers(raw, error):
    with pytest.raises(MountError) as refused:
        volopts.parse_volume(raw)
    assert str(refused.value) == error


def test_mount_flag_forms_and_their_keys_and_aliases(tmp_path):
    assert volopts.parse_mount("type=volume,source=v1,target=/v") == VolumeMount(
        "/v", "v1", mode="z"
    )
    assert volopts.parse_mount("src=v1,dst=/v,ro") == VolumeMount("/v", "v1", readonly=True,
                                                                  mode="z")  # fmt: skip
    assert volopts.parse_mount("destination=/v") == VolumeMount("/v", anonymous=True, mode="z")
    assert volopts.parse_mount(
        "src=v1,dst=/v,volume-nocopy,volume-opt=type=tmpfs,volume-opt=o=size=1m,"
        "volume-label=a=b,volume-driver=local,readonly=false"
    ) == VolumeMount(
        "/v", "v1", nocopy=True, mode="z", driver_opts={"type": "tmpfs", "o": "size=1m"},
        labels={"a": "b"},
    )  # fmt: skip
    assert volopts.parse_mount("type=volume,src=v1,dst=/v,volume-nocopy=true").nocopy
    assert volopts.parse_mount(f"type=bind,src={tmp_path},dst=/b") == BindMount(str(tmp_path), "/b")
    assert volopts.parse_mount(
        f"TYPE=BIND,SRC={tmp_path},DST=/b,RO=1,BIND-PROPAGATION=RSHARED,bind-nonrecursive"
    ) == BindMount(str(tmp_path), "/b", True, "rshared", recursive=False)
    assert volopts.parse_mount("type=tmpfs,dst=/t,tmpfs-size=1m,tmpfs-mode=1777") == TmpfsMount(
        "/t", ("noexec", "nosuid", "nodev", "rprivate", "mode=1777", "size=1m"), shown=True
    )
    assert volopts.parse_mount("type=tmpfs,dst=/t,tmpfs-size=1.5k,readonly").options == (
        "noexec", "nosuid", "nodev", "rprivate", "ro", "size=1536",
    )  # fmt: skip
    assert volopts.parse_mount('"type=tmpfs","dst=/t,x"').target == "/t,x"  # CSV quoting


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("type=tmpfs,dst=/t,tmpfs-size=abc", "invalid value for tmpfs-size: abc"),
        ("type=tmpfs,dst=/t,tmpfs-size=-5", "invalid value for tmpfs-size: -5"),
        ("type=tmpfs,dst=/t,tmpfs-mode=99", "invalid value for tmpfs-mode: 99"),
        ("dst=/x,bogus=1", "unexpected key 'bogus' in 'bogus=1'"),
        ("src=x", "target is required"),
        ("type=,dst=/x", "type is required"),
        ("dst=/x,nocopy", "invalid field 'nocopy' must be a key=value pair"),
        ("type=volume,src=vv,dst=/x,readonly=maybe", "invalid value for readonly: maybe"),
        ("type=volume,dst=/x,volume-nocopy=yes", "invalid value for volume-nocopy: yes"),
        ("type=volume,dst=/x,bind-propagation=rshared",
         "cannot mix 'bind-*' options with mount type 'volume'"),
        ("type=bind,src=/tmp,dst=/x,volume-nocopy",
         "cannot mix 'volume-*' options with mount type 'bind'"),
        ("type=volume,dst=/x,tmpfs-size=1m",
         "cannot mix 'tmpfs-*' options with mount type 'volume'"),
    ],
)  # fmt: skip
def test_mount_flag_errors_of_the_cli(value, error):
    with pytest.raises(MountError) as refused:
        volopts.parse_mount(value)
    assert str(refused.value) == f'invalid argument "{value}" for "--mount" flag: {error}'


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("type=tmpfs,dst=rel", 'invalid mount config for type "tmpfs": invalid mount path: \'rel\''
                               " mount path must be absolute"),
        ("type=tmpfs,dst=/", 'invalid mount config for type "tmpfs": invalid specification:'
                             " destination can't be '/'"),
        ("type=tmpfs,src=x,dst=/t", 'invalid mount config for type "tmpfs": field Source must'
                                    " not be specified"),
        ("type=bind,src=/nonexistent-h2,dst=/x", 'invalid mount config for type "bind": bind'
                                                 " source path does not exist: /nonexistent-h2"),
        ("type=bind,dst=/x", 'invalid mount config for type "bind": field Source must not be'
                             " empty"),
        ("type=bind,src=rel,dst=/x", 'invalid mount config for type "bind": invalid mount path:'
                                     " 'rel' mount path must be absolute"),
        ("type=bind,src=/tmp,dst=/x,bind-propagation=bogus", 'invalid mount config for type'
                                                            ' "bind": invalid propagation mode:'
                                                            " bogus"),
        ("type=volume,src=a/b,dst=/x", BAD_NAME.format("a/b")),
        ("type=volume,src=..,dst=/x", BAD_NAME.format("..")),
        ("type=foo,dst=/x", 'invalid mount config for type "foo": mount type unknown'),
        ("type=volume,dst=/x,ro", 'invalid mount config for type "volume": must not set'
                                  " ReadOnly mode when using anonymous volumes"),
        ("src=v1,dst=/x,volume-driver=nfs", 'create v1: plugin "nfs" not found'),
    ],
)  # fmt: skip
def test_mount_flag_errors_of_the_daemon(value, error):
    with pytest.raises(MountError) as refused:
        volopts.parse_mount(value)
    assert str(refused.value) == error


@pytest.mark.parametrize(
    ("raw", "options", "readonly"),
    [
        ("/t", ("noexec", "nosuid", "nodev", "rprivate"), False),
        ("/t:size=64k", ("noexec", "nosuid", "nodev", "rprivate", "size=64k"), False),
        ("/t:rw,exec,size=1g,mode=1777,size=2g", ("nosuid", "nodev", "rprivate", "rw", "exec",
                                                 "mode=1777", "size=2g"), False),
        ("/t:ro,shared,uid=1000,nr_inodes=10k,size=50%", ("noexec", "nosuid", "nodev", "ro",
                                                          "shared", "uid=1000", "nr_inodes=10k",
                                                          "size=50%"), True),
    ],
)  # fmt: skip
def test_tmpfs_options_merge_with_dockers_defaults(raw, options, readonly):
    assert volopts.parse_tmpfs(raw) == TmpfsMount("/t", options, readonly)


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ("/t:size=abc", 'invalid tmpfs option ["size" "abc"]'),
        ("/t:size=-1", 'invalid tmpfs option ["size" "-1"]'),
        ("/t:size=1.5m", 'invalid tmpfs option ["size" "1.5m"]'),
        ("/t:size=", 'invalid tmpfs option ["size" ""]'),
        ("/t:mode=999", 'invalid tmpfs option ["mode" "999"]'),
        ("/t:uid=root", 'invalid tmpfs option ["uid" "root"]'),
        ("/t:foo=bar", 'invalid tmpfs option ["foo" "bar"]'),
        ("/t:foo", 'invalid tmpfs option ["foo"]'),
        ("rel", "invalid mount path: 'rel' mount path must be absolute"),
        ("/:size=1m", "invalid specification: destination can't be '/'"),
    ],
)  # fmt: skip
def test_tmpfs_errors(raw, error):
    with pytest.raises(MountError) as refused:
        volopts.parse_tmpfs(raw)
    assert str(refused.value) == error


def test_volumes_from_specs():
    assert volopts.parse_volumes_from("c1") == ("c1", "rw")
    assert volopts.parse_volumes_from("c1:ro") == ("c1", "ro")
    for spec, error in [
        ("", "volumes-from specification cannot be an empty string"),
        ("c1:bogus", "invalid mode: bogus"),
        ("c1:nocopy", "invalid mode: nocopy"),
        ("c1:ro,rshared", "invalid mode: ro,rshared"),
    ]:
        with pytest.raises(MountError) as refused:
            volopts.parse_volumes_from(spec)
        assert str(refused.value) == error


@pytest.mark.parametrize(
    ("volumes", "mounts", "tmpfs"),
    [
        (["v1:/x", "v2:/x"], [], []),
        (["v1:/x", "/h:/x/"], [], []),
        (["v1:/x"], [], ["/x"]),
        (["v1:/x"], ["type=volume,dst=/x"], []),
        ([], ["type=volume,dst=/x", "type=tmpfs,dst=/x"], []),
        ([], ["type=tmpfs,dst=/x"], ["/x:size=1m"]),
    ],
)
def test_two_mounts_on_one_path_are_refused(volumes, mounts, tmpfs):
    with pytest.raises(MountError, match=r"^Duplicate mount point: /x$"):
        volopts.parse(volumes, mounts, tmpfs)


def test_an_anonymous_volume_gives_way_to_a_mount_on_its_path():
    storage = volopts.parse(["/x", "/x", "named:/x", "/y"], [], ["/z"])
    assert [(v.name, v.target) for v in storage.volumes] == [("named", "/x"), ("", "/y")]


def test_an_error_in_a_later_flag_refuses_the_whole_command_line():
    with pytest.raises(MountError, match="create x: volume name is too short"):
        volopts.parse(["/a", "good:/b"], ["type=volume,src=x,dst=/c"])


def names() -> Callable[[], str]:
    counter = itertools.count()
    return lambda: f"anon{next(counter)}"


def test_image_volumes_are_anonymous_unless_a_mount_covers_them(tmp_path):
    storage = volopts.parse(
        ["/cli-anon", "named:/data"], [f"type=bind,src={tmp_path},dst=/etc/conf"], ["/cache/"]
    )
    image = {"Volumes": {"/data": {}, "/var/lib/db/": {}, "/etc/conf": {}, "/cache": {},
                         "/cli-anon": {}}}  # fmt: skip
    done = volopts.complete(storage, image, names())
    assert [(v.name, v.target, v.anonymous) for v in done.volumes] == [
        ("anon0", "/var/lib/db", True),
        ("named", "/data", False),
        ("anon1", "/cli-anon", True),
    ]
    assert json.loads(volopts.labels(done)[volopts.VOLUMES_LABEL]) == [
        {"name": "anon0", "target": "/var/lib/db", "readonly": False, "nocopy": False},
        {"name": "named", "target": "/data", "readonly": False, "nocopy": False},
        {"name": "anon1", "target": "/cli-anon", "readonly": False, "nocopy": False},
    ]


def test_random_anonymous_names_are_64_hex_digits():
    done = volopts.complete(volopts.parse(["/a", "/b"]), {})
    first, second = (v.name for v in done.volumes)
    assert first != second
    assert len(first) == 64
    assert int(first, 16) >= 0


def test_volumes_from_brings_volumes_binds_and_tmpfs_read_only_when_asked():
    source = volopts.complete(
        volopts.parse(["/anon", "data:/data:ro", "/srv:/srv"], ["type=tmpfs,dst=/t"]), {},
        names(),
    )  # fmt: skip
    points = volopts.mount_points(source)
    spec = volopts.spec_mounts(source)
    brought = volopts.inherit(points, spec, "rw")
    assert brought == [
        VolumeMount("/data", "data", readonly=True, nocopy=True),
        VolumeMount("/anon", "anon0", nocopy=True),
        BindMount("/srv", "/srv"),
        TmpfsMount("/t", ("noexec", "nosuid", "nodev", "rprivate"), False, True),
    ]
    read_only = volopts.inherit(points, spec, "ro")
    assert all(m.readonly for m in read_only)
    storage = volopts.parse(["mine:/data"], volumes_from=["src:ro"])
    storage = volopts.complete(storage._replace(inherited=tuple(read_only)), {}, names())
    assert [(v.name, v.target, v.readonly) for v in storage.volumes] == [
        ("anon0", "/anon", True),
        ("mine", "/data", False),  # the flag's own mount wins over the inherited one
    ]
    assert [m["destination"] for m in volopts.spec_mounts(storage)] == ["/srv", "/t"]


def test_spec_mounts_binds_then_tmpfs_shallow_paths_first(tmp_path):
    storage = volopts.parse(
        ["/h1:/a/b/c:ro", "/h2:/z"], [f"type=bind,src={tmp_path},dst=/a,bind-propagation=slave"],
        ["/a/b:size=1m"],
    )  # fmt: skip
    assert volopts.spec_mounts(storage) == [
        {"destination": "/z", "type": "bind", "source": "/h2",
         "options": ["rbind", "rw", "rprivate"]},
        {"destination": "/a", "type": "bind", "source": str(tmp_path),
         "options": ["rbind", "rw", "slave"]},
        {"destination": "/a/b", "type": "tmpfs", "source": "tmpfs",
         "options": ["noexec", "nosuid", "nodev", "rprivate", "size=1m"]},
        {"destination": "/a/b/c", "type": "bind", "source": "/h1",
         "options": ["rbind", "ro", "rprivate"]},
    ]  # fmt: skip


def test_inspect_data_kept_in_ctrctls_label():
    storage = volopts.complete(
        volopts.parse(
            ["/anon", "auto1:/auto:ro,nocopy", "/tmp:/host:ro"],
            ["type=tmpfs,dst=/tt,tmpfs-size=1m,tmpfs-mode=1777", "src=v2,dst=/v2,volume-nocopy"],
            ["/t2:size=64k"],
            ["other:ro"],
        ),
        {}, names(),
    )  # fmt: skip
    labels = volopts.labels(storage)
    kept = volopts.kept(labels)
    assert kept["Binds"] == ["auto1:/auto:ro,nocopy", "/tmp:/host:ro"]
    assert kept["Mounts"] == [
        {"Type": "tmpfs", "Target": "/tt", "TmpfsOptions": {"SizeBytes": 1048576, "Mode": 1023}},
        {"Type": "volume", "Source": "v2", "Target": "/v2",
         "VolumeOptions": {"NoCopy": True, "DriverConfig": {}}},
    ]  # fmt: skip
    assert kept["Tmpfs"] == {"/t2": "size=64k"}
    assert kept["VolumesFrom"] == ["other:ro"]
    shown = {p["Destination"]: p for p in volopts.points_of(labels)}
    assert shown["/auto"] == {"Type": "volume", "Name": "auto1", "Destination": "/auto",
                              "Driver": "local", "Mode": "ro,nocopy", "RW": False,
                              "Propagation": ""}  # fmt: skip
    assert (shown["/anon"]["Mode"], shown["/v2"]["Mode"]) == ("", "z")
    assert shown["/host"] == {"Type": "bind", "Source": "/tmp", "Destination": "/host",
                              "Mode": "ro", "RW": False, "Propagation": "rprivate"}  # fmt: skip
    assert shown["/tt"]["Type"] == "tmpfs"
    assert "/t2" not in shown  # --tmpfs is no mount point in docker's Mounts


def test_a_container_made_with_the_label_alone_shows_its_volumes():
    labels = {volopts.VOLUMES_LABEL: '[{"name": "v", "target": "/v", "readonly": true}]'}
    assert volopts.points_of(labels) == [
        {"Type": "volume", "Name": "v", "Destination": "/v", "Driver": "local", "Mode": "",
         "RW": False, "Propagation": ""}
    ]  # fmt: skip
    assert volopts.points_of({volopts.VOLUMES_LABEL: "not json"}) == []
    assert volopts.labels(volopts.parse()) == {}


def test_ram_in_bytes_as_go_units():
    assert volopts.ram_in_bytes("1m") == 1 << 20
    assert volopts.ram_in_bytes("1.5KiB") == 1536
    assert volopts.ram_in_bytes("2 GB") == 2 << 30
    assert volopts.ram_in_bytes("12") == 12
    for bad in ("abc", "-5", "1.2.3k", "1x", ""):
        assert volopts.ram_in_bytes(bad) is None


def test_the_label_names_are_the_daemons():
    from supervisor.volumes import labels

    assert (volopts.VOLUMES_LABEL, volopts.ANONYMOUS_LABEL) == (
        labels.VOLUMES_LABEL, labels.ANONYMOUS_LABEL,
    )  # fmt: skip
    assert not volopts.Storage()
    assert volopts.parse(volumes_from=["c"])
