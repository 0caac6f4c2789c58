"""`google.protobuf.Any` values: their types found, their contents shown, whatever they hold.

An Any names its type by URL; containerd writes the bare message name
(`containerd.runc.v1.Options`), others prefix a host (`type.googleapis.com/...`), and the
OCI types containerd's typeurl marshals as JSON live under `types.containerd.io/`
(`types.containerd.io/opencontainers/runtime-spec/1/Spec`). A type resolves through
protobuf's default descriptor pool; a name it lacks gets the modules of its package
imported, then, if need be, every module of our API and the well-known types, so a type
resolves whichever modules the caller happened to import first.

Rendering to JSON never raises (events, inspect and the like must show what they cannot
decode, not die on it):

- a known message: its fields in protobuf's JSON mapping, and each Any nested in it decoded
  the same way, with `"@type"` naming its type (a well-known type as `{"@type", "value"}`);
- a `types.containerd.io/` payload: its JSON, parsed;
- anything else (an unknown type, bytes that do not parse, nesting deeper than MAX_DEPTH):
  raw, as ctr prints an Any it does not decode (Go's JSON of containerd's Any):
  `{"type_url": URL, "value": BASE64}`, each key left out when empty.
"""

from __future__ import annotations

import base64
import importlib
import json
from pathlib import Path
from typing import Any, cast

from google.protobuf import (
    any_pb2,
    descriptor,
    descriptor_pool,
    json_format,
    message,
    message_factory,
)

JSON_TYPES_PREFIX = "types.containerd.io/"
MAX_DEPTH = 32  # Anys within Anys; deeper ones are shown raw
_ANY = "google.protobuf.Any"
_API_DIR = Path(__file__).resolve().parent / "api"
_WELL_KNOWN = (
    "any_pb2", "duration_pb2", "empty_pb2", "field_mask_pb2", "struct_pb2", "timestamp_pb2",
    "wrappers_pb2",
)  # fmt: skip

# Packages whose generated modules are not (only) in the directory their name spells.
_PACKAGE_DIRS = {
    "containerd.runc.v1": ("containerd/runc/options",),
    "containerd.services.images.v1": ("containerd/services/images/v1", "containerd/events"),
    "containerd.v1.types": ("containerd/types/task",),
    "runtimeoptions.v1": ("containerd/pkg/runtimeoptions/v1",),
}

_imported: set[Path] = set()
_imported_all = False
_holding_any: dict[str, bool] = {}


def message_class(type_url: str) -> type[message.Message] | None:
    """The message class an Any's type URL names, or None when no message has that name.

    A name the pool lacks first has its package's modules imported (a few ms), then, when
    that is not enough, every module of our API and the well-known types (~20 ms, once)."""
    name = type_url.rpartition("/")[2]
    found = _find(name)
    if found is None and _import_package(name.rpartition(".")[0]):
        found = _find(name)
    if found is None and _import_all():
        found = _find(name)
    return None if found is None else message_factory.GetMessageClass(found)


def _find(name: str) -> descriptor.Descriptor | None:
    try:
        return descriptor_pool.Default().FindMessageTypeByName(name)
    except (KeyError, TypeError, ValueError):
        return None


def _import_package(package: str) -> bool:
    """Import the generated modules of a proto package; False when none was new."""
    if not package or not all(part.isidentifier() for part in package.split(".")):
        return False
    dirs = _PACKAGE_DIRS.get(package, (package.replace(".", "/"),))
    return _import_files([p for d in dirs for p in sorted((_API_DIR / d).glob("*_pb2.py"))])


def _import_all() -> bool:
    """Import every generated module and the well-known types, once; False after that."""
    global _imported_all
    if _imported_all:
        return False
    _imported_all = True
    for name in _WELL_KNOWN:
        importlib.import_module(f"google.protobuf.{name}")
    _import_files(sorted(_API_DIR.rglob("*_pb2.py")))
    return True


def _import_files(paths: list[Path]) -> bool:
    new = [path for path in paths if path not in _imported]
    for path in new:
        parts = path.relative_to(_API_DIR).with_suffix("").parts
        importlib.import_module(".".join((__package__ or "supervisor", "api", *parts)))
        _imported.add(path)
    return bool(new)


