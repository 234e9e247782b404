"""Edge cases driven by python3-libnbd (and a raw socket where libnbd cannot misbehave enough).

Usage: edge.py CASE ARGS...; prints "ok" when every check of CASE held, raises otherwise.
"""
import errno
import os
import socket
import struct
import sys

import nbd

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC_OPT = 0x0003E889045565A9


def connect(uri, contexts=(), structured=True):
    h = nbd.NBD()
    h.set_request_structured_replies(structured)
    for c in contexts:
        h.add_meta_context(c)
    h.connect_uri(uri)
    return h


def expect_error(fn, want, what):
    try:
        fn()
    except nbd.Error as e:
        assert e.errnum == want, f"{what}: got {e.errno} ({e.string}), want {errno.errorcode[want]}"
        return
    raise AssertionError(f"{what}: no error")


def out_of_range(uri, size):
    size = int(size)
    h = connect(uri, ["base:allocation"])
    # Let the requests reach the server instead of being refused by libnbd itself.
    h.set_strict_mode(0)
    expect_error(lambda: h.pread(4096, size), errno.EINVAL, "read past the end")
    expect_error(lambda: h.pread(4096, size - 2048), errno.EINVAL, "read across the end")
    expect_error(lambda: h.pwrite(b"x" * 4096, size - 2048), errno.ENOSPC, "write across the end")
    expect_error(lambda: h.zero(8192, size), errno.ENOSPC, "zero past the end")
    expect_error(lambda: h.trim(8192, size), errno.EINVAL, "trim past the end")
    expect_error(lambda: h.cache(8192, size), errno.EINVAL, "cache past the end")
    expect_error(lambda: h.block_status(4096, size, lambda *a: 0), errno.EINVAL, "status past the end")
    # The connection is still good.
    h.pwrite(b"y" * 4096, size - 4096)
    assert h.pread(4096, size - 4096) == b"y" * 4096
    h.shutdown()
    print("ok")


def read_only(uri):
    h = connect(uri)
    assert h.is_read_only()
    h.set_strict_mode(0)
    expect_error(lambda: h.pwrite(b"x" * 512, 0), errno.EPERM, "write to read-only")
    expect_error(lambda: h.zero(512, 0), errno.EPERM, "zero on read-only")
    expect_error(lambda: h.trim(512, 0), errno.EPERM, "trim on read-only")
    assert len(h.pread(512, 0)) == 512
    h.flush()
    h.shutdown()
    print("ok")


def unknown_export(base_uri, good):
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_uri(base_uri)
    h.set_export_name("no-such-export")
    try:
        h.opt_go()
        raise AssertionError("GO to an unknown export succeeded")
    except nbd.Error:
        pass
    # The refusal left the handshake going: the right name still works on this connection.
    h.set_export_name(good)
    h.opt_go()
    assert h.get_size() > 0
    h.pread(512, 0)
    h.shutdown()
    # Plain connect to an unknown export fails cleanly too.
    try:
        connect(base_uri.rstrip("/") + "/nope")
        raise AssertionError("connect to an unknown export succeeded")
    except nbd.Error:
        pass
    print("ok")


def oversize(uri, max_payload):
    max_payload = int(max_payload)
    h = connect(uri)
    h.set_strict_mode(0)
    big = max_payload * 2
    # Over the limit but not absurd: the server reads the payload, drops it, answers EINVAL.
    expect_error(lambda: h.pwrite(b"z" * big, 0), errno.EINVAL, "oversize write")
    expect_error(lambda: h.pread(big, 0), errno.EINVAL, "oversize read")
    h.pwrite(b"k" * 4096, 0)
    assert h.pread(4096, 0) == b"k" * 4096
    # A request claiming an absurd payload closes that connection only.
    s = raw_connect(uri)
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, 1, 0, 0xFFFFFFFF))
    assert recv_until_eof(s), "connection with an absurd payload stayed open"
    h.pwrite(b"m" * 4096, 4096)
    assert h.pread(4096, 4096) == b"m" * 4096
    h.shutdown()
    print("ok")


def parse_tcp(uri):
    rest = uri[len("nbd://"):]
    hostport, _, name = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    return host, int(port), name


