"""A thin client for the Spook Edge local API: one JSON object per line
over the node's Unix socket (docs/api.md). No retries, no caching, no
conflict resolution: the node does all of that.

    import spook
    with spook.Client("/run/spook-edge/edge.sock") as c:
        c.set("site1.line3/pump7/speed", 1500)      # returns once durable
        print(c.value("site1.line3/pump7/speed"))
        for event in c.watch("site1.line3/"):      # an iterator, until closed
            print(event["register"])
"""
import json
import math
import os
import socket

__all__ = ["Client", "SpookError", "encode_value", "decode_value"]
__version__ = "0.10.0"

DEFAULT_SOCKET = "/run/spook-edge/edge.sock"


class SpookError(Exception):
    """An answer with "ok": false. `code` is the API's code (bad-request,
    invalid, not-found, refused, busy, internal); `message` its sentence."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def encode_value(value):
    """A Python value as the API writes it: floats that JSON cannot hold
    and bytes as tagged objects."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return {"float": "nan"}
        if math.isinf(value):
            return {"float": "inf" if value > 0 else "-inf"}
        return {"float": value}
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": bytes(value).hex()}
    raise TypeError(f"a register holds None, bool, int, float, str or bytes, not {type(value).__name__}")


def decode_value(value):
    """The API's JSON for a value, as a Python value."""
    if isinstance(value, dict):
        if "float" in value:
            return float(value["float"])
        if "bytes" in value:
            return bytes.fromhex(value["bytes"])
    return value


class _Connection:
    """One socket, lines in and out."""

    def __init__(self, path, timeout):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buffer = b""

    def send(self, request):
        self.sock.sendall(json.dumps(request, separators=(",", ":")).encode() + b"\n")

    def receive(self):
        """The next line as JSON, or None once the node closed the socket."""
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def close(self):
        self.sock.close()


class Client:
    """A connection to a node's local API. `path` defaults to
    $SPOOK_SOCKET, else /run/spook-edge/edge.sock."""

    def __init__(self, path=None, timeout=10.0):
        self.path = path or os.environ.get("SPOOK_SOCKET", DEFAULT_SOCKET)
        self.timeout = timeout
        self._conn = _Connection(self.path, timeout)
        self._next_id = 0

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()

    def close(self):
        self._conn.close()

    def call(self, request):
        """Sends one request and returns its answer; raises SpookError if it failed."""
        self._next_id += 1
        request = dict(request, id=self._next_id)
        self._conn.send(request)
        answer = self._conn.receive()
        if answer is None:
            raise ConnectionError(f"{self.path}: the node closed the connection")
        if not answer.get("ok"):
            raise SpookError(answer.get("code", "bad-request"), answer.get("error", "failed"))
        return answer

    def get(self, register):
        """The register as the API shows it: policy, value, stamp (and reported/desired)."""
        return self.call({"op": "get", "register": register})["register"]

    def value(self, register):
        """The register's value (a device register's reported value)."""
        return decode_value(self.get(register).get("value"))

    def set(self, register, value):
        """Writes a register (a device register's desired side); returns (origin, seq) once durable."""
        answer = self.call({"op": "set", "register": register, "value": encode_value(value)})
        return answer["origin"], answer["seq"]

    def set_group(self, group, values):
        """Writes several registers of one group in one delta: all become visible together."""
        answer = self.call({"op": "set", "group": group, "values": {k: encode_value(v) for k, v in values.items()}})
        return answer["origin"], answer["seq"]

    def list(self, prefix=""):
        return self.call({"op": "list", "prefix": prefix})["registers"]

    def history(self, register):
        """Past values, newest first: dicts with side, value (decoded) and stamp."""
        entries = self.call({"op": "history", "register": register})["history"]
        return [dict(e, value=decode_value(e["value"])) for e in entries]

    def status(self):
        return self.call({"op": "status"})

    def watch(self, prefix="", every=False):
        """Changes of registers under `prefix`, as an iterator (its own
        connection, without a timeout). Mode "latest" (default): the state
        of each changed register after each commit; every=True: each value
        each register took, in order. Ends when the node closes the
        connection; close() the iterator to stop."""
        return _Watch(self.path, prefix, every)


class _Watch:
    def __init__(self, path, prefix, every):
        self._conn = _Connection(path, None)
        self._conn.send({"op": "watch", "prefix": prefix, "mode": "every" if every else "latest"})
        answer = self._conn.receive()
        if answer is None or not answer.get("ok"):
            self._conn.close()
            answer = answer or {}
            raise SpookError(answer.get("code", "internal"), answer.get("error", "the node closed the connection"))

    def __iter__(self):
        return self

    def __next__(self):
        event = self._conn.receive()
        if event is None:
            self._conn.close()
            raise StopIteration
        if "value" in event:
            event["value"] = decode_value(event["value"])
        return event

    def close(self):
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()
