"""Build the devserver and serve it with uvicorn (httptools when installed, no access log)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

import uvicorn

from fluxrate_web.devserver import coalesce, jwt
from fluxrate_web.devserver.app import DevState, build_app
from fluxrate_web.devserver.faults import FaultInjector, FaultSettings
from fluxrate_web.devserver.seed import Seed
from fluxrate_web.devserver.service import Service
from fluxrate_web.devserver.store import Store

READY_PREFIX = "FLUXRATE_DEVSERVER_READY "


@dataclass(slots=True)
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 8787
    db: str | None = None
    seed: Seed = field(default_factory=Seed)
    strict_customers: bool = False
    faults: FaultSettings = field(default_factory=FaultSettings)
    fault_seed: int | None = None
    jwt_secret: str = jwt.DEFAULT_SECRET
    validation_status: int | None = None
    keep_alive: float = 60.0
    json_banner: bool = False
    log_level: str = "warning"
    coalesce: bool = True
    http: str = "auto"
    loop: str = "auto"


def build_state(options: ServerOptions) -> DevState:
    store = Store(options.db)
    options.seed.apply_defaults()
    store.apply_seed(options.seed)
    service = Service(
        store,
        strict_customers=options.strict_customers,
        jwt_secret=options.jwt_secret,
        validation_status=options.validation_status,
    )
    return DevState(store, service, FaultInjector(options.faults, options.fault_seed))


def describe(state: DevState, url: str) -> dict[str, Any]:
    store = state.store
    return {
        "url": url,
        "db": store.path,
        "strict_customers": state.service.strict_customers,
        "organizations": [
            {
                "id": org.id,
                "name": org.name,
                "api_keys": [
                    {"key": k.key, "scopes": sorted(k.scopes)}
                    for k in store.api_keys.values()
                    if k.org_id == org.id
                ],
                "meters": {
                    m.name: {"id": m.id, "token": m.token, "aggregation": m.aggregation.value}
                    for m in store.meters(org.id)
                },
                "customers": {c.external_id: c.id for c in store.customers(org.id)},
            }
            for org in store.orgs.values()
        ],
        "faults": state.faults.describe(),
    }


def print_banner(info: dict[str, Any], out: TextIO) -> None:
    lines = [f"Fluxrate devserver on {info['url']}  (dashboard: {info['url']}/)"]
    lines.append(f"  storage: {info['db'] or 'in memory'}")
    for org in info["organizations"]:
        lines.append(f"  organization {org['name']} ({org['id']})")
        for key in org["api_keys"]:
            lines.append(f"    X-API-Key: {key['key']}  scopes: {', '.join(key['scopes'])}")
        for name, meter in org["meters"].items():
            lines.append(
                f"    meter {name:<14} {meter['aggregation']:<13} "
                f"meter_token={meter['token']}  meter_id={meter['id']}"
            )
        for ext, cid in org["customers"].items():
            lines.append(f"    customer {ext}  id={cid}")
    if info["faults"]["active"]:
        lines.append(f"  faults: {info['faults']}")
    lines.append("  mint a dashboard JWT for POST /api/v1/usage with: fluxrate-web token")
    out.write("\n".join(lines) + "\n")
    out.flush()


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only when proto says TCP
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def serve(options: ServerOptions, out: TextIO = sys.stdout) -> int:
    logging.basicConfig(
        level=getattr(logging, options.log_level.upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    http = coalesce.resolve_http(options.http)
    loop = coalesce.resolve_loop(options.loop)
    state = build_state(options)
    sock = bind_socket(options.host, options.port)
    host, port = sock.getsockname()[:2]
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{port}"
    config = uvicorn.Config(
        build_app(state),
        http=coalesce.protocol_class(http) if options.coalesce else http,
        lifespan="on",
        access_log=False,
        log_config=None,
        log_level=options.log_level,
        timeout_keep_alive=int(options.keep_alive),
        timeout_graceful_shutdown=2,
        server_header=False,
    )
    server = uvicorn.Server(config)

    async def main() -> None:
        task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():  # noqa: ASYNC110 - uvicorn has no event
            await asyncio.sleep(0.005)
        if server.started:
            info = describe(state, url)
            info["http"] = http + (" (coalescing)" if options.coalesce else "")
            info["loop"] = loop
            if options.json_banner:
                out.write(READY_PREFIX + json.dumps(info) + "\n")
                out.flush()
            else:
                print_banner(info, out)
        await task

    try:
        if loop == "uvloop":
            import uvloop

            uvloop.run(main())
        else:
            asyncio.run(main())
    except KeyboardInterrupt:  # pragma: no cover - second Ctrl-C
        pass
    finally:
        sock.close()
        state.store.close()
    return 0 if server.started else 1


__all__ = ["READY_PREFIX", "ServerOptions", "build_state", "serve"]
