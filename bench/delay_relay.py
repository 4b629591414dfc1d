"""A delaying TCP relay for an ssh ``ProxyCommand``: adds latency to a link without netem.

    ProxyCommand python -I -S bench/delay_relay.py --delay-ms 25 %h %p

ssh talks to this process over stdin/stdout; it connects to HOST:PORT and forwards both ways,
holding every chunk back for ``--delay-ms`` in each direction (so the round trip grows by twice
that). Each direction has a reader that stamps chunks as they arrive and a writer that releases
them in order once their time has come, so the delay is added to latency only: the reader keeps
reading while the writer waits, and throughput is not limited. Standard library only, so it
starts fast with ``-I -S``. A benchmark tool, not part of ssh_ipykernel.
"""
from __future__ import annotations

import argparse
import os
import queue
import socket
import sys
import threading
import time
from typing import Callable, Optional, Tuple

CHUNK = 256 * 1024
#: When one direction has ended, how long the other gets to drain before the relay exits.
DRAIN_TIMEOUT = 10.0

Item = Tuple[float, Optional[bytes]]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _reader(read: Callable[[], bytes], out: "queue.Queue[Item]", delay: float) -> None:
    try:
        while True:
            data = read()
            out.put((time.monotonic() + delay, data or None))
            if not data:
                return
    except OSError:
        out.put((time.monotonic() + delay, None))


def _writer(src: "queue.Queue[Item]", write: Callable[[bytes], None], finish: Callable[[], None],
            done: threading.Event) -> None:
    pending: Optional[Item] = None
    try:
        while True:
            due, data = pending or src.get()
            pending = None
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if data is None:
                return
            # Whatever else is already due goes out in the same write: one wake-up per burst,
            # not per chunk, so the relay keeps up with a fast link.
            batch = [data]
            while True:
                try:
                    item = src.get_nowait()
                except queue.Empty:
                    break
                if item[1] is None or item[0] > time.monotonic():
                    pending = item
                    break
                batch.append(item[1])
            write(batch[0] if len(batch) == 1 else b"".join(batch))
    except OSError:
        pass
    finally:
        try:
            finish()
        except OSError:
            pass
        done.set()


def relay(host: str, port: int, delay: float) -> None:
    """Forward stdin -> HOST:PORT and HOST:PORT -> stdout, each chunk ``delay`` seconds late."""
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # Nagle would add its own delay
    up: "queue.Queue[Item]" = queue.Queue()
    down: "queue.Queue[Item]" = queue.Queue()
    up_done, down_done = threading.Event(), threading.Event()
    threads = [
        threading.Thread(target=_reader, args=(lambda: os.read(0, CHUNK), up, delay), daemon=True),
        threading.Thread(target=_writer, args=(up, sock.sendall, lambda: sock.shutdown(socket.SHUT_WR),
                                               up_done), daemon=True),
        threading.Thread(target=_reader, args=(lambda: sock.recv(CHUNK), down, delay), daemon=True),
        threading.Thread(target=_writer, args=(down, lambda d: _write_all(1, d), lambda: os.close(1),
                                               down_done), daemon=True),
    ]
    for t in threads:
        t.start()
    # The server closing ends the session; ssh closing our stdin (it exited) gives the server
    # a moment to answer with its own close.
    while not down_done.wait(0.5):
        if up_done.is_set():
            down_done.wait(DRAIN_TIMEOUT)
            break
    sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--delay-ms", type=float, required=True, help="delay per direction (RTT/2)")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    args = parser.parse_args()
    try:
        relay(args.host, args.port, args.delay_ms / 1000)
    except OSError as e:
        print(f"delay_relay: {args.host}:{args.port}: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
