"""Cluster mode: the router side of running Switchboard across hosts on PostgreSQL.

docs/cluster.md is the operator's guide. schema.py creates and migrates the tables,
pgdirectory.py is the tenant directory and the host leases, leases.py keeps this host's lease,
routing.py decides which host serves a tenant (forward, claim) and keeps the view current,
moving.py is `migrate --to HOST_ID`, api.py the admin routes, node.py wires them into
`switchboard serve`. The worker side (journal commits and snapshots in PostgreSQL, fenced) is
tenant/pgstore.py and tenant/pgjournal.py.
"""
