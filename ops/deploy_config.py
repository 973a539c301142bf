"""`switchboard deploy-config nginx|apache|systemd`: a complete, commented config for the front
server or the service manager, generated from the router's own settings.

The templates are files a reader can review, in ops/deploy/templates/. They use two
constructs and nothing else:

    {{name}}                 replaced by a value computed here (a missing name is an error)
    {% if [not] name [and [not] name ...] %} ... {% else %} ... {% endif %}
                             on lines of their own, nested; each `name` is a flag computed
                             here

The command takes serve's options (--config, --data-dir, the environment), so the numbers in
the output are those the router runs with: max_body_bytes, the timeouts, its listen address
(overridden by --router), trusted_proxies, routing. What the router itself must be set to for
the printed config to work (trusted_proxies, routing, direct_mode...) is printed at the top as
switchboard.toml lines, and a setting the current configuration lacks is named on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ops.errors import CommandError
from switchboard.config import Config, HostPort

TEMPLATES = Path(__file__).parent / "deploy" / "templates"
KINDS = {"nginx": "nginx.conf.tmpl", "apache": "apache.conf.tmpl",
         "systemd": "switchboard.service.tmpl"}
# The router's address as nginx and Apache reach it: trusted_proxies must hold it.
LOOPBACK_PROXIES = ("127.0.0.1", "::1")
DIRECT_FILES = {"nginx": "nginx.conf", "apache": "apache.conf"}  # under <data-dir>/direct/
APACHE_MODULES = "proxy proxy_http proxy_wstunnel headers rewrite"
APACHE_DIRECT_MODULES = "proxy_balancer lbmethod_byrequests slotmem_shm"
APACHE_MAX_BODY = 2_147_483_647  # LimitRequestBody's ceiling
STOP_MARGIN_S = 30  # TimeoutStopSec past the router's own stop deadline
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_DIRECTIVE = re.compile(r"^\s*\{%\s*(if\s+([\w ]+?)|else|endif)\s*%\}\s*$")


@dataclass(frozen=True)
class DeployRequest:
    """What the operator asked for on the command line."""

    kind: str
    server_name: str = "_"
    listen: int = 0  # 0: 80, or 443 with TLS
    router: HostPort | None = None  # None: the config's listen address
    host_mode: str = ""  # the base domain; "" for path mode unless the config says host
    direct: bool = False
    tls_cert: str = ""
    tls_key: str = ""
    user: str = "switchboard"
    config_file: str | None = None


def render_template(text: str, values: dict[str, Any]) -> str:
    """Fill a template (module docstring). Raises CommandError on a name without a value or
    an unbalanced if."""
    out: list[str] = []
    stack: list[bool] = []  # per open if: is its current branch emitted

    def emitting() -> bool:
        return all(stack)

    for number, line in enumerate(text.splitlines(keepends=True), 1):
        directive = _DIRECTIVE.match(line)
        if directive is None:
            if emitting():
                out.append(_fill(line, values, number))
            continue
        word = directive.group(1)
        if word.startswith("if"):
            stack.append(all(_condition(values, term.split(), number)
                             for term in directive.group(2).split(" and ")))
        elif not stack:
            raise CommandError(f"template line {number}: {word} without if")
        elif word == "else":
            stack[-1] = not stack[-1]
        else:
            stack.pop()
    if stack:
        raise CommandError("template: an if without endif")
    return "".join(out)


def _fill(line: str, values: dict[str, Any], number: int) -> str:
    return _PLACEHOLDER.sub(lambda m: _value(values, m.group(1), number), line)


def _condition(values: dict[str, Any], words: list[str], line: int) -> bool:
    negate = words[:1] == ["not"]
    if len(words) != 1 + negate:
        raise CommandError(f"template line {line}: cannot read condition {' '.join(words)!r}")
    return bool(_lookup(values, words[-1], line)) != negate


def _lookup(values: dict[str, Any], name: str, line: int) -> Any:
    if name not in values:
        raise CommandError(f"template line {line}: no value for {name!r}")
    return values[name]


def _value(values: dict[str, Any], name: str, line: int) -> str:
    return str(_lookup(values, name, line))


def render(request: DeployRequest, config: Config) -> str:
    """The config text for `request`, with `config` the router's settings."""
    template = (TEMPLATES / KINDS[request.kind]).read_text()
    return render_template(template, template_values(request, config))


