"""Proxy throughput, CPU and latency: router vs direct-to-worker vs nginx proxy_pass.

The same tiny GET four ways: through the router's `/t/<tenant>/` path to a worker on a Unix
socket (the default transport), through a second router whose worker listens on a TCP port
(`worker_transport = "tcp"`), straight at that TCP worker (direct: wrk speaks TCP only), and
through nginx proxy_pass to the TCP worker with an upstream keepalive pool (the front server
users would run anyway). wrk -t1 -c32 for each, in rounds that alternate the order, medians
kept. CPU per request is the proxy process's utime+stime over the run divided by the requests
wrk counted (router process; nginx's worker and master). Then the same at -c1, for the latency
a lone request pays.
"""

from __future__ import annotations

from bench.cases import Context, median
from bench.harness import BenchError, BenchRouter, http_get
from bench.load import NGINX, LoadResult, Nginx, run_load, warm
from bench.report import Figure, Goal


def proxy(ctx: Context) -> list[Figure]:
    router = ctx.main_router()
    router.create("hot")
    router.start_tenant("hot")
    tcp_router = BenchRouter(ctx.procs, ctx.work / "tcp-router", port_range="32000-32999",
                             worker_transport="tcp").start()
    tcp_router.create("hot")
    worker_port = tcp_router.start_tenant("hot")["port"]
    for each in (router, tcp_router):
        if http_get(each.port, "/t/hot/hello")[0] != 200:
            raise BenchError("the hot tenant does not answer")
    targets: dict[str, tuple[int, str, list[int]]] = {
        "direct": (worker_port, "/hello", []),
        "router": (router.port, "/t/hot/hello", [router.proc.pid] if router.proc else []),
        "router_tcp": (tcp_router.port, "/t/hot/hello",
                       [tcp_router.proc.pid] if tcp_router.proc else []),
    }
    nginx = None
    if NGINX is not None:
        nginx = Nginx(ctx.procs, ctx.work / "nginx", worker_port).start()
        targets["nginx"] = (nginx.port, "/hello", nginx.pids())
    try:
        for port, path, _ in targets.values():
            warm(ctx.procs, port, path)
        results: dict[str, list[LoadResult]] = {name: [] for name in targets}
        order = list(targets)
        for round_no in range(ctx.sizes.load_rounds):
            ctx.log(f"proxy: round {round_no + 1}/{ctx.sizes.load_rounds} at -c32")
            for name in order[round_no % len(order):] + order[:round_no % len(order)]:
                port, path, watch = targets[name]
                result = run_load(ctx.procs, port, path, connections=32,
                                  duration_s=ctx.sizes.load_s, watch=watch)
                if result.errors:
                    raise BenchError(f"{name}: {result.errors} errors under load")
                results[name].append(result)
        ctx.log("proxy: -c1 latency")
        lone = {name: run_load(ctx.procs, port, path, connections=1,
                               duration_s=ctx.sizes.latency_load_s)
                for name, (port, path, _) in targets.items()}
    finally:
        if nginx is not None:
            nginx.stop()
        tcp_router.stop()
    ctx.shared["proxy_tool"] = results["direct"][0].tool

    def rps(name: str) -> float:
        return median([r.rps for r in results[name]])

    def p99(name: str) -> float:
        return median([r.p99_ms for r in results[name]])

    def cpu(name: str) -> float:
        return median([r.cpu_us_per_request for r in results[name]])

    figures = [
        Figure.vs("proxy_rps", rps("router"), "req/s", "direct_rps", rps("direct"), "proxy_ratio",
                  note="wrk -t1 -c32 straight at the worker's port"),
        Figure.vs("proxy_added_p99_ms", p99("router") - p99("direct"), "ms",
                  "direct_p99_ms", p99("direct"), "proxy_p99_ratio",
                  goal=Goal("value", "<=", 1.0),
                  note="wrk --latency p99 at -c32, router minus direct"),
        Figure.vs("proxy_added_p99_ms_c1", lone["router"].p99_ms - lone["direct"].p99_ms, "ms",
                  "direct_p99_ms_c1", lone["direct"].p99_ms, "proxy_p99_ratio_c1",
                  note="one connection, one request at a time: the latency the relay adds"),
        Figure.vs("proxy_added_p50_ms_c1", lone["router"].p50_ms - lone["direct"].p50_ms, "ms",
                  "direct_p50_ms_c1", lone["direct"].p50_ms, "proxy_p50_ratio_c1",
                  note="the median of the same (steadier than a p99 on a shared machine)"),
        Figure.vs("proxy_unix_rps", rps("router"), "req/s", "proxy_tcp_rps", rps("router_tcp"),
                  "proxy_unix_vs_tcp",
                  note="the router to a Unix-socket worker (default) vs to a TCP one"),
        Figure.vs("proxy_unix_cpu_us_per_req", cpu("router"), "us", "proxy_tcp_cpu_us_per_req",
                  cpu("router_tcp"), "proxy_unix_vs_tcp_cpu",
                  note="router CPU per request, Unix-socket worker vs TCP worker"),
    ]
    if "nginx" in results:
        figures[1:1] = [
            Figure.vs("proxy_rps_vs_nginx", rps("router"), "req/s", "nginx_rps", rps("nginx"),
                      "proxy_vs_nginx", goal=Goal("ratio", ">=", 0.7),
                      note="nginx 1 worker, proxy_pass to the same worker, upstream keepalive 32"),
            Figure.vs("proxy_cpu_us_per_req", cpu("router"), "us", "nginx_cpu_us_per_req",
                      cpu("nginx"), "proxy_cpu_vs_nginx",
                      goal=Goal("ratio", "<=", 1.5, "DESIGN.md"),
                      note="utime+stime of the proxy process(es) per request"),
            Figure("nginx_added_p99_ms", p99("nginx") - p99("direct"), "ms",
                   note="nginx's own added p99 at -c32, for scale"),
            Figure("nginx_added_p99_ms_c1", lone["nginx"].p99_ms - lone["direct"].p99_ms, "ms",
                   note="nginx's own added p99 at -c1, for scale"),
        ]
    return figures
