#!/usr/bin/env python3
"""A Modbus server for the end-to-end tests: pymodbus's own TCP or RTU server
(from PyPI) over a small datastore. Prints "ready" once serving.

    pymodbus-server.py --tcp PORT [--unit 1]
    pymodbus-server.py --rtu /dev/pts/N [--unit 1] [--baud 19200]

Holding and input registers 0…49, coils and discrete inputs 0…15 exist;
holding 0 = 1234, holding 1 = -5 (i16), holding 2-3 = 21.5 (f32, high word
first), input 0 = 7, discrete inputs alternate 1, 0. Anything above 49 is an
illegal data address (exception 2).
"""
import argparse
import asyncio
import logging
import struct

from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
from pymodbus.server import StartAsyncSerialServer, StartAsyncTcpServer


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tcp", type=int)
    p.add_argument("--rtu")
    p.add_argument("--unit", type=int, default=1)
    p.add_argument("--baud", type=int, default=19200)
    a = p.parse_args()
    logging.getLogger("pymodbus").setLevel(logging.ERROR)
    hi, lo = struct.unpack(">HH", struct.pack(">f", 21.5))
    holding = [1234, 65531, hi, lo] + [0] * 46
    inputs = [7] + [0] * 49
    # pymodbus blocks are addressed from 1: protocol address N is block address N + 1.
    device = ModbusDeviceContext(
        di=ModbusSequentialDataBlock(1, [True, False] * 8),
        co=ModbusSequentialDataBlock(1, [False] * 16),
        hr=ModbusSequentialDataBlock(1, holding),
        ir=ModbusSequentialDataBlock(1, inputs),
    )
    context = ModbusServerContext(devices={a.unit: device}, single=False)
    asyncio.get_running_loop().call_later(0.3, lambda: print("ready", flush=True))
    if a.tcp:
        await StartAsyncTcpServer(context=context, address=("127.0.0.1", a.tcp))
    else:
        await StartAsyncSerialServer(context=context, port=a.rtu, baudrate=a.baud, framer="rtu")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
