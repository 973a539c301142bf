"""The operator dashboard: server-rendered HTML on the admin listener, behind a session cookie.

Signing in (Jupyter's token URL is the model): `switchboard dashboard` makes a signed
`POST /v1/dashboard/login-url`, which answers `{"path": "/dashboard/login?token=T",
"expires_in_s": 300}`; the CLI prints its admin URL plus that path. Opening it once redeems
the token (single use, LOGIN_TOKEN_TTL_S; a used, expired or unknown one gets 403) for a
session: an HttpOnly, SameSite=Strict cookie `sb_dashboard` with Path=/dashboard, and a
redirect to the tenant list at `/dashboard/`. The cookie's path matters: browsers send a
host's cookies to every port of it, and under /dashboard it never goes with a request to the
router's port, where it would reach a tenant's app (tenants live under /t/ or on hosts of their
own).

The dashboard's own routes are not HMAC-signed (a browser cannot sign); `Dashboard.in_front_of`
sends `/`, `/favicon.ico` and `/dashboard/...` here and everything else on to the signed admin API:

    GET  /                                 303 to /dashboard/
    GET  /dashboard/                       the tenant list, one page
                                           (?page=N&sort=KEY&order=asc|desc)
    GET  /dashboard/rows                   the same page's rows as {"html", "total", "pages"},
                                           polled every 2 s by the page's script
    GET  /dashboard/t/{name}               one tenant: every TenantInfo field, the actions and
                                           the last 40 lines of its log
    GET  /dashboard/t/{name}/fields        that page's fields as {"html"}, polled the same way
    POST /dashboard/t/{name}/{action}      action = checkpoint | stop | start, through the same
                                           TenantService as the signed routes
    POST /dashboard/logout                 ends the session
    GET  /dashboard/login?token=T          redeems a login token (above)
    GET  /dashboard/signin                 says to run `switchboard dashboard`
    GET  /dashboard/static/{file}          the stylesheet and the script
    GET  /favicon.ico                      204 (browsers ask for it)

Without a valid session a page redirects to /dashboard/signin and anything else gets 403.
Every POST must carry the session's CSRF token, as the form field `csrf` or the header
`X-CSRF-Token` (the page holds it; a cross-site form cannot read it): without it, 403.
POST bodies are read under MAX_FORM_BYTES (413 beyond). Pages are paginated server-side
(PAGE_SIZE rows) so a host with 10,000 tenants renders 100 rows, not 10,000.
"""

from switchboard.dashboard.app import Dashboard
from switchboard.dashboard.sessions import Sessions

__all__ = ["Dashboard", "Sessions"]
