"""Cluster mode's admin API routes (signed like every admin call; docs/admin-api.md):

    GET  /v1/cluster/hosts                 [{"id", "router_url", "admin_url", "alive",
                                             "lease_expires_in_s", "resident",
                                             "max_resident"}], by id
    POST /v1/cluster/failover {"host": ID} {"host", "declared_dead": true}: its lease ends now,
                                           so the next request for each of its tenants claims
                                           it on a live host (404 for an unknown host)

On a host not in cluster mode both answer 409 "not in cluster mode".
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from switchboard.errors import BadRequest, SwitchboardError

if TYPE_CHECKING:  # psycopg is imported only in cluster mode
    from switchboard.cluster.pgdirectory import PgDirectory


class NotInCluster(SwitchboardError):
    pass


class ClusterApi:
    def __init__(self) -> None:
        self.directory: PgDirectory | None = None  # set once the host joined its cluster

    def routes(self) -> list[Route]:
        return [Route("/v1/cluster/hosts", self.hosts, methods=["GET"]),
                Route("/v1/cluster/failover", self.failover, methods=["POST"])]

    def _directory(self) -> PgDirectory:
        if self.directory is None:
            raise NotInCluster("not in cluster mode (serve --cluster postgresql://...)")
        return self.directory

    async def hosts(self, request: Request) -> Response:
        try:
            hosts = await self._directory().hosts()
        except NotInCluster as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        return JSONResponse([dataclasses.asdict(h) for h in hosts])

    async def failover(self, request: Request) -> Response:
        try:
            directory = self._directory()
        except NotInCluster as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        try:
            payload = json.loads(await request.body() or b"{}")
        except ValueError as exc:
            raise BadRequest("the body is not JSON") from exc
        host = payload.get("host") if isinstance(payload, dict) else None
        if not isinstance(host, str) or not host:
            raise BadRequest("host (a host id) is required")
        if not await directory.declare_dead(host):
            return JSONResponse({"error": f"no host {host!r} in this cluster"}, status_code=404)
        return JSONResponse({"host": host, "declared_dead": True})
