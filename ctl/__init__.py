"""ctrctl, the friendly client. It uses only the API stubs and the client helpers."""
