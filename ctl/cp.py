"""`ctrctl cp`: files between a container and the local filesystem, as `docker cp` (20.10).

    ctrctl cp [-a] [-L] CONTAINER:SRC_PATH DEST_PATH|-
    ctrctl cp [-a] [-L] SRC_PATH|- CONTAINER:DEST_PATH

The container side is ctrd's archive service (`ctrd.services.archive.v1`: Stat, Get, Put);
the local side is done here, with docker's CLI rules (cli/command/container/cp.go and
pkg/archive/copy.go, in `supervisor.archive.paths`): an argument is a container's when it
has a `:` and starts with neither `/` nor `.`; a trailing `/` asserts a directory and `/.`
copies a directory's contents; the destination decides whether the copy goes into it, takes
its name, or fails ("cannot copy directory", "no such directory"); `-` is a tar stream on
stdin (extracted into a directory of the container) or stdout (the container path's tar, as
the daemon serves it); `-L` follows a final symlink of the source (in the container: to where
the daemon says it leads); `-a` has the daemon give what it extracts to the container's user
(without it, to the owner the local files have). A local extraction never writes outside its
destination directory, whatever the tar or the directory's symlinks say (the same extractor as
the daemon's, rooted there), and does not change owners (docker's NoLchown).

Errors are docker's words on stderr and exit status 1: "Error: No such container:path: C:P"
for a missing container or path, "Error response from daemon: ..." for the daemon's refusals.
Only argparse is imported at the top (ctrctl starts fast).
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ctl.client import Client
    from supervisor.archive.paths import CopyInfo

_CHUNK = 1 << 18
_MAX_DEST_LINKS = 10  # docker's maxSymlinkIter for a local destination


class CpError(Exception):
    """A copy refused or failed; the message is docker's, printed as it is."""


def add_parsers(commands: Any) -> None:
    cp = commands.add_parser(
        "cp",
        help="copy files/folders between a container and the local filesystem",
        description=(
            "Copy files/folders between a container and the local filesystem. Use '-' as the"
            " source to read a tar archive from stdin and extract it to a directory destination"
            " in a container. Use '-' as the destination to stream a tar archive of a container"
            " source to stdout."
        ),
        usage=(
            "ctrctl cp [-a] [-L] CONTAINER:SRC_PATH DEST_PATH|-\n"
            "       ctrctl cp [-a] [-L] SRC_PATH|- CONTAINER:DEST_PATH"
        ),
    )
    cp.add_argument(
        "-a", "--archive", action="store_true", help="archive mode (copy all uid/gid information)"
    )
    cp.add_argument(
        "-L", "--follow-link", action="store_true", help="always follow symbol link in SRC_PATH"
    )
    # not `source`: completion takes that name for an image (ctl.completion.IMAGE_ARGS)
    cp.add_argument("src", metavar="SRC_PATH")
    cp.add_argument("dest", metavar="DEST_PATH")
    cp.set_defaults(handler="ctl.cp:cmd_cp+client")


def split_arg(arg: str) -> tuple[str, str]:
    """docker's splitCpArg: (container, path), container "" for a local path."""
    if arg.startswith("/"):
        return "", arg
    container, colon, path = arg.partition(":")
    if not colon or container.startswith("."):
        return "", arg
    return container, path


def cmd_cp(client: Client, args: argparse.Namespace) -> int:
    import grpc

    container = ""
    path = ""
    try:
        if not args.src:
            raise CpError("source can not be empty")
        if not args.dest:
            raise CpError("destination can not be empty")
        src_container, src_path = split_arg(args.src)
        dst_container, dst_path = split_arg(args.dest)
        if src_container and dst_container:
            raise CpError("copying between containers is not supported")
        if not src_container and not dst_container:
            raise CpError("must specify at least one container source")
        copier = _Copier(client, src_container or dst_container, args.archive, args.follow_link)
        if src_container:
            container, path = src_container, src_path
            copier.from_container(src_path, dst_path)
        else:
            container, path = dst_container, dst_path
            copier.to_container(src_path, dst_path)
    except CpError as e:
        print(e, file=sys.stderr)
        return 1
    except _Missing as e:
        print(f"Error: No such container:path: {container}:{e.path}", file=sys.stderr)
        return 1
    except grpc.RpcError as e:
        if isinstance(e, grpc.Call) and e.code() == grpc.StatusCode.NOT_FOUND:
            print(f"Error: No such container:path: {container}:{path}", file=sys.stderr)
        elif isinstance(e, grpc.Call) and e.code() != grpc.StatusCode.UNAVAILABLE:
            print(f"Error response from daemon: {e.details()}", file=sys.stderr)
        else:
            raise
        return 1
    return 0