def unpack(packed: any_pb2.Any) -> message.Message | None:
    """The message inside an Any, when its type is a known message and its bytes parse."""
    cls = message_class(packed.type_url)
    if cls is None:
        return None
    try:
        return cls.FromString(packed.value)
    except message.DecodeError:
        return None


def raw(packed: any_pb2.Any) -> dict[str, str]:
    """An Any as ctr prints one it does not decode: type URL and base64 bytes."""
    shown = {}
    if packed.type_url:
        shown["type_url"] = packed.type_url
    if packed.value:
        shown["value"] = base64.b64encode(packed.value).decode()
    return shown


def content(packed: any_pb2.Any, depth: int = 0) -> object:
    """What an Any holds, as JSON: a message's fields or a JSON payload; else `raw`."""
    try:
        return _decode(packed, depth)[0]
    except Exception:  # whatever cannot be decoded is shown raw
        return raw(packed)


def to_json(packed: any_pb2.Any, depth: int = 0) -> object:
    """An Any as JSON with its type: `{"@type": URL, ...content}`; else `raw`."""
    try:
        value, merge = _decode(packed, depth)
    except Exception:  # whatever cannot be decoded is shown raw
        return raw(packed)
    if merge and isinstance(value, dict):
        return {"@type": packed.type_url, **value}
    return {"@type": packed.type_url, "value": value}


class _Undecodable(Exception):
    pass


def _decode(packed: any_pb2.Any, depth: int) -> tuple[object, bool]:
    """The content and whether its keys go beside "@type" (False: under "value")."""
    if depth >= MAX_DEPTH:
        raise _Undecodable("nested too deep")
    cls = message_class(packed.type_url)
    if cls is not None:
        inner = cls.FromString(packed.value)
        full_name = inner.DESCRIPTOR.full_name
        special = full_name != "google.protobuf.Empty" and inner.DESCRIPTOR.file.name.startswith(
            "google/protobuf/"
        )
        return message_to_json(inner, depth + 1), not special
    if packed.type_url.startswith(JSON_TYPES_PREFIX):
        return json.loads(packed.value), True
    raise _Undecodable(packed.type_url)


def message_to_json(msg: message.Message, depth: int = 0) -> Any:
    """A message in protobuf's JSON mapping, each Any in it (at any depth) shown by `to_json`.

    protobuf's own `MessageToDict` raises on an Any whose type the pool lacks; here the
    fields that hold Anys are rendered apart and the rest is left to `MessageToDict`.
    """
    if msg.DESCRIPTOR.full_name == _ANY:
        assert isinstance(msg, any_pb2.Any)
        return to_json(msg, depth)
    if not _holds_any(cast(descriptor.Descriptor, msg.DESCRIPTOR)):  # the stubs add upb's
        return json_format.MessageToDict(msg)
    rest = type(msg)()
    rest.CopyFrom(msg)
    apart: dict[str, object] = {}
    for field, value in msg.ListFields():
        if field.is_extension or field.message_type is None or not _holds_any(field.message_type):
            continue
        if field.message_type.GetOptions().map_entry:
            apart[field.json_name] = {
                _map_key(k): message_to_json(v, depth) if isinstance(v, message.Message) else v
                for k, v in value.items()
            }
        elif field.is_repeated:
            apart[field.json_name] = [message_to_json(v, depth) for v in value]
        else:
            apart[field.json_name] = message_to_json(value, depth)
        rest.ClearField(field.name)
    shown = json_format.MessageToDict(rest)
    shown.update(apart)
    return shown


def _map_key(key: object) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)


def _holds_any(desc: descriptor.Descriptor) -> bool:
    """Whether a message type is an Any or has one somewhere inside (memoized by name)."""
    if desc.full_name not in _holding_any:
        _holding_any[desc.full_name] = _reaches_any(desc, set())
    return _holding_any[desc.full_name]


def _reaches_any(desc: descriptor.Descriptor, seen: set[str]) -> bool:
    if desc.full_name == _ANY:
        return True
    if desc.full_name in seen:  # a type that contains itself: its other fields decide
        return False
    seen.add(desc.full_name)
    return any(
        f.message_type is not None and _reaches_any(f.message_type, seen) for f in desc.fields
    )
