"""A loopback TCP proxy that a test (or a bench) controls: it forwards bytes to a target
port, and on command cuts every connection through it (and refuses new ones for a
while), or holds each chunk it forwards for a delay.

    proxy = TcpProxy(target_port)      # listens on 127.0.0.1:proxy.port
    proxy.cut(2.0)                     # reset every connection; refuse new ones for 2 s
    proxy.delay = 1.5                  # every chunk, either way, waits 1.5 s
    proxy.close()

A refused connection is accepted and reset at once (the port stays ours, so nothing else
can take it while the proxy is cut). One thread per direction of each connection: the
proxy is for tests, not for load.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

CHUNK = 65536


def _reset(sock: socket.socket, in_use: bool = False) -> None:
    """Close with an RST (SO_LINGER 0), as a crashed peer looks to the other side. A socket
    `in_use` by a thread blocked reading it is shut down first (its peer then sees a FIN,
    then the RST): a bare close would leave the connection open until that read returned,
    which it never would."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if in_use:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class TcpProxy:
    """Forwards 127.0.0.1:`port` to 127.0.0.1:`target_port`; `cut`, `delay` and counts."""

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (host, target_port)
        self.delay = 0.0  # seconds each forwarded chunk waits
        self.accepted = 0  # connections forwarded
        self.refused = 0  # connections reset because the proxy was cut
        self.cuts = 0
        self._refusing_until = 0.0
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._listener = socket.create_server((host, 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        threading.Thread(target=self._accept_loop, name=f"proxy-{self.port}", daemon=True).start()

    def cut(self, seconds: float = 0.0) -> int:
        """Reset every open connection and refuse new ones for `seconds`; how many were cut."""
        with self._lock:
            self._refusing_until = max(self._refusing_until, time.monotonic() + seconds)
            pairs, self._pairs = self._pairs, set()
            self.cuts += 1
        for client, upstream in pairs:
            _reset(client, in_use=True)
            _reset(upstream, in_use=True)
        return len(pairs)

    def heal(self) -> None:
        """Take new connections again now, and stop delaying."""
        with self._lock:
            self._refusing_until = 0.0
        self.delay = 0.0

    @property
    def refusing(self) -> bool:
        return time.monotonic() < self._refusing_until

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.cut()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.refusing:
                self.refused += 1
                _reset(client)
                continue
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
        except OSError:
            _reset(client)  # the target is down: the client sees what it would without us
            return
        pair = (client, upstream)
        with self._lock:
            if self.refusing:  # cut while we were connecting
                _reset(client)
                _reset(upstream)
                return
            self._pairs.add(pair)
            self.accepted += 1
        other = threading.Thread(target=self._pump, args=(client, upstream), daemon=True)
        other.start()
        self._pump(upstream, client)
        other.join()
        with self._lock:
            if pair not in self._pairs:
                return  # cut: already reset
            self._pairs.discard(pair)
        client.close()
        upstream.close()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(CHUNK):
                if self.delay:
                    time.sleep(self.delay)
                sink.sendall(chunk)
            sink.shutdown(socket.SHUT_WR)  # pass a half-close on
        except OSError:  # cut, or one side reset: end the other direction too
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
