"""Container networking: docker-style bridge networks owned by the daemon.

`ipam` picks subnets and addresses (pure), `store` keeps networks and their endpoints' addresses
in the metadata database, `netlink` plumbs bridges and veths, `nft` owns ctrd's nftables table.
`manager` makes stored networks real; `driver` is its seam with what does a network's kernel
side, `bridge` the built-in driver (a second one, CNI plugins for the CRI, would fill it too).
"""
