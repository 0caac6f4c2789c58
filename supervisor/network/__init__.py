"""Container networking: docker-style bridge networks owned by the daemon.

`ipam` picks subnets and addresses (pure), `store` keeps networks and their endpoints' addresses
in the metadata database, `netlink` plumbs bridges and veths, `nft` owns ctrd's nftables table.
"""
