"""What OpenSSL's per-connection state costs a TLS server, with and without its memory BIOs.

    python -m bench.tls_memory [--conns 1000] [--key rsa|ec]

In one process, `--conns` server-side `ssl.SSLObject`s (the kind asgiws's TLS layer and
uvicorn's asyncio transport both keep per connection) each complete a TLS handshake with a
client over memory BIOs and exchange 64 bytes each way; then they are kept, idle, as a server
keeps its idle wss connections. Heap use (glibc's mallinfo2) is read before and after, and again
once every SSL object's two memory BIOs are taken off it (`SSL_set_bio(ssl, NULL, NULL)`) and
their Python objects dropped: the figure a server with no per-connection BIO buffers at all
would pay. The certificate is made at run time as bench/tls.py makes the wss scenarios' one
(RSA 2048 by default; `--key ec` for P-256).

The difference bounds what any TLS layer over OpenSSL can save per idle connection by
managing its own buffers; the rest is OpenSSL's SSL object. Linux with glibc only.
"""
import argparse
import ctypes
import ctypes.util
import gc
import ssl
import subprocess
import sys
import tempfile

from bench.tls import make_certificate


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
        "keepcost")]


_libc = ctypes.CDLL(ctypes.util.find_library("c"))
_libc.mallinfo2.restype = _MallInfo2


def heap_in_use():
    info = _libc.mallinfo2()
    return info.uordblks + info.hblkhd  # the small blocks in use and the mmapped ones


def _libssl():
    """The libssl that _ssl loaded (its symbols are in the process); the system's otherwise."""
    for lib in (ctypes.CDLL(None), ctypes.CDLL(ctypes.util.find_library("ssl"))):
        if hasattr(lib, "SSL_set_bio"):
            lib.SSL_set_bio.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
            lib.SSL_get_rbio.argtypes = [ctypes.c_void_p]
            lib.SSL_get_rbio.restype = ctypes.c_void_p
            return lib
    raise RuntimeError("no libssl with SSL_set_bio in this process")


def _ssl_pointer(sslobj, incoming, libssl):
    """The SSL* inside CPython's _ssl._SSLSocket, checked against the incoming BIO it was given.

    _ssl.c's PySSLSocket starts with the object header, the socket (NULL over memory BIOs)
    and the SSL*; PySSLMemoryBIO with the header and the BIO*.
    """
    word = ctypes.sizeof(ctypes.c_void_p)
    header = 2 * word
    inner = sslobj._sslobj
    socket = ctypes.c_void_p.from_address(id(inner) + header).value
    pointer = ctypes.c_void_p.from_address(id(inner) + header + word).value
    bio = ctypes.c_void_p.from_address(id(incoming) + header).value
    if socket is not None or not pointer or libssl.SSL_get_rbio(pointer) != bio:
        raise RuntimeError("this CPython's _ssl objects are not laid out as expected")
    return pointer


def _handshake(server_context, client_context):
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_context.wrap_bio(s_in, s_out, server_side=True)
    client = client_context.wrap_bio(c_in, c_out, server_hostname="127.0.0.1")
    done = {server: False, client: False}
    for _ in range(10):
        for side in (client, server):
            if not done[side]:
                try:
                    side.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    else:
        raise RuntimeError("the handshake did not complete")
    client.write(b"x" * 64)
    s_in.write(c_out.read())
    assert server.read(100) == b"x" * 64
    server.write(b"y" * 64)
    c_in.write(s_out.read())
    assert client.read(100) == b"y" * 64
    return server, s_in, s_out


def certificate(key):
    """(cert path, key path) made with the openssl command: bench/tls.py's RSA 2048 one, or P-256."""
    directory = tempfile.mkdtemp(prefix="bench-tls-memory-")
    if key == "rsa":
        return make_certificate(directory)
    cert, keyfile = f"{directory}/cert.pem", f"{directory}/key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-keyout", keyfile, "-out", cert],
                   check=True, capture_output=True)
    return cert, keyfile


def measure(conns, cert, keyfile):
    """Heap KiB per idle server SSLObject, with and without its BIOs (see the module's text)."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, keyfile)
    server_context.set_alpn_protocols(["http/1.1"])
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.check_hostname = False
    client_context.verify_mode = ssl.CERT_NONE
    libssl = _libssl()
    _handshake(server_context, client_context)  # the contexts' one-time allocations, before the baseline
    gc.collect()
    before = heap_in_use()
    kept = [_handshake(server_context, client_context) for _ in range(conns)]
    gc.collect()
    with_bios = heap_in_use()
    for index, (server, incoming, _outgoing) in enumerate(kept):
        libssl.SSL_set_bio(_ssl_pointer(server, incoming, libssl), None, None)
        kept[index] = (server,)  # the MemoryBIO objects go, and with them the BIOs
    gc.collect()
    without_bios = heap_in_use()
    return {"conns": conns, "openssl": ssl.OPENSSL_VERSION,
            "kib_per_conn": (with_bios - before) / conns / 1024,
            "kib_per_conn_without_bios": (without_bios - before) / conns / 1024,
            "session_cache_entries": server_context.session_stats()["number"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conns", type=int, default=1000)
    p.add_argument("--key", choices=["rsa", "ec"], default="rsa",
                   help="the certificate's key (default rsa, 2048)")
    a = p.parse_args(argv)
    r = measure(a.conns, *certificate(a.key))
    print(f"{r['openssl']}, {a.key} certificate, {r['conns']} idle server SSLObjects after a handshake "
          f"and 64 bytes each way:")
    print(f"  heap per connection:                    {r['kib_per_conn']:.2f} KiB")
    print(f"  with its two memory BIOs taken off:     {r['kib_per_conn_without_bios']:.2f} KiB "
          f"({r['kib_per_conn'] - r['kib_per_conn_without_bios']:.2f} KiB less)")
    print(f"  sessions in the server's session cache: {r['session_cache_entries']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
