"""systemd's readiness protocol (sd_notify), without libsystemd. Runs in the router.

Under `Type=notify` systemd puts the path of a datagram socket in $NOTIFY_SOCKET (a file
path, or an abstract socket when it starts with '@'); the service sends newline-separated
`KEY=VALUE` assignments to it, one datagram per message. The router sends:

    READY=1                                 once the front and admin listeners are bound
    RELOADING=1, MONOTONIC_USEC=<now>       when SIGHUP starts a reload of its settings
    READY=1                                 when that reload is done
    STOPPING=1                              when a SIGTERM or SIGINT starts the shutdown
    STATUS=<text>                           with each, what `systemctl status` shows

Outside systemd ($NOTIFY_SOCKET unset) every call does nothing. A send that fails is
logged once and otherwise ignored: readiness is a courtesy to the service manager, never a
reason for the router to stop.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("switchboard.notify")


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        address = os.environ.get("NOTIFY_SOCKET") if address is None else address
        if address and address.startswith("@"):
            address = "\0" + address[1:]  # the abstract namespace
        self.address = address or None
        self._warned = False

    def send(self, **fields: str | int) -> bool:
        """Send one message, e.g. `send(READY=1, STATUS="serving")`. True if it was sent."""
        if self.address is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(1.0)  # a datagram send does not block for long; bounded anyway
                sock.sendto(message, self.address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify the service manager at %s: %s",
                            self.address.replace("\0", "@"), exc)
            return False
        return True

    def ready(self, status: str) -> None:
        self.send(READY=1, STATUS=status, MAINPID=os.getpid())

    def reloading(self) -> None:
        self.send(RELOADING=1, MONOTONIC_USEC=time.monotonic_ns() // 1000,
                  STATUS="reloading the configuration")

    def stopping(self, status: str) -> None:
        self.send(STOPPING=1, STATUS=status)
