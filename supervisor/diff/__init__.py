"""Layers in and out of snapshots: containerd's Diff service without its gRPC shell.

`apply` unpacks a layer blob into the directory a snapshot's mounts name (Diff.Apply, which
`ctr` calls for each layer of an image it unpacks); `walk` writes the changes between two
trees as a layer tar (Diff.Diff). `compression` knows layer media types and decompresses;
`tarformat` reads and writes tar headers. Nothing here imports gRPC; everything here blocks,
so the daemon runs it on worker threads.
"""
