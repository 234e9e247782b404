"""TLS cases driven by python3-libnbd and by a raw socket.

Usage: tls.py CASE ARGS...; prints "ok" when every check of CASE held, raises otherwise.
"""
import os
import sys

import nbd

from edge import opt, opt_reply, raw_connect, recv_until_eof

REP_ACK = 1
REP_ERR_TLS_REQD = 0x80000005


def libnbd(host, port, name, certdir):
    """set_tls + set_tls_certificates: a write read back inside TLS."""
    h = nbd.NBD()
    h.set_tls(nbd.TLS_REQUIRE)
    h.set_tls_certificates(certdir)
    h.set_export_name(name)
    h.connect_tcp(host, port)
    assert h.get_tls_negotiated(), "TLS was not negotiated"
    data = os.urandom(1 << 20)
    h.pwrite(data, 65536)
    assert h.pread(len(data), 65536) == data
    h.shutdown()
    print("ok")


def required(uri):
    """With TLS required, nothing about an export is answered in clear."""
    s = raw_connect(uri, go=False)
    name = uri.rpartition("/")[2].encode()
    info = len(name).to_bytes(4, "big") + name + b"\0\0"
    for code, data in [(7, info), (6, info), (3, b""), (8, b""), (10, b"\0" * 8)]:
        opt(s, code, data)
        option, rtype, _ = opt_reply(s)
        assert (option, rtype) == (code, REP_ERR_TLS_REQD), (code, hex(rtype))
    # EXPORT_NAME has no error reply: the server closes.
    opt(s, 1, name)
    assert recv_until_eof(s), "EXPORT_NAME in clear was not refused"
    # STARTTLS itself is what the server waits for.
    s = raw_connect(uri, go=False)
    opt(s, 5)
    assert opt_reply(s)[:2] == (5, REP_ACK)
    print("ok")


def stall_in_tls(uri):
    """STARTTLS, then silence: the handshake deadline covers the TLS handshake too."""
    s = raw_connect(uri, go=False)
    opt(s, 5)
    assert opt_reply(s)[:2] == (5, REP_ACK)
    assert recv_until_eof(s), "a client silent inside the TLS handshake was not dropped"
    print("ok")


if __name__ == "__main__":
    globals()[sys.argv[1]](*sys.argv[2:])
