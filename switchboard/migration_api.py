"""The admin API routes of moving tenants between hosts (signed like every admin route;
switchboard/admin.py mounts them, docs/admin-api.md lists them).

Source side (switchboard/migration.py), called by `switchboard migrate` and friends:

    POST   /v1/tenants/{name}/migrate {"to": ADMIN_URL}
                                   200 application/x-ndjson, streamed: one event a line as the
                                   move goes ({"step", "message", "bytes", "total", ...}), the
                                   last {"step": "done", "moved_to", "epoch", "pid",
                                   "pause_ms", ...} or {"step": "failed", "error", "serving":
                                   "source"|"target"|"unknown"}; 400 bad URL, 404 unknown
                                   tenant, 409 already moved or migrating
    POST   /v1/tenants/{name}/reclaim   200 TenantInfo: serve a moved copy here again (new
                                   epoch); 409 when it has not moved
    DELETE /v1/tenants/{name}/moved-copy 204: remove a moved copy; 409 when it has not moved
    POST   /v1/tenants/{name}/moved {"creation_id", "epoch", "moved_to"}
                                   200 TenantInfo: the host it moved to says where it went next

Target side (switchboard/receiving.py; the protocol is switchboard/handover.py's):

    GET    /v1/host                     200 {"router_url", "admin_url", "host"}
    POST   /v1/migrations/{name}/snapshot?creation_id=&epoch=&generation=&source_router=
                                   &source_admin=
                                   200 {"journal_pos", "generation"}; body = a snapshot file,
                                   streamed to transfers/ under max_import_bytes
    POST   /v1/migrations/{name}/commit?creation_id=&epoch=
                                   200 {"router_url", "epoch", "pid", "started", "error"};
                                   body = a journal bundle, streamed like the snapshot
    POST   /v1/migrations/{name}/resolve {"creation_id", "epoch"}
                                   200 {"outcome": "committed"|"aborted"}
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from snapshots.layout import DataLayout
from switchboard.admin import STAGED_BODY, StagedBody, check_tenant_name, json_object
from switchboard.api import TenantService
from switchboard.config import Config
from switchboard.directory import Directory
from switchboard.errors import BadRequest, ConfigError, MigrationRefused
from switchboard.forwarding import Forwarding, parse_router_url
from switchboard.migration import Migrator
from switchboard.peers import Peers
from switchboard.proxy import Proxy
from switchboard.receiving import Receiver
from switchboard.states import TenantState
from switchboard.supervisor import Supervisor


def _identity(params: Any) -> tuple[str, int]:
    creation_id = params.get("creation_id")
    epoch = params.get("epoch")
    if isinstance(epoch, str) and epoch.isdigit():
        epoch = int(epoch)
    if not isinstance(creation_id, str) or not creation_id or not isinstance(epoch, int) \
            or isinstance(epoch, bool) or epoch < 0:
        raise BadRequest("creation_id (text) and epoch (a whole number) are required")
    return creation_id, epoch


def _staged(request: Request) -> StagedBody | None:
    staged = request.scope.get(STAGED_BODY)
    return staged if isinstance(staged, StagedBody) and staged.size > 0 else None


class MigrationRoutes:
    def __init__(self, service: TenantService, migrator: Migrator, receiver: Receiver,
                 peers: Peers) -> None:
        self.service = service
        self.migrator = migrator
        self.receiver = receiver
        self.peers = peers

    def routes(self) -> list[Route]:
        tenant = "/v1/tenants/{name}"
        incoming = "/v1/migrations/{name}"
        return [
            Route("/v1/host", self.host, methods=["GET"]),
            Route(tenant + "/migrate", self.migrate, methods=["POST"]),
            Route(tenant + "/reclaim", self.reclaim, methods=["POST"]),
            Route(tenant + "/moved-copy", self.remove_moved_copy, methods=["DELETE"]),
            Route(tenant + "/moved", self.moved, methods=["POST"]),
            Route(incoming + "/snapshot", self.stage, methods=["POST"]),
            Route(incoming + "/commit", self.commit, methods=["POST"]),
            Route(incoming + "/resolve", self.resolve, methods=["POST"]),
        ]

    async def host(self, request: Request) -> Response:
        return JSONResponse(self.peers.info())

    async def migrate(self, request: Request) -> Response:
        name = check_tenant_name(request.path_params["name"])
        payload = json_object(await request.body())
        to = payload.get("to")
        if payload.get("back") is True and to is None:
            to = self.peers.origins.get(name)
            if to is None:
                raise MigrationRefused(f"this host does not know where {name} came from: "
                                       "give --to")
        if not isinstance(to, str):
            raise BadRequest('the body must be like {"to": "http://host-b:8001"}')
        try:
            parse_router_url(to)
        except ConfigError as exc:
            raise BadRequest(f"--to must be the target's admin URL (http://HOST:PORT): "
                              f"{exc}") from None
        events = self.migrator.start(name, to)

        async def lines() -> AsyncIterator[bytes]:
            async for event in events:
                yield json.dumps(event).encode() + b"\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def reclaim(self, request: Request) -> Response:
        info = await self.migrator.reclaim(check_tenant_name(request.path_params["name"]))
        return JSONResponse(info.to_json())

    async def remove_moved_copy(self, request: Request) -> Response:
        name = check_tenant_name(request.path_params["name"])
        info = self.service.get_tenant(name)
        if info.state != TenantState.MOVED.value:
            raise MigrationRefused(f"{name} has not moved away ({info.state}): `rm` without "
                                   "--moved-copy removes a tenant")
        await self.service.remove_tenant(name)
        return Response(status_code=204)

    async def moved(self, request: Request) -> Response:
        name = check_tenant_name(request.path_params["name"])
        payload = json_object(await request.body())
        creation_id, epoch = _identity(payload)
        moved_to = payload.get("moved_to")
        if not isinstance(moved_to, str):
            raise BadRequest("moved_to (a router URL) is required")
        try:
            parse_router_url(moved_to)
        except ConfigError as exc:
            raise BadRequest(str(exc)) from None
        info = await self.migrator.moved_on(name, creation_id, epoch, moved_to)
        return JSONResponse(info.to_json())

    async def stage(self, request: Request) -> Response:
        name = check_tenant_name(request.path_params["name"])
        params = request.query_params
        creation_id, epoch = _identity(params)
        generation = params.get("generation", "0")
        if not generation.isdigit():
            raise BadRequest("generation must be a whole number")
        staged = _staged(request)
        reply = await self.receiver.stage(
            name, creation_id=creation_id, epoch=epoch, generation=int(generation),
            snapshot=staged.path if staged else None,
            source_router=params.get("source_router", ""),
            source_admin=params.get("source_admin", ""))
        return JSONResponse(reply)

    async def commit(self, request: Request) -> Response:
        name = check_tenant_name(request.path_params["name"])
        creation_id, epoch = _identity(request.query_params)
        staged = _staged(request)
        reply = await self.receiver.commit(name, creation_id=creation_id, epoch=epoch,
                                           bundle=staged.path if staged else None)
        return JSONResponse(reply)

    async def resolve(self, request: Request) -> Response:
        name = check_tenant_name(request.path_params["name"])
        creation_id, epoch = _identity(json_object(await request.body()))
        outcome = await self.receiver.resolve(name, creation_id=creation_id, epoch=epoch)
        return JSONResponse({"outcome": outcome})


class Moving:
    """Everything of moving tenants that the server wires in (switchboard/server.py): the
    forwarding of moved tenants, the peers, both sides of a migration and their routes."""

    def __init__(self, config: Config, supervisor: Supervisor, directory: Directory,
                 layout: DataLayout, service: TenantService, proxy: Proxy) -> None:
        forwarding = Forwarding(self._moved_to, config.forward_mode)

        def trust(address: str) -> None:
            forwarding.peer_addresses.add(address)
            proxy.trusted.add(address)

        self.supervisor = supervisor
        self.peers = Peers(layout, config.advertise_url, config.advertise_admin_url, trust)
        self.migrator = Migrator(supervisor, directory, layout, config, self.peers)
        receiver = Receiver(supervisor, directory, layout, config, self.peers)
        self.routes = MigrationRoutes(service, self.migrator, receiver, self.peers).routes()
        proxy.forwarding = forwarding

    def _moved_to(self, name: str) -> str | None:
        tenant = self.supervisor.tenants.get(name)
        return tenant.record.moved_to if tenant is not None else None

    def started(self, listen: str, admin_listen: str) -> None:
        """The listeners are bound: this host's URLs are known (unless advertised), and a
        switch a restart interrupted is asked about."""
        if not self.peers.router_url:
            self.peers.router_url = f"http://{listen}"
        if not self.peers.admin_url:
            self.peers.admin_url = f"http://{admin_listen}"
        self.migrator.recover()
