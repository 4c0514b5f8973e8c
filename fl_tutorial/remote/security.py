"""Who may talk to a client process: a shared token, and TLS that is really checked.

syft 0.2.6 deserialises what arrives with pickle (torch.load), so anyone who can
open a websocket to a worker can run code on its machine. Two defences, both
checked before a single syft message is read:
- a token, sent by the coordinator in the handshake's `Authorization: Bearer`
  header and compared in constant time by the worker;
- TLS (wss://), where the coordinator verifies the worker's certificate against
  a CA file and its host name, unlike syft's own client, which turns checking off.
"""
import hmac
import os
import secrets
import ssl

MIN_TOKEN_CHARS = 16
HEADER = "Authorization"
MAKE_TOKEN = 'python -c "import secrets; print(secrets.token_hex(32))" > FILE'


class SecurityError(ValueError):
    """A token or certificate file that cannot be used; the message says why and what to do."""


def read_token(path):
    """The token in `path` (surrounding whitespace ignored), refused if missing, empty or short."""
    try:
        with open(path) as f:
            token = f.read().strip()
    except OSError as error:
        raise SecurityError("cannot read the token file {}: {}".format(path, error.strerror or error)) from None
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise SecurityError(
            "the token in {} must be one word of at least {} characters; make one with:\n    {}".format(
                path, MIN_TOKEN_CHARS, MAKE_TOKEN))
    return token


def write_new_token(path):
    """A fresh random token in a file only its owner can read (for clients this run starts)."""
    token = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def authorization(token):
    """The handshake header that carries the token."""
    return "{}: Bearer {}".format(HEADER, token)


def token_matches(expected, header_value):
    """Constant-time check of an `Authorization` header value against the expected token."""
    given = (header_value or "").encode()
    return hmac.compare_digest(given, "Bearer {}".format(expected).encode())


def server_context(cert, key):
    """The worker's TLS context; a bad pair fails here, at start, not at the first connection."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as error:
        raise SecurityError("cannot use --cert {} with --key {}: {}".format(cert, key, error)) from None
    return context


def client_sslopt(ca):
    """websocket-client's TLS options: the certificate must chain to `ca` and name the host."""
    if not os.path.isfile(ca):
        raise SecurityError("--ca {}: no such file".format(ca))
    return {"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": ca, "check_hostname": True}
