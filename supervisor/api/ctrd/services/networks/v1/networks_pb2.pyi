import datetime

from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PortMapping(_message.Message):
    __slots__ = ("protocol", "host_ip", "host_port", "container_port")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    HOST_IP_FIELD_NUMBER: _ClassVar[int]
    HOST_PORT_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_PORT_FIELD_NUMBER: _ClassVar[int]
    protocol: str
    host_ip: str
    host_port: int
    container_port: int
    def __init__(self, protocol: _Optional[str] = ..., host_ip: _Optional[str] = ..., host_port: _Optional[int] = ..., container_port: _Optional[int] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("container_id", "address", "mac", "aliases", "ports", "network_id", "network_name", "gateway")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    NETWORK_NAME_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    address: str
    mac: str
    aliases: _containers.RepeatedScalarFieldContainer[str]
    ports: _containers.RepeatedCompositeFieldContainer[PortMapping]
    network_id: str
    network_name: str
    gateway: str
    def __init__(self, container_id: _Optional[str] = ..., address: _Optional[str] = ..., mac: _Optional[str] = ..., aliases: _Optional[_Iterable[str]] = ..., ports: _Optional[_Iterable[_Union[PortMapping, _Mapping]]] = ..., network_id: _Optional[str] = ..., network_name: _Optional[str] = ..., gateway: _Optional[str] = ...) -> None: ...

class Network(_message.Message):
    __slots__ = ("id", "name", "driver", "subnet", "gateway", "ip_range", "internal", "labels", "options", "created_at", "endpoints", "mtu")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    SUBNET_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    IP_RANGE_FIELD_NUMBER: _ClassVar[int]
    INTERNAL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    MTU_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    driver: str
    subnet: str
    gateway: str
    ip_range: str
    internal: bool
    labels: _containers.ScalarMap[str, str]
    options: _containers.ScalarMap[str, str]
    created_at: _timestamp_pb2.Timestamp
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    mtu: int
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., driver: _Optional[str] = ..., subnet: _Optional[str] = ..., gateway: _Optional[str] = ..., ip_range: _Optional[str] = ..., internal: _Optional[bool] = ..., labels: _Optional[_Mapping[str, str]] = ..., options: _Optional[_Mapping[str, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., mtu: _Optional[int] = ...) -> None: ...

class CreateNetworkRequest(_message.Message):
    __slots__ = ("id", "name", "driver", "subnet", "gateway", "ip_range", "internal", "labels", "options")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    SUBNET_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    IP_RANGE_FIELD_NUMBER: _ClassVar[int]
    INTERNAL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    driver: str
    subnet: str
    gateway: str
    ip_range: str
    internal: bool
    labels: _containers.ScalarMap[str, str]
    options: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., driver: _Optional[str] = ..., subnet: _Optional[str] = ..., gateway: _Optional[str] = ..., ip_range: _Optional[str] = ..., internal: _Optional[bool] = ..., labels: _Optional[_Mapping[str, str]] = ..., options: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CreateNetworkResponse(_message.Message):
    __slots__ = ("network",)
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    network: Network
    def __init__(self, network: _Optional[_Union[Network, _Mapping]] = ...) -> None: ...

class GetNetworkRequest(_message.Message):
    __slots__ = ("ref",)
    REF_FIELD_NUMBER: _ClassVar[int]
    ref: str
    def __init__(self, ref: _Optional[str] = ...) -> None: ...

class GetNetworkResponse(_message.Message):
    __slots__ = ("network",)
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    network: Network
    def __init__(self, network: _Optional[_Union[Network, _Mapping]] = ...) -> None: ...

class ListNetworksRequest(_message.Message):
    __slots__ = ("filters",)
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    filters: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, filters: _Optional[_Iterable[str]] = ...) -> None: ...

class ListNetworksResponse(_message.Message):
    __slots__ = ("networks",)
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    networks: _containers.RepeatedCompositeFieldContainer[Network]
    def __init__(self, networks: _Optional[_Iterable[_Union[Network, _Mapping]]] = ...) -> None: ...

class DeleteNetworkRequest(_message.Message):
    __slots__ = ("ref",)
    REF_FIELD_NUMBER: _ClassVar[int]
    ref: str
    def __init__(self, ref: _Optional[str] = ...) -> None: ...

class PruneNetworksRequest(_message.Message):
    __slots__ = ("filters",)
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    filters: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, filters: _Optional[_Iterable[str]] = ...) -> None: ...

class PruneNetworksResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, deleted: _Optional[_Iterable[str]] = ...) -> None: ...

class ConnectRequest(_message.Message):
    __slots__ = ("network", "container_id", "address", "aliases")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    network: str
    container_id: str
    address: str
    aliases: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, network: _Optional[str] = ..., container_id: _Optional[str] = ..., address: _Optional[str] = ..., aliases: _Optional[_Iterable[str]] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("endpoint",)
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    endpoint: Endpoint
    def __init__(self, endpoint: _Optional[_Union[Endpoint, _Mapping]] = ...) -> None: ...

class DisconnectRequest(_message.Message):
    __slots__ = ("network", "container_id")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    network: str
    container_id: str
    def __init__(self, network: _Optional[str] = ..., container_id: _Optional[str] = ...) -> None: ...

class ListEndpointsRequest(_message.Message):
    __slots__ = ("container_id",)
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    def __init__(self, container_id: _Optional[str] = ...) -> None: ...

class ListEndpointsResponse(_message.Message):
    __slots__ = ("endpoints",)
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    def __init__(self, endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ...) -> None: ...

class NetworkCreate(_message.Message):
    __slots__ = ("id", "name", "driver")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    driver: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., driver: _Optional[str] = ...) -> None: ...

class NetworkDelete(_message.Message):
    __slots__ = ("id", "name", "driver")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    driver: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., driver: _Optional[str] = ...) -> None: ...

class NetworkConnect(_message.Message):
    __slots__ = ("network_id", "network_name", "container_id")
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    NETWORK_NAME_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    network_id: str
    network_name: str
    container_id: str
    def __init__(self, network_id: _Optional[str] = ..., network_name: _Optional[str] = ..., container_id: _Optional[str] = ...) -> None: ...

class NetworkDisconnect(_message.Message):
    __slots__ = ("network_id", "network_name", "container_id")
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    NETWORK_NAME_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    network_id: str
    network_name: str
    container_id: str
    def __init__(self, network_id: _Optional[str] = ..., network_name: _Optional[str] = ..., container_id: _Optional[str] = ...) -> None: ...