def raw_connect(uri, go=True):
    """A hand-made client: fixed newstyle, NO_ZEROES, EXPORT_NAME."""
    host, port, name = parse_tcp(uri)
    s = socket.create_connection((host, port))
    s.settimeout(20)
    greeting = recv_exact(s, 18)
    magic, opt, flags = struct.unpack(">QQH", greeting)
    assert (magic, opt) == (NBDMAGIC, IHAVEOPT)
    s.sendall(struct.pack(">I", 3))
    if go:
        s.sendall(struct.pack(">QII", IHAVEOPT, 1, len(name)) + name.encode())
        size, tflags = struct.unpack(">QH", recv_exact(s, 10))
    return s


def recv_exact(s, n):
    b = b""
    while len(b) < n:
        chunk = s.recv(n - len(b))
        if not chunk:
            raise EOFError(f"EOF after {len(b)} of {n} bytes")
        b += chunk
    return b


def recv_until_eof(s):
    try:
        while True:
            if not s.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def send_ignoring_reset(s, data):
    try:
        s.sendall(data)
    except (ConnectionResetError, BrokenPipeError):
        pass


def retry(fn):
    """For a slot the server frees just after the client's DISC: bounded, not a timing check."""
    import time
    for _ in range(200):
        try:
            return fn()
        except nbd.Error:
            time.sleep(0.05)
    return fn()


def garbage(uri):
    h = connect(uri)
    h.pwrite(b"g" * 4096, 0)
    # Garbage where the client flags and options should be.
    host, port, _ = parse_tcp(uri)
    s = socket.create_connection((host, port))
    s.settimeout(20)
    recv_exact(s, 18)
    send_ignoring_reset(s, os.urandom(4096))
    assert recv_until_eof(s), "garbage handshake was not dropped"
    # Garbage option after valid flags.
    s = socket.create_connection((host, port))
    s.settimeout(20)
    recv_exact(s, 18)
    send_ignoring_reset(s, struct.pack(">I", 1) + b"NOTMAGIC" + os.urandom(64))
    assert recv_until_eof(s), "bad option magic was not dropped"
    # Garbage instead of a request, after a good handshake.
    s = raw_connect(uri)
    send_ignoring_reset(s, os.urandom(64))
    assert recv_until_eof(s), "bad request magic was not dropped"
    # The first client never noticed.
    assert h.pread(4096, 0) == b"g" * 4096
    h2 = connect(uri)
    assert h2.pread(4096, 0) == b"g" * 4096
    h.shutdown()
    h2.shutdown()
    print("ok")


def silent(uri):
    """Connects and sends nothing; the server must drop it at the handshake time limit."""
    host, port, _ = parse_tcp(uri)
    s = socket.create_connection((host, port))
    s.settimeout(30)
    recv_exact(s, 18)
    assert recv_until_eof(s), "silent client was not dropped"
    print("ok")


def multi_conn(uri):
    hs = [connect(uri) for _ in range(4)]
    assert all(h.can_multi_conn() for h in hs)
    for i, h in enumerate(hs):
        h.pwrite(bytes([0x10 + i]) * 65536, i * 65536)
    # One FLUSH on one connection covers the writes answered on all of them.
    hs[3].flush()
    for h in hs:
        for i in range(4):
            assert h.pread(65536, i * 65536) == bytes([0x10 + i]) * 65536
    for h in hs:
        h.shutdown()
    print("ok")


def block_status(uri):
    """Expects the export laid out by the test: data 0..64K, hole to 256K, backing 256K..384K."""
    h = connect(uri, ["base:allocation", "qemu:allocation-depth"])
    assert h.can_meta_context("base:allocation")
    assert h.can_meta_context("qemu:allocation-depth")
    seen = {}

    def cb(ctx, offset, entries, err):
        seen[ctx] = (offset, list(entries))
        return 0

    h.block_status(512 * 1024, 0, cb)
    off, e = seen["base:allocation"]
    assert off == 0
    assert e == [65536, 0, 196608, 3, 131072, 0, 131072, 3], e
    off, e = seen["qemu:allocation-depth"]
    assert e == [65536, 1, 196608, 0, 131072, 2, 131072, 0], e
    # REQ_ONE: exactly one extent per context.
    seen.clear()
    h.block_status(512 * 1024, 4096, cb, nbd.CMD_FLAG_REQ_ONE)
    assert seen["base:allocation"][1] == [61440, 0], seen
    assert len(seen["qemu:allocation-depth"][1]) == 2
    # Writing fills the hole.
    h.pwrite(b"\1" * 4096, 65536)
    seen.clear()
    h.block_status(8192, 65536, cb)
    assert seen["base:allocation"][1] == [4096, 0, 4096, 3], seen
    h.shutdown()
    print("ok")


