"""The log: the append protocol by exclusive create, reads, snapshots and seals, leases and fencing, the run index."""
