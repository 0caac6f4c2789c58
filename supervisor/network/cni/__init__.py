"""Pod networking through CNI plugins: the CRI's `PodNetwork` (`supervisor.cri.model`).

- `conf`: the conf dir as containerd's go-cni loads it (loopback + the first file), read
  again whenever a file in it changed;
- `invoke`: running a network list's plugins (ADD in order, DEL in reverse), their errors,
  libcni's cache files;
- `result`: CNI results of every version into one model, and the pod's IPs;
- `store`: the durable record of each attachment (table `cni_attachments`);
- `pod`: `CniPodNetwork`, the PodNetwork itself: record first, then plugins, DEL from the
  record.

Why this is a seam of its own beside `supervisor.network.driver` (the network package's
driver Protocol, whose first driver is `bridge`): a `NetworkDriver` plugs an endpoint whose
address the manager has leased from its own IPAM into a namespace the manager pinned, and the
manager owns the host ports and the nft table. Under CNI each of those belongs to someone
else: the IPAM plugin (host-local) picks the address, the CRI's sandboxes pin the namespace,
portmap reserves nothing and writes its own iptables chains, and the network itself is a
file an operator (or a CNI DaemonSet) writes, not a stored network. A pod network is thus the
CRI's `PodNetwork`, and it shares with the package what is common: it runs in the host's
network namespace beside the manager and never touches the manager's table. What a future
`cni` NetworkDriver (docker-style networks through CNI plugins) would reuse is `invoke`: its
`attach` an ADD of a list whose IPAM is CNI's `static` plugin given the leased address, its
`detach` a DEL.
"""
