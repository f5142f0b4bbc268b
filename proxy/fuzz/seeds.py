#!/usr/bin/env python3
"""Writes a few seed inputs for the h1 fuzz target into corpus/h1 (see docs/FUZZING.md).

First byte: top two bits choose the mode (0 chunked body, 1 request, 2 response), low three
bits the number of cut bytes that follow; then the message."""
import os

CHUNKED = [
    b"4\r\nWiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\nNEXT",
    b"3 \t;a=b\r\nabc\r\n0  \r\n\r\n",
    b"0\r\n\r\n",
    b"A\r\n0123456789\r\n0;x\r\nA: b\r\nC: d\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    b"fffffffffffffff\r\n",
    # At the 8 KiB bounds of an extension and of the trailers.
    b"1;" + b"e" * 8190 + b"\r\nx\r\n0\r\n\r\n",
    b"0\r\n" + b"t" * 8190 + b"\r\nX\r\n\r\n",
]
HEADS = [
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n",
    b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\nContent-Length: 1, 1\ncontent-length: 1\n\n",
]
RESPONSES = [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
]

os.makedirs("corpus/h1", exist_ok=True)
seeds = []
for body in CHUNKED:
    seeds += [bytes([0]) + body, bytes([3, 40, 128, 200]) + body]
for head in HEADS:
    for body in CHUNKED[:2] + [b"hello"]:
        seeds += [bytes([0x40]) + head + body, bytes([0x42, 60, 150]) + head + body]
for head in RESPONSES:
    for body in CHUNKED[:2] + [b"hello"]:
        seeds += [bytes([0x80]) + head + body, bytes([0x81, 100]) + head + body]
for i, s in enumerate(seeds):
    with open(f"corpus/h1/seed-{i:03}", "wb") as f:
        f.write(s)
print(len(seeds), "seeds in corpus/h1")
