#!/usr/bin/env python3
"""Seeds corpus/decode with every captured client and broker frame (tests/fixtures/captured),
prefixed with the mode byte the fuzz target reads: 0 before CONNECT, 1 for 3.1.1, 2 for 5.0.
Run from core/mqtt-codec/fuzz before the first `cargo +nightly fuzz run decode`."""

import glob
import os

os.makedirs("corpus/decode", exist_ok=True)
count = 0
for path in sorted(glob.glob("../tests/fixtures/captured/*.hex")):
    name = os.path.splitext(os.path.basename(path))[0]
    version = None
    for line in open(path, encoding="ascii"):
        if line.startswith("connection"):
            version = None
        if not line.startswith((">", "<")):
            continue
        frame = bytes.fromhex(line.split()[1])
        if frame[0] >> 4 == 1:
            header = 2
            while frame[header - 1] & 0x80:
                header += 1
            # protocol level: after the fixed header and the 6-byte protocol name
            version = 2 if frame[header + 6] == 5 else 1
            mode = 0
        else:
            mode = version
        with open(f"corpus/decode/{name}-{count}", "wb") as out:
            out.write(bytes([mode]) + frame)
        count += 1
print(f"seeded {count} inputs")
