"""Loopback ports for tests and local runs."""
import socket


def freePort():
    """A currently free loopback TCP port (to be bound moments later by a child process)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refusingPort():
    """``(port, socket)``: a port held bound but not listening, so connecting to it is
    refused for as long as the caller keeps ``socket`` open (close it when done)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1], s
