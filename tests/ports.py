"""Ports for test servers, chosen outside the kernel's ephemeral range.

A port found with ``bind(port 0)`` and released comes from the ephemeral range, where Ray's own components (GCS,
raylet, agents) also take ports while a fleet starts, and the kernel readily hands a just-released port out
again. Ports between Ray's worker range (10002-19999) and the ephemeral range (32768+) avoid both.
"""

import random
import socket

LOW, HIGH = 20000, 32000


def free_port() -> int:
    """A port that is free now, from a range nothing else on this machine allocates automatically."""
    for _ in range(200):
        port = random.randint(LOW, HIGH)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port between {LOW} and {HIGH}")
