#!/usr/bin/env python3
"""A Modbus TCP client for the end-to-end tests: pymodbus's own client (from
PyPI), so the server façade is checked by code nobody here wrote. One
request per run; prints one JSON line: {"values": [...]} or {"exception": N}.

    modbus-client.py PORT read-holding|read-input|read-coils|read-discrete ADDRESS COUNT
    modbus-client.py PORT write-register ADDRESS VALUE
    modbus-client.py PORT write-registers ADDRESS VALUE...
    modbus-client.py PORT write-coil ADDRESS 0|1
    modbus-client.py PORT concurrent CLIENTS ROUNDS ADDRESS   (holding reads from CLIENTS connections at once)

--unit N sets the unit id (default 1).
"""
import json
import sys
import threading

from pymodbus.client import ModbusTcpClient


def result(r):
    if r.isError():
        return {"exception": getattr(r, "exception_code", -1)}
    if hasattr(r, "registers") and r.registers is not None and len(r.registers) > 0:
        return {"values": list(r.registers)}
    if hasattr(r, "bits") and r.bits is not None and len(r.bits) > 0:
        return {"values": [int(b) for b in r.bits]}
    return {"values": []}


def main():
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return
    unit = 1
    if "--unit" in args:
        i = args.index("--unit")
        unit = int(args[i + 1])
        del args[i:i + 2]
    port, op, rest = int(args[0]), args[1], [int(a) for a in args[2:]]
    if op == "concurrent":
        clients, rounds, address = rest
        done, failed = [], []

        def run():
            c = ModbusTcpClient("127.0.0.1", port=port, timeout=5)
            c.connect()
            for _ in range(rounds):
                r = c.read_holding_registers(address, count=1, device_id=unit)
                (failed if r.isError() else done).append(1)
            c.close()

        threads = [threading.Thread(target=run) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(json.dumps({"values": [len(done), len(failed)]}), flush=True)
        return
    c = ModbusTcpClient("127.0.0.1", port=port, timeout=5, retries=0)
    if not c.connect():
        print(json.dumps({"error": "cannot connect"}), flush=True)
        sys.exit(1)
    if op == "read-holding":
        r = c.read_holding_registers(rest[0], count=rest[1], device_id=unit)
    elif op == "read-input":
        r = c.read_input_registers(rest[0], count=rest[1], device_id=unit)
    elif op == "read-coils":
        r = c.read_coils(rest[0], count=rest[1], device_id=unit)
    elif op == "read-discrete":
        r = c.read_discrete_inputs(rest[0], count=rest[1], device_id=unit)
    elif op == "write-register":
        r = c.write_register(rest[0], rest[1], device_id=unit)
    elif op == "write-registers":
        r = c.write_registers(rest[0], rest[1:], device_id=unit)
    elif op == "write-coil":
        r = c.write_coil(rest[0], bool(rest[1]), device_id=unit)
    else:
        print(json.dumps({"error": "unknown op " + op}), flush=True)
        sys.exit(64)
    out = result(r)
    if op.startswith("read"):
        out["values"] = out.get("values", [])[: rest[1]] if "values" in out else None
        if out["values"] is None:
            del out["values"]
    print(json.dumps(out), flush=True)
    c.close()


if __name__ == "__main__":
    main()
