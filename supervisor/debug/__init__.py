"""What an operator asks a running daemon when it misbehaves: its stacks (`stacks`), on SIGUSR1
into the log and on demand from the `[debug] address` socket (`server`)."""
