"""The resumable channels' relay (remote/streams.py): two relays over socketpairs, cut and resumed.

The end-to-end behaviour (real sshd, real cuts, Jupyter clients) is tests/integration/test_resume.py.
"""
import os
import random
import selectors
import socket
import tempfile
import time

import pytest

from ssh_ipykernel.remote.streams import ACK, COUNT, DATA, HEADER, Held, Messages, Notice, Relay, frame, zmtp_message


class Pair:
    """The proxy's relay and the keeper's, linked by socketpairs that a test can cut."""

    def __init__(self, limit=1 << 20, open_conn=None, key="secret"):
        self.kernel_ends = {}
        self.sel_proxy = selectors.DefaultSelector()
        self.sel_keeper = selectors.DefaultSelector()
        self.notes = []
        self.proxy = Relay(self.sel_proxy, limit=limit)
        self.keeper = Relay(self.sel_keeper, limit=limit, open_conn=open_conn or self._socketpair_kernel,
                            notice=Notice(key, "hmac-sha256"), note=self.notes.append)
        self.link = None

    def _socketpair_kernel(self, number, channel):
        ours, kernels = socket.socketpair()
        kernels.setblocking(False)
        self.kernel_ends[number] = kernels
        return ours

    def connect(self):
        """What Channels.resume and Keeper._on_stream do, without the JSON lines."""
        ours, theirs = socket.socketpair()
        listing = self.proxy.listing()
        reply = self.keeper.answer(listing)
        self.keeper.attach(theirs.fileno(), theirs.fileno(), {k: v[1] for k, v in listing.items()},
                           on_end=theirs.close)
        self.proxy.attach(ours.fileno(), ours.fileno(), reply, on_end=ours.close)
        self.link = (ours, theirs)

    def cut(self):
        """Both sides lose the stream, with whatever was in flight in it."""
        self.proxy.detach()
        self.keeper.detach()

    def spin(self, seconds=0.2):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for sel in (self.sel_proxy, self.sel_keeper):
                for key, mask in sel.select(0.002):
                    key.data[0].service(key.data[1], mask)
            self.proxy.tick()
            self.keeper.tick()


def drain(sock, into):
    try:
        while True:
            data = sock.recv(1 << 20)
            if not data:
                return
            into += data
    except BlockingIOError:
        pass


def test_bytes_cross_both_ways_exactly_once_through_cuts():
    pair = Pair()
    client, proxy_end = socket.socketpair()
    client.setblocking(False)
    pair.proxy.add(1, "shell", proxy_end)
    pair.connect()
    pair.spin(0.05)
    kernel = pair.kernel_ends[1]
    rnd = random.Random(7)
    sent_up, got_up, sent_down, got_down = bytearray(), bytearray(), bytearray(), bytearray()
    for i in range(120):
        for sock, sent in ((client, sent_up), (kernel, sent_down)):
            data = os.urandom(rnd.randint(1, 40000))
            try:
                sent += data[:sock.send(data)]
            except BlockingIOError:
                pass
        pair.spin(0.005)
        if i % 30 == 15:
            pair.cut()  # mid-flight: frames in the socketpair and unacknowledged bytes are lost
            pair.spin(0.02)
            pair.connect()
        drain(kernel, got_up)
        drain(client, got_down)
    pair.spin(0.5)
    drain(kernel, got_up)
    drain(client, got_down)
    assert len(sent_up) > 1 << 20 and len(sent_down) > 1 << 20
    assert got_up == sent_up
    assert got_down == sent_down
    assert pair.proxy.buffered == 0 and pair.keeper.buffered == 0  # all acknowledged


def test_held_bytes_are_the_bytes_appended_less_those_let_go():
    rnd = random.Random(3)
    held, model = Held(), bytearray()
    for _ in range(400):
        op = rnd.random()
        if op < 0.5:
            data = os.urandom(rnd.randint(0, 3000))
            held.append(data)
            model += data
        elif op < 0.8:
            n = rnd.randint(0, len(model) + 10)
            held.cut(n)
            del model[:n]
        elif op < 0.9:
            a = rnd.randint(0, len(model))
            data = os.urandom(rnd.randint(0, 500))
            held[a:] = data
            model[a:] = data
        a = rnd.randint(0, len(model))
        b = rnd.randint(a, len(model))
        assert len(held) == len(model)
        assert held[a:b] == bytes(model[a:b])
        assert b"".join(held.views(a, b - a)) == bytes(model[a:b])


