"""A Sparkplug B host application for the tests, built on an implementation
nobody here wrote: pysparkplug (payloads) over paho-mqtt (the connection).

It subscribes to spBv1.0/GROUP/#, decodes every message with pysparkplug,
checks the edge node's state machine (Sparkplug 3.0: NBIRTH first with seq
0, seq + 1 mod 256 on every later NBIRTH/DBIRTH/DDATA/DDEATH of a session,
DDATA only for born devices, NDEATH's bdSeq against the NBIRTH's), and
prints one JSON line per message on stdout; a rule broken prints a line with
"violation". Its own connection can break (a starved test machine): then
a redelivered QoS 1 message is dropped as a duplicate, and a message that
lacks its birth (a QoS 0 NBIRTH or DBIRTH lost with the connection) gets the
Rebirth request Sparkplug asks of a host, not a violation. Lines on stdin
are commands to publish (JSON):
  {"ncmd": "rebirth"}
  {"dcmd": DEVICE, "metrics": [{"name": N or "alias": A, "datatype": "Int64", "value": V}, ...]}
  {"raw": TOPIC, "hex": BYTES}          (anything, for hostile input)

usage: sparkplug-host.py PORT GROUP EDGE_NODE
"""
import collections
import json
import sys
import threading

import paho.mqtt.client as mqtt
import pysparkplug as sp

port, group, node = int(sys.argv[1]), sys.argv[2], sys.argv[3]
out_lock = threading.Lock()


def emit(obj):
    with out_lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


class Host:
    def __init__(self):
        self.bdseq = None          # of the current session's NBIRTH
        self.node_born = False
        self.next_seq = None
        self.births = {}           # device -> pysparkplug DBirth
        # This host's own connection broke since the node's last NBIRTH: the
        # broker keeps QoS 1 messages for the session, but QoS 0 ones in
        # flight (NBIRTH, DBIRTH) can be lost, so what follows may lack its
        # birth through no fault of the edge node.
        self.gap = False
        self.rebirth_requested = False
        self.recent = collections.deque(maxlen=1024)  # the messages last received, hashed

    def violation(self, text):
        emit({"violation": text})

    def unknown_state(self, text):
        """A message the host cannot place: after a gap of its own, it does
        what Sparkplug 3.0 asks of a host (a Rebirth request); else the edge
        node broke a rule."""
        if not self.gap:
            self.violation(text)
        elif not self.rebirth_requested:
            emit({"rebirth-requested": text})
            self.rebirth_requested = True
            request_rebirth()

    def check_seq(self, kind, seq):
        if not self.node_born:
            self.unknown_state(f"{kind} while the node is not born")
            return
        if seq != self.next_seq:
            self.unknown_state(f"{kind} seq {seq}, expected {self.next_seq}")
        self.next_seq = (seq + 1) % 256

    def metrics(self, payload):
        return [{
            "name": m.name, "alias": m.alias, "datatype": m.datatype.name,
            "value": m.value.hex() if isinstance(m.value, bytes) else m.value,
            "null": m.is_null, "historical": m.is_historical, "timestamp": m.timestamp,
        } for m in payload.metrics]

    def on_message(self, topic_text, raw, dup):
        # QoS 1 is at least once: after this host's own reconnect the broker
        # sends again what it had not seen acknowledged. The same bytes again
        # are the same message (each carries its seq and timestamp).
        key = hash((topic_text, raw))
        if dup and key in self.recent:
            emit({"duplicate": topic_text})
            return
        self.recent.append(key)
        levels = topic_text.split("/")
        kind = levels[2]
        device = levels[4] if len(levels) > 4 else None
        line = {"type": kind, "device": device}
        try:
            if kind == "NBIRTH":
                p = sp.NBirth.decode(raw)
                bd = next((m.value for m in p.metrics if m.name == "bdSeq"), None)
                if bd is None:
                    self.violation("NBIRTH without bdSeq")
                if p.seq != 0:
                    self.violation(f"NBIRTH seq {p.seq}, expected 0")
                self.bdseq, self.node_born, self.next_seq, self.births = bd, True, 1, {}
                self.gap = self.rebirth_requested = False
                line.update(seq=p.seq, bdSeq=bd, metrics=self.metrics(p))
            elif kind == "NDEATH":
                p = sp.NDeath.decode(raw)
                bd = p.bd_seq_metric.value
                line.update(bdSeq=bd, current=(bd == self.bdseq))
                # An NDEATH of an older session (a will the broker sent late) is ignored, as the specification says.
                if bd == self.bdseq:
                    self.node_born, self.births = False, {}
            elif kind == "DBIRTH":
                p = sp.DBirth.decode(raw)
                self.check_seq(kind, p.seq)
                self.births[device] = p
                line.update(seq=p.seq, metrics=self.metrics(p))
            elif kind == "DDATA":
                birth = self.births.get(device)
                if birth is None and self.node_born:
                    self.unknown_state(f"DDATA for {device}, which is not born")
                p = sp.DData.decode(raw, birth=birth)
                self.check_seq(kind, p.seq)
                for m in p.metrics:
                    if birth is not None and m.name not in birth._dtypes_mapping:
                        self.violation(f"DDATA for {device}: metric {m.name} (alias {m.alias}) was not born")
                    elif birth is not None and m.datatype != birth._dtypes_mapping[m.name]:
                        self.violation(f"DDATA for {device}: {m.name} is {m.datatype.name}, born {birth._dtypes_mapping[m.name].name}")
                line.update(seq=p.seq, metrics=self.metrics(p))
            elif kind == "DDEATH":
                p = sp.DDeath.decode(raw)
                self.check_seq(kind, p.seq)
                self.births.pop(device, None)
                line.update(seq=p.seq)
            else:
                return  # our own commands come back to us: not the edge node's
        except Exception as e:  # pysparkplug refused the payload
            self.violation(f"{kind} on {topic_text} does not decode: {e!r}")
            return
        emit(line)