class _Missing(Exception):
    """The daemon has no such container or path (its NOT_FOUND) for `path`."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


def _go_error(op: str, path: str, error: OSError) -> CpError:
    """An os error as Go prints it: `lstat /x: no such file or directory`."""
    words = os.strerror(error.errno) if error.errno else str(error)
    return CpError(f"{op} {path}: {words[:1].lower()}{words[1:]}")


def resolve_local(path: str) -> str:
    """docker's resolveLocalPath: absolute, the trailing `/` or `/.` kept."""
    from supervisor.archive import paths

    return paths.preserve_trailing(os.path.abspath(path), path)


def validate_output_path(path: str) -> None:
    """docker's ValidateOutputPath."""
    from supervisor.archive import paths

    directory = paths.dirname(paths.clean(path))
    if directory not in ("", ".") and not os.path.exists(directory):
        raise CpError(f'invalid output path: directory "{directory}" does not exist')
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise _go_error("stat", path, e) from None
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        raise CpError(
            f'invalid output path: "{path}" must be a directory or a regular file: got a device'
        )


def source_info(path: str, follow_link: bool) -> CopyInfo:
    """docker's CopyInfoSourcePath (with ResolveHostSourcePath)."""
    from supervisor.archive import paths

    if follow_link:
        try:
            resolved = os.path.realpath(path, strict=True)
        except OSError as e:
            raise _go_error("lstat", path, e) from None
        resolved, rebase = paths.rebase_name(path, resolved)
    else:
        directory, base = paths.split(path)
        try:
            resolved_dir = os.path.realpath(directory or ".", strict=True)
        except OSError as e:
            raise _go_error("lstat", directory, e) from None
        resolved = resolved_dir.rstrip("/") + "/" + base
        rebase = ""
        if paths.has_trailing_separator(path) and paths.base(path) != paths.base(resolved):
            rebase = paths.base(path)
    try:
        st = os.lstat(resolved)
    except OSError as e:
        raise _go_error("lstat", resolved, e) from None
    return paths.CopyInfo(resolved, True, stat.S_ISDIR(st.st_mode), rebase)


def destination_info(path: str) -> CopyInfo:
    """docker's CopyInfoDestinationPath: a final symlink is followed (10 times at most); a
    missing destination is fine when its parent is a directory."""
    from supervisor.archive import paths

    original = path
    for _ in range(_MAX_DEST_LINKS + 2):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            parent, _ = paths.split_dir_entry(path)
            try:
                parent_st = os.stat(parent)
            except OSError as e:
                raise _go_error("stat", parent, e) from None
            if not stat.S_ISDIR(parent_st.st_mode):
                raise CpError(paths.NOT_A_DIRECTORY) from None
            return paths.CopyInfo(path)
        except OSError as e:
            raise _go_error("lstat", path, e) from None
        if not stat.S_ISLNK(st.st_mode):
            return paths.CopyInfo(path, True, stat.S_ISDIR(st.st_mode))
        target = os.readlink(path)
        if not target.startswith("/"):
            target = paths.clean(paths.split_dir_entry(path)[0] + "/" + target)
        path = target
    raise CpError(f"too many symlinks in {original}")


