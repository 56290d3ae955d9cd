"""The Python binding against a real spook-edge (the build's binary, or
$SPOOK_EDGE), started in a temporary folder and stopped after the tests."""
import os
import shutil
import subprocess
import sys
import tempfile
import threading

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import spook  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def binary(name):
    override = os.environ.get("SPOOK_" + name.upper().replace("-", "_"))
    if override:
        return override
    for kind in ("debug", "release"):
        path = os.path.join(ROOT, ".build", kind, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"{name} is not built: run swift build, or set SPOOK_{name.upper().replace('-', '_')}")


@pytest.fixture(scope="module")
def node():
    folder = tempfile.mkdtemp(prefix="spook-python-")
    socket_path = os.path.join(folder, "edge.sock")
    with open(os.path.join(folder, "edge.toml"), "w") as f:
        f.write(f"""
[node]
name = "py"
key = "{folder}/edge.key"
data = "{folder}/edge.db"
sync = "normal"
[api]
socket = "{socket_path}"
[[upstream]]
name = "nowhere"
url = "unix://{folder}/nowhere.sock"
key = "{'ab' * 32}"
[[register]]
domain = "site1.py"
name = "count"
type = "int"
[[register]]
domain = "site1.dev"
policy = "device"
""")
    process = subprocess.Popen([binary("spook-edge"), "run", "-c", os.path.join(folder, "edge.toml"), "--log-level", "error"],
                               stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    assert "ready" in line, line
    yield socket_path
    process.terminate()
    process.wait(timeout=20)
    shutil.rmtree(folder, ignore_errors=True)


def test_set_and_get_every_value_type(node):
    with spook.Client(node) as c:
        for name, value in [("i", 1500), ("f", 21.5), ("s", "hello"), ("b", True), ("raw", b"\x00\xbe\xef"), ("nan", float("inf"))]:
            origin, seq = c.set(f"site1.py/values/{name}", value)
            assert isinstance(origin, str) and seq >= 1
            assert c.value(f"site1.py/values/{name}") == value
        assert c.get("site1.py/values/f")["policy"] == "lww"


def test_set_group_is_one_delta(node):
    with spook.Client(node) as c:
        origin, seq = c.set_group("site1.py/pump", {"speed": 3, "mode": "auto"})
        stamps = [c.get("site1.py/pump/speed")["stamp"], c.get("site1.py/pump/mode")["stamp"]]
        assert all(s.endswith(f"@{origin}#{seq}") for s in stamps), stamps


def test_history_is_newest_first(node):
    with spook.Client(node) as c:
        for v in (1, 2, 3):
            c.set("site1.py/h/r", v)
        assert [e["value"] for e in c.history("site1.py/h/r")][:3] == [3, 2, 1]


def test_watch_is_an_iterator_of_changes(node):
    with spook.Client(node) as c:
        events = c.watch("site1.py/w/", every=True)
        writer = threading.Thread(target=lambda: [c.set("site1.py/w/r", v) for v in (10, 11, 12)])
        writer.start()
        seen = [next(events)["value"] for _ in range(3)]
        writer.join()
        events.close()
        assert seen == [10, 11, 12]


def test_errors_carry_the_api_code(node):
    with spook.Client(node) as c:
        with pytest.raises(spook.SpookError) as e:
            c.get("site1.py/nobody/wrote")
        assert e.value.code == "not-found"
        with pytest.raises(spook.SpookError) as e:
            c.set("site1.py/t/count", "not a number")
        assert e.value.code == "refused" and "int" in e.value.message
        with pytest.raises(spook.SpookError) as e:
            c.set("site1.py/g/$state", 1)
        assert e.value.code == "refused"
        with pytest.raises(spook.SpookError) as e:
            c.get("not a name")
        assert e.value.code == "invalid"
        with pytest.raises(spook.SpookError) as e:
            c.call({"op": "nonsense"})
        assert e.value.code == "bad-request"
        # The connection serves on after every refusal.
        c.set("site1.py/after/errors", 1)
        assert c.value("site1.py/after/errors") == 1


def test_a_device_register_is_written_on_its_desired_side(node):
    with spook.Client(node) as c:
        c.set("site1.dev/plc/speed", 700)
        r = c.get("site1.dev/plc/speed")
        assert r["policy"] == "device" and r["desired"]["value"] == 700 and r["pending"] is True


def test_status(node):
    with spook.Client(node) as c:
        s = c.status()
        assert s["role"] == "edge" and s["node"] == "py" and s["version"] == spook.__version__


def test_values_round_trip_through_the_tagged_forms():
    assert spook.encode_value(float("nan")) == {"float": "nan"}
    assert spook.decode_value({"float": "-inf"}) == float("-inf")
    assert spook.decode_value(spook.encode_value(b"\x01\x02")) == b"\x01\x02"
    with pytest.raises(TypeError):
        spook.encode_value([1, 2])