def test_held_finds_a_chunk_among_thousands_at_once():
    """A kernel printing a line at a time makes a chunk per line: framing after every read must
    not walk all the chunks held before the unsent ones (20000 lines took 9 s that way)."""
    held, sent = Held(), 0
    t0 = time.perf_counter()
    for _ in range(20000):
        held.append(b"x" * 1010)
        assert sum(len(view) for view in held.views(sent, len(held) - sent)) == 1010
        sent = len(held)
        if sent >= 8 << 20:
            held.cut(2 << 20)
            sent -= 2 << 20
    assert time.perf_counter() - t0 < 3


def test_a_data_frame_reaches_its_conn_as_it_comes_not_once_whole():
    """The proxy passes a frame's payload on as it arrives; frames and heads split anywhere."""
    sel = selectors.DefaultSelector()
    relay = Relay(sel)
    client, end = socket.socketpair()
    client.setblocking(False)
    relay.add(1, "iopub", end)
    ours, theirs = socket.socketpair()
    relay.attach(ours.fileno(), ours.fileno(), {"1": 0}, on_end=ours.close)
    first, second = os.urandom(200_000), os.urandom(5000)
    wire = frame(DATA, 1, first) + frame(ACK, 1, COUNT.pack(0)) + frame(DATA, 1, second)
    theirs.sendall(wire[:HEADER.size + 1000])
    relay._read_stream()
    got = bytearray()
    drain(client, got)
    assert got == first[:1000] and relay.conns[1].received == 1000
    at = HEADER.size + 1000
    rnd = random.Random(5)
    while at < len(wire):
        size = rnd.randint(1, 20_000)
        theirs.sendall(wire[at:at + size])
        at += size
        relay._read_stream()
        relay._flush_out(relay.conns[1])  # what the client's socket could not take at once
        drain(client, got)
    assert got == first + second and relay.conns[1].received == len(first) + len(second)
    assert not relay.inbuf
    relay.close()
    theirs.close()
    client.close()


def test_what_a_side_sends_during_an_outage_arrives_after_it_and_conns_come_and_go():
    pair = Pair()
    a, a_end = socket.socketpair()
    pair.proxy.add(1, "shell", a_end)
    pair.connect()
    pair.spin(0.05)
    pair.cut()
    a.sendall(b"request during the outage")
    pair.kernel_ends[1].sendall(b"output during the outage")
    b, b_end = socket.socketpair()
    pair.proxy.add(2, "iopub", b_end)  # a client that connects while the link is down
    a.close()  # ... and one that leaves meanwhile, after sending
    pair.spin(0.1)
    assert 2 not in pair.kernel_ends  # nothing reaches the keeper while cut
    pair.connect()
    pair.spin(0.3)
    got = bytearray()
    drain(pair.kernel_ends[1], got)
    assert got == b"request during the outage"
    assert 1 not in pair.keeper.conns and 1 not in pair.proxy.conns  # closed on both sides
    assert 2 in pair.kernel_ends  # opened on resume
    pair.kernel_ends[2].sendall(b"hello")
    pair.spin(0.1)
    b.setblocking(False)
    got = bytearray()
    drain(b, got)
    assert got == b"hello"


def test_the_keeper_answers_gone_for_a_conn_it_cannot_have():
    pair = Pair()
    assert pair.keeper.answer({"7": ["shell", 123]}) == {"7": -1}  # holds bytes it never sent
    assert pair.keeper.answer({"8": ["nonsense", 0]}) == {"8": -1}
    assert pair.keeper.answer({"9": ["hb", 0]}) == {"9": 0}


def test_a_kernel_side_that_refuses_closes_the_client():
    pair = Pair(open_conn=lambda number, channel: None)  # the kernel has not bound its socket yet
    client, end = socket.socketpair()
    pair.proxy.add(1, "shell", end)
    pair.connect()
    pair.spin(0.1)
    client.settimeout(1)
    assert client.recv(10) == b""  # the ZeroMQ client sees a closed connection and retries
    assert not pair.proxy.conns


