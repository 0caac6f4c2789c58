"""The runtime: shims and the tasks they run, as the daemon sees them."""