host = Host()
# A persistent session: what the edge node publishes while this host is away
# (a broker restart) is queued for it by the broker.
client = mqtt.Client(client_id=f"test-host-{port}", clean_session=False)


connections = 0


def request_rebirth():
    now = sp.get_current_timestamp()
    metric = sp.Metric(timestamp=now, name="Node Control/Rebirth", datatype=sp.DataType.BOOLEAN, value=True)
    payload = sp.NCmd(timestamp=now, metrics=(metric,)).encode(include_dtypes=True)
    client.publish(f"spBv1.0/{group}/NCMD/{node}", payload, qos=1)


def on_connect(c, userdata, flags, rc):
    global connections
    connections += 1
    if connections > 1:
        host.gap = True
        emit({"host": "reconnected", "session_present": bool(flags.get("session present"))})
    c.subscribe(f"spBv1.0/{group}/#", qos=1)


def on_disconnect(c, userdata, rc):
    emit({"host": "disconnected", "rc": rc})


def on_subscribe(c, userdata, mid, granted):
    emit({"ready": True})


client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.on_disconnect = on_disconnect
client.on_message = lambda c, u, msg: host.on_message(msg.topic, msg.payload, msg.dup)
client.reconnect_delay_set(min_delay=1, max_delay=2)
client.connect("127.0.0.1", port, keepalive=5)
client.loop_start()

for text in sys.stdin:
    cmd = json.loads(text)
    now = sp.get_current_timestamp()
    if "ncmd" in cmd:
        request_rebirth()
    elif "dcmd" in cmd:
        metrics = tuple(sp.Metric(timestamp=now, name=m.get("name"), alias=m.get("alias"),
                                  datatype=sp.DataType[m["datatype"].upper()], value=m["value"])
                        for m in cmd["metrics"])
        payload = sp.DCmd(timestamp=now, metrics=metrics).encode(include_dtypes=True)
        client.publish(f"spBv1.0/{group}/DCMD/{node}/{cmd['dcmd']}", payload, qos=1)
    elif "raw" in cmd:
        client.publish(cmd["raw"], bytes.fromhex(cmd["hex"]), qos=1)
    emit({"sent": cmd})
