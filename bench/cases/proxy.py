"""Proxy throughput, CPU and latency: router vs direct-to-worker vs nginx proxy_pass.

One running tenant; the same tiny GET three ways: straight at the worker's port (direct),
through the router's `/t/<tenant>/` path, and through nginx proxy_pass with an upstream
keepalive pool (the front server users would run anyway). wrk -t1 -c32 for each, in rounds
that alternate the order, medians kept. CPU per request is the proxy process's utime+stime
over the run divided by the requests wrk counted (router process; nginx's worker and master).
Then the same at -c1, for the latency a lone request pays.
"""

from __future__ import annotations

from bench.cases import Context, median
from bench.harness import BenchError, http_get
from bench.load import NGINX, LoadResult, Nginx, run_load, warm
from bench.report import Figure, Goal


def proxy(ctx: Context) -> list[Figure]:
    router = ctx.main_router()
    router.create("hot")
    info = router.start_tenant("hot")
    worker_port = info["port"]
    if http_get(router.port, "/t/hot/hello")[0] != 200:
        raise BenchError("the hot tenant does not answer")
    targets: dict[str, tuple[int, str, list[int]]] = {
        "direct": (worker_port, "/hello", []),
        "router": (router.port, "/t/hot/hello", [router.proc.pid] if router.proc else []),
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