def test_a_first_stream_carries_bytes_before_the_keepers_answer_is_read():
    """The proxy's first stream (Channels.resume(first=True)) frames what clients sent at once;
    the lines the keeper writes before its frames go to ``preamble``, the last one included, and
    a conn the keeper could not open is closed there."""
    pair = Pair()
    client, end = socket.socketpair()
    pair.proxy.add(1, "shell", end)
    client.sendall(b"request")
    lines = []

    def preamble(line):
        lines.append(line)
        return line == b"answer"

    ours, theirs = socket.socketpair()
    listing = pair.proxy.listing()
    pair.proxy.attach(ours.fileno(), ours.fileno(), {k: 0 for k in listing}, on_end=ours.close, preamble=preamble)
    pair.proxy.tick()  # frames leave before the keeper has even seen the listing
    reply = pair.keeper.answer(listing)
    assert reply == {"1": 0}
    pair.keeper.attach(theirs.fileno(), theirs.fileno(), {k: v[1] for k, v in listing.items()},
                       first=b"greeting\nlog line\nanswer\n", on_end=theirs.close)
    pair.spin(0.1)
    kernel = pair.kernel_ends[1]
    got = bytearray()
    drain(kernel, got)
    assert bytes(got) == b"request"
    kernel.sendall(b"reply")
    pair.spin(0.1)
    client.settimeout(1)
    assert client.recv(100) == b"reply"
    assert lines == [b"greeting", b"log line", b"answer"]
    assert pair.proxy.preamble is None


def test_an_error_before_the_frames_gives_the_stream_up():
    pair = Pair()
    client, end = socket.socketpair()
    pair.proxy.add(1, "shell", end)
    ended = []

    def preamble(line):
        raise ValueError(line.decode())

    ours, theirs = socket.socketpair()
    pair.proxy.attach(ours.fileno(), ours.fileno(), {"1": 0}, on_end=lambda: ended.append(True), preamble=preamble)
    theirs.sendall(b"no such kernel\n")
    pair.spin(0.1)
    assert ended == [True] and pair.proxy.stream_r is None
    assert 1 in pair.proxy.conns  # the client is kept for the next stream, as in an outage


# -- IOPub: whole messages, dropped oldest first past the limit, with a signed notice ----------------
def iopub_through_relays(limit):
    """A kernel's PUB socket (ipc), the two relays, and a client's SUB connected through them as
    Jupyter's would be: (zmq, ctx, pub, sub, pair)."""
    zmq = pytest.importorskip("zmq")
    path = os.path.join(tempfile.mkdtemp(dir="/tmp"), "iopub")
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.bind("ipc://" + path)

    def open_conn(number, channel):
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)
        return sock

    pair = Pair(limit=limit, open_conn=open_conn)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect("tcp://127.0.0.1:%d" % listener.getsockname()[1])
    pair.proxy.add(1, "iopub", listener.accept()[0])
    listener.close()
    pair.connect()
    pair.spin(0.3)
    return zmq, ctx, pub, sub, pair


def test_iopub_past_the_limit_drops_the_oldest_messages_and_says_so_in_their_cell():
    from jupyter_client.session import Session

    zmq, ctx, pub, sub, pair = iopub_through_relays(512 << 10)
    session = Session(key=b"secret")
    cell = session.msg("execute_request", {})
    other = session.msg("execute_request", {})
    session.send(pub, "stream", {"name": "stdout", "text": "before\n"}, parent=other)
    pair.spin(0.2)
    pair.cut()
    sent = 1000
    for i in range(sent):
        session.send(pub, "stream", {"name": "stdout", "text": "%d %s\n" % (i, "x" * 1000)}, parent=cell)
        if i % 50 == 0:
            pair.spin(0.005)
    pair.spin(0.2)
    pair.connect()
    pair.spin(1.0)
    texts, parents = [], []
    while sub.poll(200):
        _, frames = session.feed_identities(sub.recv_multipart())
        msg = session.deserialize(frames)  # checks the signature: the notice is signed with the key
        texts.append(msg["content"]["text"])
        parents.append(msg["parent_header"].get("msg_id"))
    assert texts[0] == "before\n"
    notices = [n for n, t in enumerate(texts) if t.startswith("[ssh_ipykernel]")]
    assert len(notices) == 1, texts[:5]
    notice = texts[notices[0]]
    assert parents[notices[0]] == cell["header"]["msg_id"]  # shown in the cell whose output it was
    # What was kept arrives merged: one message per run of a cell's stdout (a client's SUB
    # socket drops what passes 1000 queued messages).
    assert len(texts) < 10, len(texts)
    numbers = [int(line.split()[0]) for t in texts[1:] if not t.startswith("[ssh_ipykernel]")
               for line in t.splitlines()]
    dropped = int(notice.split()[1])
    assert numbers == list(range(dropped, sent))  # the oldest went; the rest in order, once each
    assert 0 < dropped < sent
    assert pair.notes[-1].startswith("dropped %d output messages" % dropped)  # and the kernel's log says so
    sub.close()
    pub.close()
    ctx.term()


