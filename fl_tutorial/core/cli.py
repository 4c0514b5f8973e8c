"""argparse types that reject bad values with argparse's own error (exit status 2): numbers, seeds, addresses."""
import argparse


def _number(kind, text, minimum, inclusive):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError("{!r} is not a{} {}".format(
            text, "n" if kind is int else "", "integer" if kind is int else "number")) from None
    if value != value or value < minimum or (value == minimum and not inclusive):
        raise argparse.ArgumentTypeError("must be {} {}, got {}".format(
            ">=" if inclusive else ">", minimum, text))
    return value


def positive_int(text):
    """An integer >= 1 (epochs, batch sizes, intervals)."""
    return _number(int, text, 1, inclusive=True)


def batch_size(text):
    """A batch size (an integer >= 1), or "full": each client's whole share in one batch."""
    return "full" if text == "full" else positive_int(text)


def fraction(text):
    """A number above 0, up to and including 1 (a target accuracy)."""
    value = _number(float, text, 0.0, inclusive=False)
    if value > 1:
        raise argparse.ArgumentTypeError("must be at most 1 (a fraction: 0.99 is 99%), got {}".format(text))
    return value


def open_fraction(text):
    """A number strictly between 0 and 1 (DP's delta)."""
    value = _number(float, text, 0.0, inclusive=False)
    if value >= 1:
        raise argparse.ArgumentTypeError("must be below 1, got {}".format(text))
    return value


def _finite(value, text):
    if value == float("inf"):
        raise argparse.ArgumentTypeError("must be finite, got {}".format(text))
    return value


def non_negative_float(text):
    """A finite number >= 0 (FedProx's mu, DP's noise multiplier)."""
    return _finite(_number(float, text, 0.0, inclusive=True), text)


def positive_float(text):
    """A finite number > 0 (learning rates, DP's clipping bound)."""
    return _finite(_number(float, text, 0.0, inclusive=False), text)


def probability(text):
    """A number from 0 up to, not including, 1 (dropout)."""
    value = _number(float, text, 0.0, inclusive=True)
    if value >= 1:
        raise argparse.ArgumentTypeError("must be below 1, got {}".format(text))
    return value


def seed(text):
    """A random seed: an integer from 0 to 2**32 - 1 (what numpy's generator, used for the splits, accepts)."""
    value = _number(int, text, 0, inclusive=True)
    if value >= 2 ** 32:
        raise argparse.ArgumentTypeError("must be below 2**32, got {}".format(text))
    return value


def _host_port(text):
    """'HOST:PORT' (an IPv6 host in brackets) -> (host, port), or None if it is not that."""
    host, _, port = text.strip().rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host.strip("[]"), int(port)


def parse_connect(text):
    """Clients started elsewhere (--connect): 'client1=HOST:PORT,client2=HOST:PORT' -> [(id, host, port)]."""
    clients = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, address = item.partition("=")
        host_port = _host_port(address)
        if not name or host_port is None:
            raise argparse.ArgumentTypeError(
                "{!r} is not NAME=HOST:PORT (e.g. client1=192.168.1.20:8777)".format(item))
        clients.append((name,) + host_port)
    names = [name for name, _, _ in clients]
    if not clients or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError("{!r}: name each client once, e.g. client1=HOST:PORT,client2=HOST:PORT"
                                         .format(text))
    return clients


def parse_address(text):
    """A process started elsewhere (--aggregator): 'HOST:PORT' -> (host, port)."""
    host_port = _host_port(text)
    if host_port is None:
        raise argparse.ArgumentTypeError("{!r} is not HOST:PORT (e.g. 192.168.1.30:8780)".format(text))
    return host_port
