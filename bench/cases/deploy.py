"""Through nginx as users deploy it: the generated site in path mode (nginx -> router ->
worker) and in direct mode (nginx -> worker, the router off the path), against nginx
proxy_pass straight to the worker with an upstream keepalive pool (the baseline), one router,
same run. Two nginx instances of the same build and settings (1 worker process each): one
site of the generated kind per nginx, as users run it (the path-mode site and the baseline
in one, the direct-mode site in the other, which the router reloads).

The sites are what `switchboard deploy-config nginx [--direct]` prints, loaded into a real
nginx (harness.webservers). wrk -t1 -c32 on the same tiny GET each way, in rounds that
alternate the order, medians kept. CPU per request counts every process on the path: nginx's
master and worker, plus the router for path and direct mode (in direct mode it should idle).
"""

from __future__ import annotations

import shlex
import textwrap

from bench.cases import Context, median
from bench.harness import BenchError, BenchRouter, http_get
from bench.load import LoadResult, run_load, warm
from bench.report import Figure
from harness.net import free_port
from harness.webservers import Nginx


def _baseline_site(port: int, worker_port: int) -> str:
    return textwrap.dedent(f"""\
        upstream bench_worker {{
            server 127.0.0.1:{worker_port};
            keepalive 32;
        }}
        server {{
            listen 127.0.0.1:{port};
            location / {{
                proxy_pass http://bench_worker;
                proxy_http_version 1.1;
                proxy_set_header Connection "";
            }}
        }}
        """)


def deploy(ctx: Context) -> list[Figure]:
    nginx = Nginx(ctx.work / "deploy-nginx").start()
    nginx_direct = Nginx(ctx.work / "deploy-nginx-direct").start()
    servers = {"path": nginx, "direct": nginx_direct, "worker": nginx}
    try:
        router = BenchRouter(ctx.procs, ctx.work / "deploy-router", port_range="33000-33999",
                             worker_transport="tcp")
        router.extra_env.update({
            "SWITCHBOARD_TRUSTED_PROXIES": "127.0.0.1",
            "SWITCHBOARD_DIRECT_MODE": "nginx",
            "SWITCHBOARD_DIRECT_RELOAD_COMMAND": shlex.join(nginx_direct.reload_command()),
        })
        router.start()
        router.create("hot")
        worker_port = router.start_tenant("hot")["port"]
        ports = {}
        for site, args in (("path", []), ("direct", ["--direct"])):
            port = free_port()
            text = router.cli("deploy-config", "nginx", "--listen", str(port), "--router",
                              f"127.0.0.1:{router.port}", "--data-dir", str(router.data_dir),
                              *args).stdout.decode()
            ports[site] = servers[site].add_site(site, text, port)
        ports["worker"] = nginx.add_site(
            "worker", _baseline_site(baseline := free_port(), worker_port), baseline)
        router_pid = [router.proc.pid] if router.proc else []
        targets = {  # port, path, whether the router's CPU counts
            "path": (ports["path"], "/t/hot/hello", True),
            "direct": (ports["direct"], "/t/hot/hello", True),
            "worker": (ports["worker"], "/hello", False),
        }
        for name, (port, path, _) in targets.items():
            if http_get(port, path)[0] != 200:
                raise BenchError(f"{name}: the hot tenant does not answer through nginx")
            warm(ctx.procs, port, path)
        before = router.tenant("hot")["requests"]
        results: dict[str, list[LoadResult]] = {name: [] for name in targets}
        order = list(targets)
        for round_no in range(ctx.sizes.load_rounds):
            ctx.log(f"deploy: round {round_no + 1}/{ctx.sizes.load_rounds} at -c32")
            for name in order[round_no % len(order):] + order[:round_no % len(order)]:
                port, path, with_router = targets[name]
                watch = servers[name].pids() + (router_pid if with_router else [])
                result = run_load(ctx.procs, port, path, connections=32,
                                  duration_s=ctx.sizes.load_s, watch=watch)
                if result.errors:
                    raise BenchError(f"{name}: {result.errors} errors under load")
                results[name].append(result)
        through_router = router.tenant("hot")["requests"] - before
        path_requests = sum(r.requests for r in results["path"])
        if through_router > path_requests * 1.01 + 100:
            raise BenchError(f"direct mode passed the router: {through_router} requests seen, "
                             f"{path_requests} sent in path mode")
    finally:
        nginx.stop()
        nginx_direct.stop()

    def rps(name: str) -> float:
        return median([r.rps for r in results[name]])

    def cpu(name: str) -> float:
        return median([r.cpu_us_per_request for r in results[name]])

    return [
        Figure.vs("deploy_nginx_path_rps", rps("path"), "req/s", "deploy_nginx_worker_rps",
                  rps("worker"), "deploy_nginx_path_vs_worker",
                  note="nginx -> router -> worker (generated site) vs nginx -> worker"),
        Figure.vs("deploy_nginx_direct_rps", rps("direct"), "req/s",
                  "deploy_nginx_worker_rps_again", rps("worker"),
                  "deploy_nginx_direct_vs_worker",
                  note="generated --direct site, nginx -> worker via the router's map"),
        Figure.vs("deploy_nginx_path_cpu_us_per_req", cpu("path"), "us",
                  "deploy_nginx_worker_cpu_us_per_req", cpu("worker"),
                  "deploy_nginx_path_cpu_vs_worker",
                  note="nginx + router CPU per request vs nginx alone to the worker"),
        Figure.vs("deploy_nginx_direct_cpu_us_per_req", cpu("direct"), "us",
                  "deploy_nginx_worker_cpu_us_per_req_again", cpu("worker"),
                  "deploy_nginx_direct_cpu_vs_worker",
                  note="nginx + (idle) router CPU per request, direct mode"),
    ]


