"""Cluster mode's admin API routes (signed like every admin call; docs/admin-api.md):

    GET  /v1/cluster/hosts                 [{"id", "router_url", "admin_url", "alive",
                                             "lease_expires_in_s", "resident",
                                             "max_resident"}], by id
    POST /v1/cluster/failover {"host": ID} {"host", "declared_dead": true}: its lease ends now,
                                           so the next request for each of its tenants claims
                                           it on a live host (404 for an unknown host); every
                                           live host is told to refresh its view at once
    POST /v1/cluster/refresh               {"refreshed": true}: look at the directory now
    POST /v1/cluster/tenants/{name}/migrate {"to": HOST_ID}
                                           {"name", "host", "moved_to", "epoch", "pause_ms",
                                            "precopy_ms", "started"} (switchboard/cluster/
                                           moving.py); any host takes it and, when another
                                           live host owns the tenant, sends it on to that one
                                           (with "hop": 1, answered there or 409)
    POST /v1/cluster/tenants/{name}/prepare {"epoch": N} | {"cancel": true}
                                           on a migration's target, from its source: warm up
                                           a parked worker for epoch N (the switch's), or drop
                                           it; {"name", "parked", "epoch"}
    POST /v1/cluster/tenants/{name}/take {"start": bool}
                                           on a migration's target, from its source: this
                                           host owns the tenant now; start it if asked
    POST /v1/cluster/tenants/{name}/changed
                                           {"name"}: another host claimed it; look it up now

On a host not in cluster mode they answer 409 "not in cluster mode".
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from switchboard.errors import BadRequest, SwitchboardError

if TYPE_CHECKING:  # psycopg is imported only in cluster mode
    from switchboard.cluster.moving import ClusterMigrator
    from switchboard.cluster.node import ClusterNode
    from switchboard.cluster.pgdirectory import PgDirectory
    from switchboard.cluster.routing import ClusterRouting


class NotInCluster(SwitchboardError):
    pass


class ClusterApi:
    def __init__(self) -> None:
        # Set once the host joined its cluster (switchboard/cluster/node.py).
        self.directory: PgDirectory | None = None
        self.migrator: ClusterMigrator | None = None
        self.routing: ClusterRouting | None = None
        self.node: ClusterNode | None = None

    def routes(self) -> list[Route]:
        tenant = "/v1/cluster/tenants/{name}"
        return [Route("/v1/cluster/hosts", self.hosts, methods=["GET"]),
                Route("/v1/cluster/failover", self.failover, methods=["POST"]),
                Route("/v1/cluster/refresh", self.refresh, methods=["POST"]),
                Route(tenant + "/migrate", self.migrate, methods=["POST"]),
                Route(tenant + "/prepare", self.prepare, methods=["POST"]),
                Route(tenant + "/take", self.take, methods=["POST"]),
                Route(tenant + "/changed", self.changed, methods=["POST"])]

    def _joined(self) -> tuple[PgDirectory, ClusterMigrator]:
        if self.directory is None or self.migrator is None:
            raise NotInCluster("not in cluster mode (serve --cluster postgresql://...)")
        return self.directory, self.migrator

    async def hosts(self, request: Request) -> Response:
        try:
            directory, _ = self._joined()
        except NotInCluster as exc:
            return _not_in_cluster(exc)
        return JSONResponse([dataclasses.asdict(h) for h in await directory.hosts()])

    async def failover(self, request: Request) -> Response:
        try:
            directory, _ = self._joined()
        except NotInCluster as exc:
            return _not_in_cluster(exc)
        host = (await _body(request)).get("host")
        if not isinstance(host, str) or not host:
            raise BadRequest("host (a host id) is required")
        if not await directory.declare_dead(host):
            return JSONResponse({"error": f"no host {host!r} in this cluster"}, status_code=404)
        if self.node is not None:
            await self.node.failed_over()
        return JSONResponse({"host": host, "declared_dead": True})

    async def refresh(self, request: Request) -> Response:
        if self.routing is None:
            return _not_in_cluster(NotInCluster("not in cluster mode"))
        await self.routing.refresh()
        return JSONResponse({"refreshed": True})

    async def migrate(self, request: Request) -> Response:
        from switchboard.admin import check_tenant_name
        from switchboard.cluster.moving import NotOwner

        try:
            _, migrator = self._joined()
        except NotInCluster as exc:
            return _not_in_cluster(exc)
        name = check_tenant_name(request.path_params["name"])
        body = await _body(request)
        to = body.get("to")
        if not isinstance(to, str) or not to:
            raise BadRequest("to (a host id) is required")
        if body.get("hop"):  # sent on by another host: the owner must be this one
            try:
                return JSONResponse(await migrator.migrate(name, to))
            except NotOwner as exc:
                return JSONResponse({"error": str(exc)}, status_code=409)
        return JSONResponse(await migrator.migrate_from_any_host(name, to))

    async def prepare(self, request: Request) -> Response:
        from switchboard.admin import check_tenant_name

        try:
            _, migrator = self._joined()
        except NotInCluster as exc:
            return _not_in_cluster(exc)
        name = check_tenant_name(request.path_params["name"])
        body = await _body(request)
        if body.get("cancel"):
            await migrator.cancel(name)
            return JSONResponse({"name": name, "parked": False})
        epoch = body.get("epoch")
        if not isinstance(epoch, int) or epoch < 2:
            raise BadRequest("epoch (the epoch the switch will set) is required")
        return JSONResponse(await migrator.prepare(name, epoch))

    async def take(self, request: Request) -> Response:
        from switchboard.admin import check_tenant_name

        try:
            _, migrator = self._joined()
        except NotInCluster as exc:
            return _not_in_cluster(exc)
        name = check_tenant_name(request.path_params["name"])
        start = bool((await _body(request)).get("start"))
        return JSONResponse(await migrator.take(name, start=start))


    async def changed(self, request: Request) -> Response:
        from switchboard.admin import check_tenant_name

        if self.routing is None:
            return _not_in_cluster(NotInCluster("not in cluster mode"))
        name = check_tenant_name(request.path_params["name"])
        await self.routing.refresh_one(name)
        return JSONResponse({"name": name})


def _not_in_cluster(exc: NotInCluster) -> Response:
    return JSONResponse({"error": str(exc)}, status_code=409)


async def _body(request: Request) -> dict[str, Any]:
    from switchboard.admin import json_object

    return json_object(await request.body(), empty=True)
