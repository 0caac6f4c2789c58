"""The CRI's streaming server and its protocols: exec, attach and port-forward over SPDY/3.1
and WebSocket (`server` routes, `tokens`, `spdy`, `remotecommand`, `portforward`,
`websocket`; `part` is the RuntimeService's "streaming" part)."""
