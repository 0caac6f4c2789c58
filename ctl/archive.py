"""`ctrctl load` and `ctrctl save`: images to and from archives, as docker's commands.

This module only declares the commands (ctrctl imports it at every start, so it holds nothing
but argparse); `ctl.load` and `ctl.save` do the work when one of them runs.

The archives are those docker and containerd exchange: an OCI image layout (`oci-layout`,
`index.json`, `blobs/sha256/...`), a `docker save` archive (`manifest.json` naming each
image's config, tags and layer files), or both at once as Docker 25+ writes them, which is
what `ctrctl save` writes. `ctrctl load` also takes them gzip-compressed.
"""

from __future__ import annotations

from typing import Any


def add_parsers(commands: Any) -> None:
    load = commands.add_parser(
        "load",
        help="load images from an archive (OCI layout or docker save; tar or tar.gz)",
        description=(
            "Load the images of an archive into ctrd and unpack them for overlayfs:"
            " an OCI image layout (as `ctr images export` and `docker save` write it) or a"
            " `docker save` archive, plain or gzip-compressed. Images are named after the"
            " archive's io.containerd.image.name or org.opencontainers.image.ref.name"
            " annotations, or its RepoTags, normalized as docker does (busybox ->"
            " docker.io/library/busybox:latest); an image the archive does not name is named"
            " after its image ID (sha256:<config digest>), which is what is printed."
        ),
    )
    load.add_argument("-i", "--input", metavar="FILE", help="read from FILE, not stdin")
    load.add_argument(
        "--platform",
        help="os/arch[/variant] to unpack from multi-platform images (default: this machine's)",
    )
    load.add_argument(
        "-q", "--quiet", action="store_true", help="accepted as docker's (load shows no progress)"
    )
    load.set_defaults(handler="ctl.load:run+client")

    save = commands.add_parser(
        "save",
        help="save images to an archive (OCI layout and docker save in one, as Docker 25+)",
        description=(
            "Write the images, with all their content, to one tar archive that is both an OCI"
            " image layout and a `docker save` archive: `ctrctl load`, `ctr images import` and"
            " `docker load` all take it. Written to stdout unless -o is given; never to a"
            " terminal."
        ),
    )
    save.add_argument("-o", "--output", metavar="FILE", help="write to FILE, not stdout")
    save.add_argument("images", nargs="+", metavar="IMAGE")
    save.set_defaults(handler="ctl.save:run+client")
