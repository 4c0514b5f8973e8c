"""What a deployment needs to be secure: a CA, the SuperLink's TLS certificate, and a key pair per SuperNode.

Made with `cryptography` (a dependency of Flower), so no openssl command is needed.
The SuperNodes verify the SuperLink against the CA (TLS); the SuperLink accepts only
SuperNodes whose public key was registered (`flwr supernode register`), each
SuperNode proving that it holds the private key.
"""
import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

VALID_FOR = datetime.timedelta(days=30)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: str, data: bytes, private: bool = False) -> str:
    """Write bytes; private keys readable by their owner alone."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def certificate_authority(folder: str,
                          common_name: str = "flower-twin CA") -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """A self-signed CA in folder/ca.pem (its key in ca.key); returns (certificate, key)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALID_FOR)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    _write(os.path.join(folder, "ca.pem"), cert.public_bytes(serialization.Encoding.PEM))
    _write(os.path.join(folder, "ca.key"), _pem_key(key), private=True)
    return cert, key


def server_certificate(folder: str, ca: tuple[x509.Certificate, rsa.RSAPrivateKey],
                       hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), name: str = "superlink") -> tuple[str, str]:
    """folder/NAME.pem and NAME.key: a certificate signed by `ca`, valid for each of `hosts` (IPs or names)."""
    ca_cert, ca_key = ca
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.UTC)
    names = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALID_FOR)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    return (_write(os.path.join(folder, name + ".pem"), cert.public_bytes(serialization.Encoding.PEM)),
            _write(os.path.join(folder, name + ".key"), _pem_key(key), private=True))


def supernode_keys(folder: str, name: str) -> tuple[str, str]:
    """folder/NAME (private, OpenSSH) and NAME.pub: the P-384 key pair Flower's SuperNode authentication uses."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return (_write(os.path.join(folder, name), private, private=True),
            _write(os.path.join(folder, name + ".pub"), public + b"\n"))