def template_values(request: DeployRequest, config: Config) -> dict[str, Any]:
    router = request.router or config.listen
    router_host = "127.0.0.1" if router.host in ("", "0.0.0.0") else router.host
    router_text = f"[{router_host}]:{router.port}" if ":" in router_host else (
        f"{router_host}:{router.port}")
    base_domain = request.host_mode or (config.base_domain if config.routing == "host" else "")
    tls = bool(request.tls_cert)
    listen = request.listen or (443 if tls else 80)
    data_dir = config.data_dir.resolve()
    direct_name = DIRECT_FILES.get(request.kind) or DIRECT_FILES.get(
        config.direct_mode, DIRECT_FILES["nginx"])  # systemd: the router's web server
    read_timeout_s = math.ceil(config.start_timeout_s + config.request_timeout_s)
    values: dict[str, Any] = {
        "command_line": command_line(request),
        "mode_summary": ", ".join(filter(None, [
            f"host mode, *.{base_domain}" if base_domain else "path mode, /t/<tenant>/",
            "direct mode" if request.direct else "", "TLS" if tls else ""])),
        "toml_lines": "\n".join(f"#     {line}" for line in required_settings(
            request, config, base_domain)),
        "router": router_text,
        "router_keepalive_s": _number(config.keepalive_timeout_s),
        "upstream_keepalive_s": max(1, math.floor(config.keepalive_timeout_s * 0.8)),
        "host_mode": bool(base_domain),
        "base_domain": base_domain,
        "base_domain_re": re.escape(base_domain).replace("\\-", "-"),
        "direct": request.direct,
        "direct_file": data_dir / "direct" / direct_name,
        "direct_name": direct_name,
        "direct_transport_note": _transport_note(config),
        "tls": tls,
        "tls_cert": request.tls_cert,
        "tls_key": request.tls_key,
        "scheme": "https" if tls else "http",
        "listen": listen,
        "server_name": f"*.{base_domain}" if base_domain and request.kind == "nginx" else (
            request.server_name if request.server_name != "_" or request.kind == "nginx"
            else "localhost"),
        "max_body_bytes": config.max_body_bytes,
        "apache_body_limit": min(config.max_body_bytes, APACHE_MAX_BODY),
        "header_timeout_s": _number(config.header_timeout_s),
        "body_timeout_s": _number(config.body_timeout_s),
        "keepalive_timeout_s": _number(config.keepalive_timeout_s),
        "start_timeout_s": _number(config.start_timeout_s),
        "request_timeout_s": _number(config.request_timeout_s),
        "read_timeout_s": read_timeout_s,
        "modules": APACHE_MODULES + (f" {APACHE_DIRECT_MODULES}" if request.direct else "")
                   + (" ssl" if tls else ""),
        "user": request.user,
        "data_dir": data_dir,
        "work_dir": data_dir.parent,
        "exec_start": exec_start(request),
        "stop_timeout_s": _number(config.stop_timeout_s),
        "timeout_stop_s": math.ceil(config.stop_timeout_s) + STOP_MARGIN_S,
        "web_server_unit": "apache2" if config.direct_mode == "apache" else "nginx",
    }
    return values


def required_settings(request: DeployRequest, config: Config, base_domain: str) -> list[str]:
    """switchboard.toml lines the router needs for this config; the ones the current
    configuration lacks are named on stderr by the command."""
    if request.kind == "systemd":
        lines = [f'data_dir = "{config.data_dir.resolve()}"']
        if config.direct_mode:
            lines.append(f'direct_mode = "{config.direct_mode}"')
        return lines
    trusted = sorted(set(config.trusted_proxies) | set(LOOPBACK_PROXIES))
    lines = [f"listen = \"{request.router or config.listen}\"",
             "trusted_proxies = [" + ", ".join(f'"{p}"' for p in trusted) + "]"]
    if base_domain:
        lines += ['routing = "host"', f'base_domain = "{base_domain}"']
    else:
        lines.append('routing = "path"')
    if request.direct:
        lines.append(f'direct_mode = "{request.kind}"')
        lines.append('worker_transport = "tcp"' if config.worker_transport == "tcp"
                     or not config.worker_group else
                     f'worker_group = "{config.worker_group}"')
        reload = ("/usr/sbin/nginx -s reload" if request.kind == "nginx"
                  else "/usr/sbin/apachectl graceful")
        lines.append(f'direct_reload_command = "{config.direct_reload_command or reload}"')
    return lines


def missing_settings(request: DeployRequest, config: Config) -> list[str]:
    """What the router's current configuration lacks for the printed config to work."""
    if request.kind == "systemd":
        return []
    missing = []
    if not set(LOOPBACK_PROXIES) & set(config.trusted_proxies):
        missing.append("trusted_proxies does not list 127.0.0.1: the router drops the "
                       "forwarded headers (client address, scheme, host)")
    base_domain = request.host_mode or (config.base_domain if config.routing == "host" else "")
    if base_domain and (config.routing != "host" or config.base_domain != base_domain):
        missing.append(f'host mode needs routing = "host" and base_domain = "{base_domain}"')
    if not base_domain and config.routing == "host":
        missing.append('path mode needs routing = "path"')
    if request.direct and config.direct_mode != request.kind:
        missing.append(f'direct mode needs direct_mode = "{request.kind}"')
    if request.direct and config.worker_transport != "tcp" and not config.worker_group:
        missing.append('direct mode needs worker_transport = "tcp" (or worker_group set to '
                       "the web server's group)")
    return missing


