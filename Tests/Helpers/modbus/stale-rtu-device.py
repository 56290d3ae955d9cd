#!/usr/bin/env python3
"""A Modbus RTU device on a pseudo-terminal that once leaves a stale reply on
the wire: its answer to the first read of holding register 10 is sent twice,
as a device that answered late (or a reply from before a restart) would leave
it. A client that does not drop it reads every later answer one request late.

    stale-rtu-device.py

Unit 1. Holding 0 = 1111, holding 10 = 2222, function 3 only. Prints
"pty PATH" once the device listens, "stale" after the doubled reply, and
"served N" after every 10th request. Plain Python, no packages.
"""
import os
import struct
import sys
import tty


def crc16(data):
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return struct.pack("<H", crc)


def main():
    if "--help" in sys.argv or "-h" in sys.argv:
        print(__doc__.strip())
        return
    master, slave = os.openpty()
    tty.setraw(slave)
    print("pty", os.ttyname(slave), flush=True)
    values = {0: 1111, 10: 2222}
    buffer = b""
    served = 0
    doubled = False
    while True:
        chunk = os.read(master, 256)
        if not chunk:
            return
        buffer += chunk
        # A read request is 8 bytes: unit, 3, address (2), count (2), CRC (2).
        while len(buffer) >= 8:
            frame, buffer = buffer[:8], buffer[8:]
            if frame[1] != 3 or crc16(frame[:6]) != frame[6:]:
                buffer = b""  # out of step: wait for the next request
                break
            unit, _, address, count = struct.unpack(">BBHH", frame[:6])
            body = struct.pack(">BBB", unit, 3, 2 * count)
            body += b"".join(struct.pack(">H", values.get(address + i, 0)) for i in range(count))
            reply = body + crc16(body)
            os.write(master, reply)
            if address == 10 and not doubled:
                os.write(master, reply)
                doubled = True
                print("stale", flush=True)
            served += 1
            if served % 10 == 0:
                print("served", served, flush=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
