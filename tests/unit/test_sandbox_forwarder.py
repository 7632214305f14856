"""The gateway forwarder's relay (shared/sandbox_launcher.py `relay_connections`): every connection accepted on the
sandbox's 127.0.0.1:<gateway port> relayed to the host's unix socket both ways, with half-closes passed on and
back-pressure, in one thread whatever the number of connections (the forwarder counts against the sandbox's
pids.max). Run here in a forked process against a unix echo server standing for the host's relay."""

from __future__ import annotations

import os
import signal
import socket
import socketserver
import threading

import pytest

from shared.sandbox_launcher import relay_connections


class Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)
        self.request.shutdown(socket.SHUT_WR)  # the half-close answered with its own


@pytest.fixture
def forwarder(tmp_path):
    """(port, pid) of a forked process running the relay to an echo server's unix socket."""
    path = str(tmp_path / "gateway.sock")
    server = socketserver.ThreadingUnixStreamServer(path, Echo)
    server.daemon_threads = True
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    pid = os.fork()  # before the server's thread starts: the child is this one thread
    if pid == 0:  # pragma: no cover - the child
        try:
            server.socket.close()
            relay_connections(listener, path)
        finally:
            os._exit(0)
    listener_port = listener.getsockname()[1]
    listener.close()
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()  # a quick shutdown
    try:
        yield listener_port, pid
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        server.shutdown()
        server.server_close()


def threads_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("Threads:"))


def test_many_connections_at_once_in_one_thread(forwarder):
    port, pid = forwarder
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(40)]
    try:
        for number, sock in enumerate(held):
            sock.sendall(f"hello {number}".encode())
        for number, sock in enumerate(held):
            wanted = f"hello {number}".encode()
            got = _received(sock, len(wanted))
            assert got == wanted
        assert threads_of(pid) == 1  # 40 connections open: one thread (it was 80 more)
    finally:
        for sock in held:
            sock.close()


def test_a_large_transfer_both_ways_and_the_half_close(forwarder):
    """4 MiB through the relay while the client sends it all before reading (the relay holds at most one read per
    direction: the socket buffers fill and the sender waits); a half-close reaches the far end, whose own comes
    back once everything was echoed."""
    port, _ = forwarder
    body = os.urandom(4 << 20)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sender = threading.Thread(target=lambda: (sock.sendall(body), sock.shutdown(socket.SHUT_WR)))
        sender.start()
        got = bytearray()
        while data := sock.recv(1 << 16):
            got += data
        sender.join()
    assert bytes(got) == body  # all of it, in order, then the end of file


def test_a_connection_the_far_end_refuses_is_closed_and_the_relay_lives_on(forwarder, tmp_path):
    port, pid = forwarder
    os.unlink(tmp_path / "gateway.sock")  # the host's socket gone: the connection is closed, the relay lives on
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        assert sock.recv(10) == b""
    os.kill(pid, 0)  # still running


def _fork_relay(path: str, connect_wait: float = 5.0) -> tuple[int, int]:
    """(port, pid) of a forked process relaying to the unix socket `path` (a connection waits `connect_wait` s at
    most for room in its backlog)."""
    from shared import sandbox_launcher

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            sandbox_launcher.CONNECT_WAIT = connect_wait
            relay_connections(listener, path)
        finally:
            os._exit(0)
    port = listener.getsockname()[1]
    listener.close()
    return port, pid


def _fill_backlog(path: str) -> list[socket.socket]:
    """Connections queued on the unix socket at `path` until its backlog is full (the next connect: EAGAIN)."""
    queued = []
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(path)
        except BlockingIOError:
            sock.close()
            return queued
        queued.append(sock)


def _echo(sock: socket.socket) -> None:
    with sock:
        while data := sock.recv(65536):
            sock.sendall(data)


def _received(sock: socket.socket, size: int) -> bytes:
    """The next `size` bytes `sock` receives (fewer if it closes first)."""
    got = b""
    while len(got) < size and (data := sock.recv(100)):
        got += data
    return got


def _echoed(host: socket.socket, sock: socket.socket, data: bytes) -> bytes:
    """`data` sent on `sock` (a connection to the relay) and what comes back, the relay's upstream connection on
    `host` being accepted and echoed."""
    upstream, _ = host.accept()
    threading.Thread(target=_echo, args=(upstream,), daemon=True).start()
    sock.sendall(data)
    return _received(sock, len(data))


def _stop(queued: list[socket.socket], pid: int, host: socket.socket) -> None:
    """Closes the backlog's connections and the host's socket, and kills the relay."""
    for sock in queued:
        sock.close()
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    host.close()


def test_a_connect_waiting_for_a_full_backlog_does_not_stall_the_other_connections(tmp_path):
    """The host's socket has its backlog full (its relay busy): the relay's connect for a new connection was asked
    again in a loop for up to 5 s in the one thread that relays every connection of the sandbox, so an open
    connection's bytes waited those 5 s. Now the connect waits beside them, and goes through once there is room."""
    path = str(tmp_path / "gateway.sock")
    host = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    host.bind(path)
    host.listen(1)
    host.settimeout(10)
    port, pid = _fork_relay(path)
    queued: list[socket.socket] = []
    try:
        first = socket.create_connection(("127.0.0.1", port), timeout=10)
        upstream, _ = host.accept()
        threading.Thread(target=_echo, args=(upstream,), daemon=True).start()
        queued = _fill_backlog(path)
        assert queued, "the backlog took no connection"
        second = socket.create_connection(("127.0.0.1", port), timeout=10)
        first.settimeout(2)  # the old relay answered after its 5 s of connect attempts
        for number in range(20):  # while the second connection's connect is refused for want of room
            first.sendall(f"ping {number}".encode())
            wanted = f"ping {number}".encode()
            got = _received(first, len(wanted))
            assert got == wanted
        for _ in queued:  # room in the backlog: the second connection's connect goes through, in its turn
            host.accept()[0].close()
        assert _echoed(host, second, b"second") == b"second"
        first.close()
        second.close()
    finally:
        _stop(queued, pid, host)


def test_a_connection_that_finds_no_room_in_time_is_closed_and_the_relay_lives_on(tmp_path):
    path = str(tmp_path / "gateway.sock")
    host = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    host.bind(path)
    host.listen(1)
    host.settimeout(10)
    queued = _fill_backlog(path)
    port, pid = _fork_relay(path, connect_wait=0.2)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            assert sock.recv(10) == b""  # closed once its wait is over
        for _ in queued:
            host.accept()[0].close()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:  # room again: relayed
            assert _echoed(host, sock, b"again") == b"again"
    finally:
        _stop(queued, pid, host)
