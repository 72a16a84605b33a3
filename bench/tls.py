"""TLS for the wss scenarios: a self-signed certificate made at run time, each server's flags for it.

The certificate is made with the `openssl` command (no Python dependency on the
load side); the load generator does not verify it (`client_context`), so the
figures are the servers' TLS record work, not certificate checks.
"""
import os
import shutil
import ssl
import subprocess
import tempfile

# Each server's command-line flags for a certificate and key (PEM files).
SERVER_FLAGS = {
    "asgiws": lambda cert, key: ["--ssl-certfile", cert, "--ssl-keyfile", key],
    "asgiws-base": lambda cert, key: ["--ssl-certfile", cert, "--ssl-keyfile", key],
    "asgiws-scraped": lambda cert, key: ["--ssl-certfile", cert, "--ssl-keyfile", key],
    "uvicorn": lambda cert, key: ["--ssl-certfile", cert, "--ssl-keyfile", key],
    "uvicorn-legacy": lambda cert, key: ["--ssl-certfile", cert, "--ssl-keyfile", key],
    "uvicorn-wsproto": lambda cert, key: ["--ssl-certfile", cert, "--ssl-keyfile", key],
    "hypercorn": lambda cert, key: ["--certfile", cert, "--keyfile", key],
    "granian": lambda cert, key: ["--ssl-certificate", cert, "--ssl-keyfile", key],
    "picows": lambda cert, key: ["--certfile", cert, "--keyfile", key],
}


def make_certificate(directory=None):
    """(cert path, key path): a self-signed RSA 2048 certificate for 127.0.0.1, valid 2 days.

    The key is PKCS#8 (openssl req's default), which granian requires. Raises
    RuntimeError when the openssl command is missing or fails.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the wss scenarios need the openssl command")
    directory = directory or tempfile.mkdtemp(prefix="bench-tls-")
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    cmd = [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
           "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if r.returncode != 0:
        raise RuntimeError("openssl req failed: " + r.stderr[-300:])
    return cert, key


def client_context():
    """A client context that accepts the run's self-signed certificate without checking it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
