"""A raw TCP server on a free loopback port, for tests that need a peer with exact behaviour."""

from __future__ import annotations

import socket
import threading


class LoopbackServer:
    """Accepts connections on ``127.0.0.1:port`` and hands each to :meth:`_connection` on a
    thread of its own; :attr:`connections` counts them. Subclasses set their own attributes
    before calling ``super().__init__()``, which starts accepting."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            self.connections += 1
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop accepting (connections already open run to their end)."""
        self.sock.close()
