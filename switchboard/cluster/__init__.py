"""Cluster mode: the router side of running Switchboard across hosts on PostgreSQL.

docs/cluster.md is the operator's guide. schema.py creates and migrates the tables,
pgdirectory.py is the tenant directory and the host leases, leases.py keeps this host's lease.
The worker side (journal appends and snapshots in PostgreSQL) is tenant/pgstore.py.
"""