class _Copier:
    def __init__(self, client: Client, container: str, archive: bool, follow: bool) -> None:
        from ctl.client import NotFound, stub
        from supervisor.api.ctrd.services.archive.v1 import archive_pb2

        self._pb = archive_pb2
        self._stub = stub(client.channel, archive_pb2, "Archive")
        self._md = client.md
        try:
            self._id = client.resolve(container)
        except NotFound:
            self._id = container  # the daemon says NOT_FOUND, docker's words follow
        self._archive = archive
        self._follow = follow
        self._container = container

    def _stat(self, path: str) -> Any | None:
        import grpc

        try:
            return self._stub.Stat(
                self._pb.StatRequest(container_id=self._id, path=path), metadata=self._md
            ).stat
        except grpc.RpcError:
            return None

    # -- out of the container ----------------------------------------------------------------

    def from_container(self, src: str, dst: str) -> None:
        from supervisor.archive import paths
        from supervisor.archive.resolve import open_root
        from supervisor.archive.unpack import Options, UnpackError, unpack

        if dst != "-":
            dst = resolve_local(dst)
        validate_output_path(dst)
        rebase = ""
        if self._follow:
            found = self._stat(src)
            if found is not None and stat.S_ISLNK(found.mode):
                target = found.link_target
                if not target.startswith("/"):
                    target = paths.clean(paths.split_dir_entry(src)[0] + "/" + target)
                src, rebase = paths.rebase_name(src, target)
        found, chunks = self._get(src)
        if dst == "-":
            out = sys.stdout.buffer
            for chunk in chunks:
                out.write(chunk)
            out.flush()
            return
        source = paths.CopyInfo(src, True, stat.S_ISDIR(found.mode), rebase)
        destination = destination_info(dst)
        try:
            prepared = paths.prepare_copy(source, destination)
        except paths.CopyError as e:
            raise CpError(str(e)) from None
        renames: list[tuple[str, str]] = []
        if rebase:
            renames.append((paths.split_dir_entry(src)[1], rebase))
        if prepared.renames:
            renames.append((prepared.old, prepared.new))

        def rename(name: bytes) -> bytes:
            for old, new in renames:
                name = paths.rebase(name, old, new)
            return name

        root = open_root(prepared.directory)
        options = Options(no_overwrite_dir_non_dir=True, chown=False, rename=rename)
        try:
            unpack(chunks, root, b"/", options)
            for _ in chunks:  # to the stream's end: the daemon's call ends as it should
                pass
        except UnpackError as e:
            raise CpError(str(e)) from None
        except OSError as e:
            raise CpError(f"{e.filename or prepared.directory}: {e.strerror}") from None
        finally:
            os.close(root.fd)

    def _get(self, src: str) -> tuple[Any, Iterator[bytes]]:
        import grpc

        stream = self._stub.Get(
            self._pb.GetRequest(container_id=self._id, path=src), metadata=self._md
        )
        try:
            first = next(stream)
        except grpc.RpcError as e:
            if isinstance(e, grpc.Call) and e.code() == grpc.StatusCode.NOT_FOUND:
                raise _Missing(src) from None
            raise

        def chunks() -> Iterator[bytes]:
            if first.data:
                yield first.data
            for message in stream:
                yield message.data

        return first.stat, chunks()

    # -- into the container ------------------------------------------------------------------

    def to_container(self, src: str, dst: str) -> None:
        from supervisor.archive import paths

        if src != "-":
            src = resolve_local(src)
        destination = paths.CopyInfo(dst)
        found = self._stat(dst)
        if found is not None and stat.S_ISLNK(found.mode):
            target = found.link_target
            if not target.startswith("/"):
                target = paths.clean(paths.split_dir_entry(dst)[0] + "/" + target)
            destination = paths.CopyInfo(target)
            found = self._stat(target)
        if found is not None and (stat.S_ISCHR(found.mode) or stat.S_ISBLK(found.mode)):
            raise CpError(
                f'destination "{self._container}:{dst}" must be a directory or a regular file:'
                " got a device"
            )
        if found is not None:
            destination = paths.CopyInfo(destination.path, True, stat.S_ISDIR(found.mode))
        if src == "-":
            if not destination.is_dir:
                raise CpError(f'destination "{self._container}:{dst}" must be a directory')
            self._put(destination.path, _stdin_chunks())
            return
        source = source_info(src, self._follow)
        try:
            prepared = paths.prepare_copy(source, destination)
        except paths.CopyError as e:
            raise CpError(str(e)) from None
        self._put(prepared.directory, _local_tar(source, prepared))

    def _put(self, directory: str, chunks: Iterable[bytes]) -> None:
        import grpc

        pb = self._pb

        def requests() -> Iterator[Any]:
            yield pb.PutRequest(
                container_id=self._id,
                path=directory,
                no_overwrite_dir_non_dir=True,
                copy_uid_gid=self._archive,
            )
            for chunk in chunks:
                yield pb.PutRequest(data=chunk)

        try:
            self._stub.Put(requests(), metadata=self._md)
        except grpc.RpcError as e:
            if isinstance(e, grpc.Call) and e.code() == grpc.StatusCode.NOT_FOUND:
                raise _Missing(directory) from None
            raise


def _stdin_chunks() -> Iterator[bytes]:
    while chunk := os.read(sys.stdin.fileno(), _CHUNK):
        yield chunk


def _local_tar(source: CopyInfo, prepared: Any) -> Iterator[bytes]:
    """docker's TarResource of the source, its top entry named as the copy needs."""
    from supervisor.archive import paths
    from supervisor.archive.pack import pack

    directory, base = paths.split_dir_entry(source.path)
    top = prepared.new if prepared.renames else (source.rebase_name or base)
    parent = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield from pack(parent, os.fsencode(base), os.fsencode(top))
    finally:
        os.close(parent)
