#!/usr/bin/env python3
"""A third-party Modbus RTU slave for the interop tests: pymodbus serving known registers on a serial
port (one end of a socat pseudo-terminal pair), or, with --noisy, a hand-written slave that answers
with a mix of good frames, bad CRCs, truncated frames, random bytes, exceptions and silence.

Register contents (both modes, slave ids 1 and 2):
  slave 1 holding 0: 1234 (u16), 1: 0xFFFE (i16 -2), 2-3: 12.5 as f32 big-endian words,
          4-5: 70000 as u32 with the low word first;
  slave 1 input   0-1: 3.7 as f32 big-endian words;
  slave 2 holding 0: 500.
Coils (pymodbus mode only; --noisy ignores coil requests): slaves 1 and 2 each have 16 coils, protocol
addresses 0-15, all off at start, served by function 01 (read coils), 05 (write single coil) and 15
(write multiple coils). With --coil-log FILE, every coil write that the slave accepts (whether or
not it changes the value) appends one line per coil, "<slave> <address> <0|1> <time.time_ns()>",
with the protocol address (0 for the first coil), flushed at once, so tests and benchmarks can
timestamp relay switching at the slave.
Prints "ready" on stdout once it serves.
"""
import argparse
import random
import struct
import sys
import time

HOLDING = {1: [1234, 0xFFFE, *struct.unpack(">HH", struct.pack(">f", 12.5)), 70000 & 0xFFFF, 70000 >> 16] + [0] * 20,
           2: [500] + [0] * 20}
INPUT = {1: [*struct.unpack(">HH", struct.pack(">f", 3.7))] + [0] * 20, 2: [0] * 20}
COILS = 16  # per slave, protocol addresses 0..15


def crc16(data: bytes) -> int:
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def frame(body: bytes) -> bytes:
    return body + struct.pack("<H", crc16(body))


def serve_pymodbus(port: str, baud: int, coil_log: str | None) -> None:
    from pymodbus.datastore import (ModbusDeviceContext, ModbusSequentialDataBlock,
                                    ModbusServerContext)
    from pymodbus.server import StartSerialServer
    from pymodbus import FramerType

    log = open(coil_log, "a", encoding="ascii") if coil_log else None

    def coil_logger(slave: int):
        # pymodbus 3.16 turns the (deprecated) data blocks into a SimDevice when the device context
        # is built and never calls ModbusSequentialDataBlock.setValues, so a subclass overriding it
        # would see nothing. The SimDevice "action" hook is called for every access the datastore
        # accepts (after its address checks, before the write) with the request's function code,
        # protocol address and values to write; writes carry values, reads None.
        async def action(function_code, _start, address, _count, _registers, set_values):
            if function_code in (5, 15) and set_values is not None:
                now = time.time_ns()
                for i, value in enumerate(set_values):
                    log.write(f"{slave} {address + i} {int(bool(value))} {now}\n")
                log.flush()
            return None
        return action

    def device(slave: int) -> ModbusDeviceContext:
        # pymodbus addresses data blocks from 1 for protocol address 0.
        ctx = ModbusDeviceContext(hr=ModbusSequentialDataBlock(1, HOLDING[slave]),
                                  ir=ModbusSequentialDataBlock(1, INPUT[slave]),
                                  co=ModbusSequentialDataBlock(1, [False] * COILS))
        if log is not None:  # no hook otherwise: reads stay as fast as before (tests/bench/modbus.sh)
            ctx.simdevice.action = coil_logger(slave)
        return ctx

    context = ModbusServerContext(devices={1: device(1), 2: device(2)}, single=False)
    print("ready", flush=True)
    StartSerialServer(context=context, framer=FramerType.RTU, port=port, baudrate=baud, timeout=0.005)


def serve_noisy(port: str, baud: int, seed: int) -> None:
    import serial
    rng = random.Random(seed)
    line = serial.Serial(port, baud, timeout=0.05)
    print("ready", flush=True)
    buf = b""
    while True:
        buf += line.read(64)
        while len(buf) >= 8:
            req = buf[:8]
            if crc16(req[:6]) != struct.unpack("<H", req[6:])[0]:
                buf = buf[1:]
                continue
            buf = buf[8:]
            slave, function, start, count = req[0], req[1], *struct.unpack(">HH", req[2:6])
            if function not in (3, 4):
                continue  # coils and everything else: no answer
            table = (HOLDING if function == 3 else INPUT).get(slave)
            if table is None:
                continue
            regs = table[start:start + count]
            good = frame(bytes([slave, function, 2 * count]) + b"".join(struct.pack(">H", r) for r in regs))
            roll = rng.random()
            if roll < 0.3:
                out = good
            elif roll < 0.45:
                bad = bytearray(good)
                bad[3 + rng.randrange(len(good) - 5)] ^= 1 << rng.randrange(8)
                out = bytes(bad)  # a flipped bit: the CRC no longer matches
            elif roll < 0.55:
                out = good[:rng.randrange(1, len(good))]  # truncated
            elif roll < 0.65:
                out = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))  # line noise
            elif roll < 0.75:
                out = frame(bytes([slave, function | 0x80, 4]))  # exception: slave device failure
            elif roll < 0.85:
                out = bytes(rng.randrange(256) for _ in range(3)) + good  # noise, then the answer
            else:
                out = b""  # silence
            line.write(out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", required=True)
    p.add_argument("--baud", type=int, default=115200)
    p.add_argument("--noisy", action="store_true")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--coil-log", metavar="FILE",
                   help="append '<slave> <address> <0|1> <time_ns>' for every coil write")
    a = p.parse_args()
    if a.noisy:
        serve_noisy(a.port, a.baud, a.seed)
    else:
        serve_pymodbus(a.port, a.baud, a.coil_log)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
