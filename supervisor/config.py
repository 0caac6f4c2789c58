"""The daemon's configuration: a TOML file, overridden by command-line flags.

Layout (every key optional; these are the defaults):

    root = "/var/lib/ctrd"            # persistent data: metadata, content, snapshots
    state = "/run/ctrd"               # volatile data: bundles, shim sockets

    [grpc]
    address = "/run/ctrd/ctrd.sock"
    uid = 0                           # owner of the socket (mode 0660)
    gid = 0

    [debug]
    level = "info"                    # debug, info, warning, error
    format = "auto"                   # auto (console on a terminal, else json), json, console
    address = ""                      # a unix socket answering the daemon's stacks over HTTP
                                      # (`supervisor.debug.server`; also `ctr pprof -d`); off
    uid = 0                           # owner of that socket (mode 0660)
    gid = 0

    [tracing]                         # OpenTelemetry spans by OTLP (`supervisor.tracing`)
    endpoint = ""                     # e.g. "http://127.0.0.1:4318" (http/protobuf) or
                                      # "127.0.0.1:4317" (grpc); "" is off (the default)
    protocol = "http/protobuf"        # or "grpc" (containerd's otlp keys and default)
    insecure = false                  # grpc only: no TLS
    service_name = "ctrd"
    sampling_ratio = 1.0              # of the traces begun here (callers' choices are kept)

    [metrics]                         # Prometheus' /v1/metrics (`supervisor.metrics.server`)
    address = ""                      # host:port, e.g. "127.0.0.1:1338"; "" is off (the default)
    allow_remote = false              # a non-loopback address is refused unless this is true

    [gc]
    interval = 60.0                   # seconds between collections when nothing changes

    [registry]                        # for the daemon's own pulls (ctrd.services.images.v1.Pull)
    config_path = ""                  # docker config.json with credentials; "" means
                                      # /root/.docker/config.json when it exists
    insecure = []                     # hosts plain HTTP may be used with (loopback always may)
    [registry.mirrors]                # host -> mirrors tried in order before it; none by
    # "docker.io" = ["https://mirror.example.com"]      default (this line is an example)

    [cri]                             # Kubernetes' CRI (runtime.v1) on the same socket
    enabled = true                    # as containerd's CRI plugin, on unless turned off
    namespace = "k8s.io"              # where its images (and later pods) live
    sandbox_image = "registry.k8s.io/pause:3.6"  # the pause process of a pod sharing one PID
                                      # namespace (pulled when missing); other pods have none
    cni_conf_dir = "/etc/cni/net.d"   # pod networks: the first *.conf/*.conflist/*.json here
    cni_bin_dirs = ["/opt/cni/bin", "/usr/lib/cni"]  # plugins, searched in order (containerd's
                                      # dir, then Debian's containernetworking-plugins)
    cni_bin_dir = ""                  # containerd's single `bin_dir`; when set, searched first
    cni_cache_dir = "/var/lib/cni"    # libcni's cache: results/<net>-<sandbox>-<ifname>
    max_container_log_line_size = 16384  # longer lines are split into P records (<= 0: never)
    restrict_oom_score_adj = true     # a container's oom_score_adj below the daemon's own is
                                      # raised to it (containerd's key; its default is false)
    stream_server_address = "127.0.0.1"  # the streaming server (exec, attach, port-forward)
    stream_server_port = 0            # 0: a free port when it starts (at the first URL asked)
    stream_tls_cert = ""              # a certificate and key (PEM files): https URLs
    stream_tls_key = ""
    stream_idle_timeout = 60.0        # seconds a URL stays usable, once (then 404)
    [cri.mirrors]                     # host -> mirrors for PullImage, tried before [registry]'s
    # "registry.k8s.io" = ["http://127.0.0.1:5000"]    (an example)

Unknown keys are an error that names them: a typo should not silently fall back to a default.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from supervisor import identifiers
from supervisor.errors import InvalidArgument

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("auto", "json", "console")


@dataclass(frozen=True)
class GrpcConfig:
    address: str = "/run/ctrd/ctrd.sock"
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class DebugConfig:
    level: str = "info"
    format: str = "auto"
    address: str = ""  # the debug socket (`supervisor.debug.server`); "" is off
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class TracingConfig:
    endpoint: str = ""  # OTLP collector; "" is off
    protocol: str = "http/protobuf"  # or "grpc"
    insecure: bool = False  # grpc without TLS
    service_name: str = "ctrd"
    sampling_ratio: float = 1.0


@dataclass(frozen=True)
class MetricsConfig:
    address: str = ""  # host:port of /v1/metrics; "" is off
    allow_remote: bool = False  # containers' numbers and ids are not for every network

    def listen(self) -> tuple[str, int]:
        """The (host, port) to serve on; InvalidArgument when the address is malformed, or
        not a loopback one without allow_remote. Hostnames other than localhost are refused:
        what they resolve to can change after the check."""
        import ipaddress

        host, sep, port_text = self.address.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
            raise InvalidArgument(f'[metrics] address "{self.address}" is not host:port')
        if host == "localhost":
            return "127.0.0.1", int(port_text)
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise InvalidArgument(
                f'[metrics] address "{self.address}": the host must be an IP address or localhost'
            ) from None
        if not ip.is_loopback and not self.allow_remote:
            raise InvalidArgument(
                f'[metrics] address "{self.address}" is not a loopback address: set '
                "[metrics] allow_remote = true to serve the metrics beyond this machine"
            )
        return str(ip), int(port_text)


@dataclass(frozen=True)
class GcConfig:
    interval: float = 60.0  # seconds between collections on an idle daemon


@dataclass(frozen=True)
class EventsConfig:
    retention: float = 7 * 24 * 3600.0  # seconds the event log keeps what was published
    max_events: int = 1_000_000  # and at most this many of the newest


@dataclass(frozen=True)
class LogsConfig:
    max_size: int = 10 * 1024 * 1024  # bytes of a container's log (ctrd-log://) per file
    max_files: int = 3  # files kept, the current one included


@dataclass(frozen=True)
class RuntimeConfig:
    binary: str = "runc"  # the OCI runtime tasks use unless their runtime options name one
    # runc's execs done by the shim itself when they need nothing it cannot do (shim.nsexec)
    native_exec: bool = True


@dataclass(frozen=True)
class RegistryConfig:
    config_path: str = ""  # docker's config.json for credentials; "": the default if present
    mirrors: dict[str, list[str]] = field(default_factory=dict)  # host -> mirror URLs
    insecure: list[str] = field(default_factory=list)  # hosts plain HTTP is allowed to


@dataclass(frozen=True)
class NetworkConfig:
    nft_table: str = "ctrd"  # ctrd's nftables table (inet family); tests name their own


@dataclass(frozen=True)
class CriConfig:
    enabled: bool = True  # runtime.v1 RuntimeService and ImageService on the daemon's socket
    namespace: str = "k8s.io"  # the namespace of the CRI's objects, as containerd's
    sandbox_image: str = "registry.k8s.io/pause:3.6"  # containerd 1.6's; pods with pid POD
    mirrors: dict[str, list[str]] = field(default_factory=dict)  # host -> mirror URLs
    cni_conf_dir: str = "/etc/cni/net.d"
    cni_bin_dirs: list[str] = field(default_factory=lambda: ["/opt/cni/bin", "/usr/lib/cni"])
    cni_bin_dir: str = ""  # the single key of before (containerd's `bin_dir`): searched first
    cni_cache_dir: str = "/var/lib/cni"
    max_container_log_line_size: int = 16384  # containerd's; the CRI log's line limit
    restrict_oom_score_adj: bool = True  # this machine's root cannot lower its oom_score_adj
    stream_server_address: str = "127.0.0.1"  # exec/attach/port-forward URLs (loopback)
    stream_server_port: int = 0  # 0: a free port, chosen when the server starts
    stream_tls_cert: str = ""  # both set: the streaming server speaks TLS (https URLs)
    stream_tls_key: str = ""
    stream_idle_timeout: float = 60.0  # seconds a streaming URL stays usable (then 404)

    def cni_plugin_dirs(self) -> list[str]:
        """Where CNI plugins are looked for, in order (each directory once)."""
        dirs = [self.cni_bin_dir] if self.cni_bin_dir else []
        return list(dict.fromkeys([*dirs, *self.cni_bin_dirs]))


@dataclass(frozen=True)
class Config:
    root: str = "/var/lib/ctrd"
    state: str = "/run/ctrd"
    grpc: GrpcConfig = field(default_factory=GrpcConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    gc: GcConfig = field(default_factory=GcConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    logs: LogsConfig = field(default_factory=LogsConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    cri: CriConfig = field(default_factory=CriConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)

    def with_overrides(
        self,
        *,
        root: str | None = None,
        state: str | None = None,
        address: str | None = None,
        log_level: str | None = None,
    ) -> Config:
        cfg = replace(self, root=root or self.root, state=state or self.state)
        if address:
            cfg = replace(cfg, grpc=replace(cfg.grpc, address=address))
        if log_level:
            cfg = replace(cfg, debug=replace(cfg.debug, level=log_level))
        return cfg.validated()

    def validated(self) -> Config:
        if self.debug.level not in LEVELS:
            raise InvalidArgument(f'log level "{self.debug.level}" is not one of {LEVELS}')
        if self.debug.format not in FORMATS:
            raise InvalidArgument(f'log format "{self.debug.format}" is not one of {FORMATS}')
        if self.debug.address and not Path(self.debug.address).is_absolute():
            raise InvalidArgument(
                f'[debug] address "{self.debug.address}" must be an absolute path'
            )
        if self.tracing.protocol not in ("http/protobuf", "grpc"):
            raise InvalidArgument(
                f'[tracing] protocol "{self.tracing.protocol}" is not "http/protobuf" or "grpc"'
            )
        if not 0.0 <= self.tracing.sampling_ratio <= 1.0:
            raise InvalidArgument("[tracing] sampling_ratio must be between 0 and 1")
        if self.events.retention <= 0 or self.events.max_events <= 0:
            raise InvalidArgument("[events] retention and max_events must be positive")
        if self.logs.max_size < 0 or self.logs.max_files < 1:
            raise InvalidArgument("[logs] max_size must be >= 0 and max_files >= 1")
        if self.metrics.address:
            self.metrics.listen()
        if self.gc.interval <= 0:
            raise InvalidArgument(f"gc interval {self.gc.interval} must be positive")
        mirrors = self.registry.mirrors
        if not all(
            isinstance(urls, list) and all(isinstance(u, str) for u in urls)
            for urls in mirrors.values()
        ) or not all(isinstance(h, str) for h in self.registry.insecure):
            raise InvalidArgument(
                "[registry] mirrors must map hosts to lists of URLs, insecure list hosts"
            )
        if not all(
            isinstance(urls, list) and all(isinstance(u, str) for u in urls)
            for urls in self.cri.mirrors.values()
        ):
            raise InvalidArgument("[cri] mirrors must map hosts to lists of URLs")
        if not all(isinstance(d, str) for d in self.cri.cni_bin_dirs):
            raise InvalidArgument("[cri] cni_bin_dirs must be a list of directories")
        if bool(self.cri.stream_tls_cert) != bool(self.cri.stream_tls_key):
            raise InvalidArgument("[cri] stream_tls_cert and stream_tls_key go together")
        if not 0 <= self.cri.stream_server_port <= 65535 or self.cri.stream_idle_timeout <= 0:
            raise InvalidArgument("[cri] stream_server_port must be a port, idle timeout > 0")
        try:
            identifiers.validate(self.cri.namespace)
        except InvalidArgument as e:
            raise InvalidArgument(f"[cri] namespace: {e.detail}") from None
        for name, value in (("root", self.root), ("state", self.state)):
            if not Path(value).is_absolute():
                raise InvalidArgument(f'{name} "{value}" must be an absolute path')
        return self


def load(path: str | None) -> Config:
    """Read a config file; None means the defaults."""
    if path is None:
        return Config()
    import tomllib  # only with a file: a default start need not load the parser

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise InvalidArgument(f'config file "{path}" does not exist') from None
    except tomllib.TOMLDecodeError as e:
        raise InvalidArgument(f'config file "{path}": {e}') from None
    data.pop("version", None)
    cfg: Config = _build(Config, data, path)
    return cfg.validated()


def _build(cls: Any, data: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise InvalidArgument(f'config "{where}": unknown key(s) {", ".join(unknown)}')
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        default = getattr(cls(), name)
        if hasattr(default, "__dataclass_fields__"):
            if not isinstance(value, dict):
                raise InvalidArgument(f'config "{where}": [{name}] must be a table')
            kwargs[name] = _build(type(default), value, f"{where}: [{name}]")
        elif isinstance(default, float) and type(value) is int:
            kwargs[name] = float(value)
        elif not isinstance(value, type(default)) or isinstance(value, bool) != isinstance(
            default, bool
        ):
            raise InvalidArgument(
                f'config "{where}": {name} must be a {type(default).__name__}, not {value!r}'
            )
        else:
            kwargs[name] = value
    return cls(**kwargs)