def structured(uri):
    """Same layout as block_status: data then hole."""
    h = connect(uri, ["base:allocation"])
    assert h.get_structured_replies_negotiated()
    assert h.can_df()
    chunks = []

    def cb(buf, offset, status, err):
        chunks.append((offset, len(buf), status))
        return 0

    data = h.pread_structured(128 * 1024, 0, cb)
    assert data[:65536] == b"\xaa" * 65536 and data[65536:] == b"\0" * 65536
    assert (0, 65536, nbd.READ_DATA) in chunks, chunks
    assert (65536, 65536, nbd.READ_HOLE) in chunks, chunks
    # DF: one data chunk.
    chunks.clear()
    h.pread_structured(128 * 1024, 0, cb, nbd.CMD_FLAG_DF)
    assert chunks == [(0, 131072, nbd.READ_DATA)], chunks
    h.shutdown()
    # Without structured replies: simple replies, and still the same bytes.
    h = connect(uri, structured=False)
    assert not h.get_structured_replies_negotiated()
    assert not h.can_df()
    assert h.pread(128 * 1024, 0) == data
    h.set_strict_mode(0)
    expect_error(lambda: h.pread(4096, 1 << 40), errno.EINVAL, "simple read past the end")
    h.shutdown()
    print("ok")


def per_export_limit(uri):
    """The server allows 2 connections to this export."""
    a, b = connect(uri), connect(uri)
    try:
        connect(uri)
        raise AssertionError("third connection was accepted")
    except nbd.Error:
        pass
    a.shutdown()
    c = retry(lambda: connect(uri))
    c.pread(512, 0)
    b.shutdown()
    c.shutdown()
    print("ok")


def write_and_vanish(uri):
    """Writes, then exits without NBD_CMD_DISC, like an idle SNA connection being dropped."""
    h = connect(uri)
    h.pwrite(b"v" * 65536, 0)
    sys.stdout.write("ok\n")
    sys.stdout.flush()
    os._exit(0)


