#!/usr/bin/env python3
"""A Modbus server for the end-to-end tests: pymodbus's own TCP or RTU server
(from PyPI) over a small datastore. Prints "ready" once serving.

    pymodbus-server.py --tcp PORT [--unit 1]
    pymodbus-server.py --rtu /dev/pts/N [--unit 1 [--unit 2 ...]] [--baud 19200]

Several --unit: one datastore per unit id (an RS-485 line with several
devices); holding 0 is 1234 on unit 1 and 1234 + 1000 x (unit - 1) on others.

Holding and input registers 0…49, coils and discrete inputs 0…15 exist;
holding 0 = 1234, holding 1 = -5 (i16), holding 2-3 = 21.5 (f32, high word
first), input 0 = 7, discrete inputs alternate 1, 0. 64-bit values and
byte orders: holding 10-13 = u64 0x0102030405060708 (big), 14-17 = f64 -2.5
(big), 18-21 = i64 -42 (low word first), 22-23 = u32 0x11223344 (low byte
first in each word), 24-25 = f32 21.5 (low word and low byte first).
Anything above 49 is an illegal data address (exception 2).
"""
import argparse
import asyncio
import logging
import struct

from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import StartAsyncSerialServer, StartAsyncTcpServer
from pymodbus.simulator import simcore

# pymodbus 3.16 answers a request to a unit it does not serve with exception 4
# (a KeyError inside); an absent device on an RS-485 line is silent. Raise the
# error its request handler ignores when ignore_missing_devices is set.
_get_device = simcore.SimCore._SimCore__get_device


def _known_device(self, device_id):
    if device_id not in self.devices and 0 not in self.devices:
        raise NoSuchIdException(f"unit {device_id} is not served")
    return _get_device(self, device_id)


simcore.SimCore._SimCore__get_device = _known_device


async def main():
    p = argparse.ArgumentParser(description="pymodbus's server over the test datastore (see the module docstring); prints ready once serving.")
    p.add_argument("--tcp", type=int)
    p.add_argument("--rtu")
    p.add_argument("--unit", type=int, action="append")
    p.add_argument("--baud", type=int, default=19200)
    a = p.parse_args()
    logging.getLogger("pymodbus").setLevel(logging.ERROR)
    hi, lo = struct.unpack(">HH", struct.pack(">f", 21.5))
    units = a.unit or [1]
    holding = [1234, 65531, hi, lo] + [0] * 46
    words = lambda fmt, v: list(struct.unpack(">" + "H" * (struct.calcsize(fmt) // 2), struct.pack(">" + fmt, v)))
    swap = lambda w: ((w & 0xFF) << 8) | (w >> 8)
    holding[10:14] = words("Q", 0x0102030405060708)
    holding[14:18] = words("d", -2.5)
    holding[18:22] = list(reversed(words("q", -42)))
    holding[22:24] = [swap(w) for w in words("I", 0x11223344)]
    holding[24:26] = [swap(w) for w in reversed(words("f", 21.5))]
    inputs = [7] + [0] * 49
    # pymodbus blocks are addressed from 1: protocol address N is block address N + 1.
    def device(unit):
        return ModbusDeviceContext(
            di=ModbusSequentialDataBlock(1, [True, False] * 8),
            co=ModbusSequentialDataBlock(1, [False] * 16),
            hr=ModbusSequentialDataBlock(1, [1234 + 1000 * (unit - 1)] + holding[1:]),
            ir=ModbusSequentialDataBlock(1, inputs),
        )
    context = ModbusServerContext(devices={u: device(u) for u in units}, single=False)
    asyncio.get_running_loop().call_later(0.3, lambda: print("ready", flush=True))
    if a.tcp:
        await StartAsyncTcpServer(context=context, address=("127.0.0.1", a.tcp))
    else:
        # A unit nobody serves stays silent, as an absent device on an RS-485 line does.
        await StartAsyncSerialServer(context=context, port=a.rtu, baudrate=a.baud, framer="rtu", ignore_missing_devices=True)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