def _transport_note(config: Config) -> str:
    if config.worker_transport == "tcp" or not config.worker_group:
        return "Workers listen on loopback ports (worker_transport = \"tcp\")."
    return (f"Workers listen on Unix sockets in <data-dir>/run/, which the web server's "
            f"user must be able to reach (worker_group = \"{config.worker_group}\").")


def exec_start(request: DeployRequest) -> str:
    """The serve command line for systemd: this installation's own `switchboard` script."""
    script = Path(sys.executable).parent / "switchboard"
    command = [str(script if script.exists() else Path(sys.argv[0]).resolve()), "serve"]
    if request.config_file:
        command += ["--config", str(Path(request.config_file).resolve())]
    return shlex.join(command)


def command_line(request: DeployRequest) -> str:
    words = [request.kind]
    if request.server_name != "_":
        words += ["--server-name", request.server_name]
    if request.listen:
        words += ["--listen", str(request.listen)]
    if request.router is not None:
        words += ["--router", str(request.router)]
    if request.host_mode:
        words += ["--host-mode", request.host_mode]
    if request.direct:
        words.append("--direct")
    if request.tls_cert:
        words += ["--tls-cert", request.tls_cert, "--tls-key", request.tls_key]
    if request.kind == "systemd" and request.user != "switchboard":
        words += ["--user", request.user]
    return shlex.join(words)


def _number(value: float) -> str:
    return f"{value:g}"


# --- the command -------------------------------------------------------------------------


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Register `deploy-config` (ops/cli.py calls this once)."""
    from ops import cli

    parser = commands.add_parser(
        "deploy-config", conflict_handler="resolve",  # serve's options, not `common`
        help="print an nginx or Apache site, or a systemd unit, for this router's settings")
    cli.serve_options(parser)  # --config, --data-dir, ... as serve reads them
    parser.add_argument("kind", choices=sorted(KINDS), metavar="nginx|apache|systemd")
    # After serve's options: this --listen (the web server's port) replaces serve's.
    parser.add_argument("--listen", dest="web_listen", metavar="PORT", type=_port, default=0,
                        help="the port the web server listens on (default 80, 443 with TLS)")
    parser.add_argument("--server-name", default="_", metavar="NAME",
                        help="the site's host name (default: any)")
    parser.add_argument("--router", metavar="HOST:PORT", type=_router,
                        help="the router's address (default: its listen setting)")
    parser.add_argument("--host-mode", metavar="BASE_DOMAIN", type=_domain, default=None,
                        help="route <tenant>.BASE_DOMAIN (default: the routing setting)")
    parser.add_argument("--direct", action="store_true",
                        help="send resident tenants' requests straight to their workers")
    parser.add_argument("--tls-cert", metavar="PATH", default="")
    parser.add_argument("--tls-key", metavar="PATH", default="")
    parser.add_argument("--user", default="switchboard", metavar="NAME",
                        help="systemd: the dedicated user the router runs as")
    parser.set_defaults(handler=cmd_deploy_config, listen=None)


def cmd_deploy_config(args: argparse.Namespace) -> int:
    from ops import cli

    if bool(args.tls_cert) != bool(args.tls_key):
        raise CommandError("--tls-cert and --tls-key go together")
    args.listen = None if args.router is None else str(args.router)  # serve's --listen
    config = cli.serve_config(args)
    request = DeployRequest(
        kind=args.kind, server_name=args.server_name, listen=args.web_listen,
        router=args.router, host_mode=args.host_mode or "", direct=args.direct,
        tls_cert=args.tls_cert, tls_key=args.tls_key, user=args.user,
        config_file=args.config,
    )
    if request.kind == "systemd" and config.direct_mode:
        request = dataclasses.replace(request, direct=True)  # its reload note
    sys.stdout.write(render(request, config))
    for problem in missing_settings(request, config):
        print(f"switchboard: note: {problem}", file=sys.stderr)
    return 0


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}")
    return int(text)


def _router(text: str) -> HostPort:
    from switchboard.errors import ConfigError

    try:
        address = HostPort.parse(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if address.port == 0:
        raise argparse.ArgumentTypeError("the router's port cannot be 0")
    return address


def _domain(text: str) -> str:
    domain = text.strip().lower().rstrip(".")
    if not re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*",
                        domain):
        raise argparse.ArgumentTypeError(f"not a domain name: {text!r}")
    return domain