def sna_like(uri):
    """What the SNA backup client does: structured replies and base:allocation, several
    connections, 32 MiB writes and WRITE_ZEROES, one idle connection, no FLUSH, no DISC."""
    mib32 = 32 << 20
    a, b, idle = (connect(uri, ["base:allocation"]) for _ in range(3))
    assert a.get_block_size(nbd.SIZE_MAXIMUM) >= mib32
    a.pwrite(b"\x5a" * mib32, 0)
    b.pwrite(b"\x33" * mib32, mib32)
    b.zero(mib32, mib32 // 2)
    a.pwrite(b"\x77" * 4096, 3 * mib32 - 4096)
    sys.stdout.write("ok\n")
    sys.stdout.flush()
    os._exit(0)


def hold(uri):
    """Connects, says ready, waits for a line on stdin, then reads: prints the outcome."""
    h = connect(uri)
    h.pread(512, 0)
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        h.pread(512, 0)
        print("read ok", flush=True)
    except nbd.Error as e:
        print("read failed", flush=True)


def write_expect_shutdown(uri):
    """The export stalls writes; the server's hard stop must answer with ESHUTDOWN."""
    h = connect(uri)
    expect_error(lambda: h.pwrite(b"s" * 4096, 0), errno.ESHUTDOWN, "stalled write")
    print("ok")


# --- extended headers, by hand (libnbd here predates them) ---

def opt(s, code, data=b""):
    s.sendall(struct.pack(">QII", IHAVEOPT, code, len(data)) + data)


def opt_reply(s):
    magic, option, rtype, length = struct.unpack(">QIII", recv_exact(s, 20))
    assert magic == REPLY_MAGIC_OPT
    return option, rtype, recv_exact(s, length)


def ext_request(s, flags, cmd, cookie, offset, length, payload=b""):
    s.sendall(struct.pack(">IHHQQQ", 0x21E41C71, flags, cmd, cookie, offset, length) + payload)


def ext_reply(s):
    magic, flags, rtype, cookie, offset, length = struct.unpack(">IHHQQQ", recv_exact(s, 32))
    assert magic == 0x6E8A278C, hex(magic)
    return flags, rtype, cookie, offset, recv_exact(s, length)


def extended(uri):
    _, _, name = parse_tcp(uri)
    s = raw_connect(uri, go=False)
    # STARTTLS is refused by policy, and the handshake goes on.
    opt(s, 5)
    assert opt_reply(s)[1] == 0x80000002
    # Extended headers, then structured replies are redundant.
    opt(s, 11)
    assert opt_reply(s)[1] == 1
    opt(s, 8)
    assert opt_reply(s)[1] == 0x8000000A
    q = b"base:allocation"
    n = name.encode()
    opt(s, 10, struct.pack(">I", len(n)) + n + struct.pack(">II", 1, len(q)) + q)
    option, rtype, data = opt_reply(s)
    assert rtype == 4 and data[4:] == q
    ctx_id = struct.unpack(">I", data[:4])[0]
    assert opt_reply(s)[1] == 1
    opt(s, 7, struct.pack(">I", len(n)) + n + struct.pack(">H", 0))
    size = None
    while True:
        option, rtype, data = opt_reply(s)
        if rtype == 3 and struct.unpack(">H", data[:2])[0] == 0:
            size, tflags = struct.unpack(">QH", data[2:])
        if rtype == 1:
            break
        assert rtype == 3, hex(rtype)
    assert size and tflags & 0x100
    ext_request(s, 0, 1, 1, 8192, 4096, b"e" * 4096)
    got = {}
    flags, rtype, cookie, offset, data = ext_reply(s)
    got[cookie] = [(flags, rtype, offset, data)]
    # Then pipeline a read, block status, a bad command, a write past the end.
    ext_request(s, 0, 0, 2, 8192, 4096)
    ext_request(s, 0, 7, 3, 0, 16384)
    ext_request(s, 0, 99, 4, 0, 0)
    ext_request(s, 0, 1, 5, size, 4096, b"f" * 4096)
    while len(got) < 5:
        flags, rtype, cookie, offset, data = ext_reply(s)
        got.setdefault(cookie, []).append((flags, rtype, offset, data))
    ((flags, rtype, offset, _),) = got[1]
    assert (flags, rtype, offset) == (1, 0, 8192), got[1]
    (flags, rtype, offset, data) = got[2][-1]
    assert flags & 1 and rtype == 1 and data[8:] == b"e" * 4096, got[2]
    ((flags, rtype, offset, data),) = got[3]
    assert rtype == 6, rtype
    cid, count = struct.unpack(">II", data[:8])
    assert cid == ctx_id and count >= 1
    descs = [struct.unpack(">QQ", data[8 + 16 * i:24 + 16 * i]) for i in range(count)]
    assert descs == [(8192, 3), (4096, 0), (4096, 3)], descs
    ((flags, rtype, offset, data),) = got[4]
    assert rtype == 0x8001 and struct.unpack(">I", data[:4])[0] == errno.EINVAL
    ((flags, rtype, offset, data),) = got[5]
    assert rtype == 0x8001 and struct.unpack(">I", data[:4])[0] == errno.ENOSPC
    ext_request(s, 0, 2, 6, 0, 0)
    assert recv_until_eof(s)
    print("ok")


def handshake_rules(uri):
    """Option haggling by hand: the answers the spec asks for, and the connection going on."""
    _, _, name = parse_tcp(uri)
    n = name.encode()

    def meta(code, export, *queries):
        data = struct.pack(">I", len(export)) + export + struct.pack(">I", len(queries))
        for q in queries:
            data += struct.pack(">I", len(q)) + q
        opt(s, code, data)
        out = []
        while True:
            _, rtype, body = opt_reply(s)
            if rtype != 4:
                return rtype, out
            out.append((struct.unpack(">I", body[:4])[0], body[4:]))

    s = raw_connect(uri, go=False)
    # Meta contexts need structured replies first.
    assert meta(9, n)[0] == 0x80000003
    opt(s, 99, b"junk")
    assert opt_reply(s)[1] == 0x80000001, "unknown option"
    opt(s, 8, b"x")
    assert opt_reply(s)[1] == 0x80000003, "structured reply with data"
    opt(s, 8)
    assert opt_reply(s)[1] == 1
    opt(s, 8)
    assert opt_reply(s)[1] == 0x80000003, "structured reply twice"
    # INFO on an unknown export, then on ours (asking for its name).
    opt(s, 6, struct.pack(">I", 4) + b"nope" + struct.pack(">H", 0))
    assert opt_reply(s)[1] == 0x80000006
    opt(s, 6, struct.pack(">I", len(n)) + n + struct.pack(">HH", 1, 1))
    infos = {}
    while True:
        _, rtype, body = opt_reply(s)
        if rtype == 1:
            break
        assert rtype == 3
        infos[struct.unpack(">H", body[:2])[0]] = body[2:]
    assert set(infos) == {0, 1, 3}, infos
    assert infos[1] == n
    assert struct.unpack(">III", infos[3]) == (1, 4096, 64 << 20)
    # Malformed INFO: name length past the data.
    opt(s, 6, struct.pack(">I", 200) + n)
    assert opt_reply(s)[1] == 0x80000003
    # Listing contexts: all, by namespace, unknown.
    rtype, ctxs = meta(9, n)
    assert rtype == 1 and [c[1] for c in ctxs] == [b"base:allocation", b"qemu:allocation-depth"]
    rtype, ctxs = meta(9, n, b"qemu:")
    assert [c[1] for c in ctxs] == [b"qemu:allocation-depth"]
    rtype, ctxs = meta(9, n, b"other:thing")
    assert rtype == 1 and ctxs == []
    assert meta(9, b"nope")[0] == 0x80000006
    # A second SET replaces what the first selected.
    rtype, ctxs = meta(10, n, b"qemu:allocation-depth")
    assert rtype == 1 and len(ctxs) == 1
    rtype, ctxs = meta(10, n, b"base:allocation")
    assert rtype == 1 and len(ctxs) == 1
    ctx_id = ctxs[0][0]
    opt(s, 7, struct.pack(">I", len(n)) + n + struct.pack(">H", 0))
    while opt_reply(s)[1] != 1:
        pass
    # Compact requests, structured block status with the selected context only.
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 7, 77, 0, 8192))
    magic, flags, rtype, cookie, length = struct.unpack(">IHHQI", recv_exact(s, 20))
    assert (magic, flags, rtype, cookie) == (0x668E33EF, 1, 5, 77)
    body = recv_exact(s, length)
    assert struct.unpack(">III", body) == (ctx_id, 8192, 3)
    # An unknown flag on a READ: an error chunk, and the connection goes on.
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0x40, 0, 80, 0, 512))
    magic, flags, rtype, cookie, length = struct.unpack(">IHHQI", recv_exact(s, 20))
    assert (magic, flags, rtype, cookie) == (0x668E33EF, 1, 0x8001, 80)
    assert struct.unpack(">I", recv_exact(s, length)[:4])[0] == errno.EINVAL
    # A write gets a simple reply.
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 1, 1, 78, 0, 4) + b"abcd")
    assert struct.unpack(">IIQ", recv_exact(s, 16)) == (0x67446698, 0, 78)
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 2, 79, 0, 0))
    assert recv_until_eof(s)

    # ABORT: an ACK, then the end.
    s = raw_connect(uri, go=False)
    opt(s, 2)
    assert opt_reply(s)[1] == 1
    assert recv_until_eof(s)
    # An option of absurd length: dropped before anything is allocated.
    s = raw_connect(uri, go=False)
    s.sendall(struct.pack(">QII", IHAVEOPT, 7, 0xFFFFFFF0))
    assert recv_until_eof(s)
    # EXPORT_NAME of an unknown export: no error reply exists, the connection closes.
    s = raw_connect(uri, go=False)
    opt(s, 1, b"nope")
    assert recv_until_eof(s)
    # EXPORT_NAME of ours without NO_ZEROES: size, flags, 124 zeroes.
    host, port, _ = parse_tcp(uri)
    s = socket.create_connection((host, port))
    s.settimeout(20)
    recv_exact(s, 18)
    s.sendall(struct.pack(">I", 1))
    opt(s, 1, n)
    size, tflags = struct.unpack(">QH", recv_exact(s, 10))
    assert size == 1 << 20 and tflags & 1 and not tflags & 0x80, hex(tflags)
    assert recv_exact(s, 124) == b"\0" * 124
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 5, 0, 4))
    assert struct.unpack(">IIQ", recv_exact(s, 16)) == (0x67446698, 0, 5)
    assert recv_exact(s, 4) == b"abcd"
    print("ok")


if __name__ == "__main__":
    globals()[sys.argv[1]](*sys.argv[2:])