def test_replies_are_never_dropped_the_relay_waits_instead():
    pair = Pair(limit=64 << 10)
    client, end = socket.socketpair()
    client.setblocking(False)
    pair.proxy.add(1, "shell", end)
    pair.connect()
    pair.spin(0.05)
    pair.cut()
    kernel = pair.kernel_ends[1]
    kernel.setblocking(False)
    sent = bytearray()
    for _ in range(100):
        data = os.urandom(8192)
        try:
            sent += data[:kernel.send(data)]
        except BlockingIOError:
            pass
        pair.spin(0.002)
    assert len(sent) > 128 << 10  # more than the limit went in: the socket buffers hold the rest
    assert pair.keeper.buffered <= (64 << 10) + (256 << 10)  # stopped reading past the limit
    pair.connect()
    got = bytearray()
    for _ in range(200):
        pair.spin(0.01)
        drain(client, got)
    assert got == sent


def test_the_parser_finds_the_same_messages_fed_in_any_pieces():
    greeting = b"\xff" + b"\0" * 8 + b"\x7f" + bytes([3, 0]) + b"NULL" + b"\0" * 16 + b"\0" + b"\0" * 31
    ready = bytes([4, 5]) + b"READY"
    stream = greeting + ready
    ends = []
    for n in range(20):
        parts = [b"topic", b"<IDS|MSG>", b"sig", b"{}", b"{}", b"{}", b"x" * (n * 40)]
        stream += zmtp_message(parts)
        ends.append(len(stream))
    whole = Messages()
    whole.feed(stream)
    pieces = Messages()
    rnd = random.Random(3)
    i = 0
    while i < len(stream):
        step = rnd.randint(1, 30)
        pieces.feed(stream[i:i + step])
        i += step
    assert list(whole.units) == list(pieces.units)
    assert [u[1] for u in whole.units if u[2] is True] == ends
    assert [u[2] for u in list(whole.units)[:2]] == [False, False]  # greeting and READY are never dropped
    older = Messages()
    older.feed(b"\xff" + b"\0" * 8 + b"\x7f" + bytes([1]) + b"\0" * 60)  # ZMTP 2: not ours to split
    assert older.off and not older.units


def test_output_cut_mid_message_arrives_whole_and_merged_once():
    """The link dies while a message is half across: what the proxy holds of it stays, the rest
    follows after the reconnect, and the messages behind it arrive merged, each line once."""
    from jupyter_client.session import Session

    zmq, ctx, pub, sub, pair = iopub_through_relays(64 << 20)
    session = Session(key=b"secret")
    cell = session.msg("execute_request", {})
    for i in range(400):
        session.send(pub, "stream", {"name": "stdout", "text": "%d %s\n" % (i, "y" * 3000)}, parent=cell)
    # The keeper reads and frames onto the link; the proxy reads only a little of it, in pieces
    # that end anywhere (a message's middle, most likely); then the link dies with the rest.
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        for key, mask in pair.sel_keeper.select(0.002):
            key.data[0].service(key.data[1], mask)
    ours = pair.link[0]
    held = pair.proxy.conns[1].received
    while pair.proxy.conns[1].received == held:  # a data frame or more, in pieces of odd sizes
        pair.proxy.inbuf += os.read(ours.fileno(), 50_021)
        pair.proxy._parse()
    pair.cut()
    pair.connect()
    pair.spin(1.0)
    lines = []
    count = 0
    while sub.poll(300):
        _, frames = session.feed_identities(sub.recv_multipart())
        msg = session.deserialize(frames)
        count += 1
        lines += [int(line.split()[0]) for line in msg["content"]["text"].splitlines()]
    assert lines == list(range(400))
    assert count < 400  # merged on the way
    sub.close()
    pub.close()
    ctx.term()
