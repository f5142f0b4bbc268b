#!/usr/bin/env python3
"""Writes the golden vectors of IPC protocol version 2 (this folder) from version 1's.

Version 2 changed one thing (SPEC.md, "Compact invoke meta"), so its vectors are version 1's
with the protocol number in HELLO, WELCOME and the mismatch ERROR brought up to date, plus
the vectors of the compact form. Those are written here by an implementation of their own
on the Python standard library (not the worker's codec): each has ``meta``, the array's text
as the supervisor writes it (serde_json's compact output), and ``meta_object``, the object
form with the same fields, which both suites expand the array to and compare with.

Rerun after a deliberate change and commit its output: ``python3 generate.py``.
"""

import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
V1 = os.path.join(os.path.dirname(HERE), 'v1')
KINDS = {'HELLO': 1, 'WELCOME': 2, 'READY': 3, 'CALL': 4, 'REPLY': 5, 'CANCEL': 6, 'PING': 7,
         'PONG': 8, 'LOG': 9, 'DRAIN': 10, 'BYE': 11, 'ERROR': 15}
FIELDS = ('op', 'service', 'cid', 'channel', 'data_format', 'method', 'path', 'params', 'query',
          'headers', 'deadline_ms', 'remote_addr', 'scheme', 'port', 'channel_name',
          'traceparent')


def text(obj):
    return json.dumps(obj, separators=(',', ':'), ensure_ascii=False)


def frame(kind, flags, stream, payload):
    return struct.pack('>IBBI', len(payload), KINDS[kind], flags, stream) + payload


def compact(meta):
    """The compact form of an object meta, as the supervisor orders it."""
    return [meta.get(f) for f in FIELDS] + [{k: v for k, v in meta.items() if k not in FIELDS}]


# The object forms of the compact vectors (the object form's key order, as serde writes it).
COMPACT = [
    ('call_invoke_compact', 11, {
        'op': 'invoke', 'service': 'demo.echo', 'cid': 'd1cba197000000003d39',
        'channel': 'rest', 'data_format': 'json', 'method': 'POST', 'path': '/echo',
        'params': {}, 'query': '',
        'headers': [['host', '127.0.0.1:8107'], ['content-type', 'application/json'],
                    ['content-length', '27']],
        'deadline_ms': 29999, 'remote_addr': '127.0.0.1', 'scheme': 'http', 'port': 8107,
        'channel_name': '/echo',
        'traceparent': '00-bbd496f6ee5a4266e97695eae198dad2-f516c1b85093b8f1-00'},
     b'{"name":"Ann","n":1,"x":[1]}'),
    ('call_invoke_compact_rest', 12, {
        'op': 'invoke', 'service': 'crm.customer.get', 'cid': 'req-7f3a:42',
        'channel': 'rest', 'data_format': 'raw', 'method': 'GET', 'path': '/crm/7',
        'params': {'id': '7'}, 'query': 'a=%C3%A9', 'headers': [['x-bin', 'caf\ufffd']],
        'deadline_ms': 1500, 'remote_addr': '2001:db8::7', 'scheme': 'https', 'port': 443,
        'channel_name': 'crm',
        'security': {'name': 'crm.basic', 'type': 'basic', 'username': 'ann'},
        'traceparent': '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
        'tracestate': 'congo=t61rcWkgMzE', 'params_priority': 'msg-over-channel-params'},
     b'\x00\x01\xff'),
    ('call_invoke_compact_sparse', 13, {
        'op': 'invoke', 'service': 'demo.visits', 'cid': '0f3a9c1e2b4d5a6f7083',
        'channel': 'scheduler', 'data_format': 'json', 'deadline_ms': 30000,
        'channel_name': 'demo-visits',
        'traceparent': '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b8-01',
        'job_type': 'interval_based'},
     b''),
]


def main():
    with open(os.path.join(V1, 'vectors.json'), encoding='utf-8') as f:
        doc = json.load(f)
    out = []
    for v in doc['vectors']:
        v = dict(v)
        if v['kind'] in ('HELLO', 'WELCOME'):
            obj = json.loads(v['payload_text'])
            obj['protocol'] = 2
            v['payload_text'] = text(obj)
        if v['name'] == 'error_protocol_mismatch':
            obj = json.loads(v['payload_text'])
            obj['message'] = obj['message'].replace('protocol 1, this worker speaks 2',
                                                    'protocol 2, this worker speaks 1')
            v['payload_text'] = text(obj)
        if 'payload_text' in v:
            wire = frame(v['kind'], v['flags'], v['stream'], v['payload_text'].encode())
        else:
            with open(os.path.join(V1, v['file']), 'rb') as f:
                wire = f.read()
        with open(os.path.join(HERE, v['file']), 'wb') as f:
            f.write(wire)
        out.append(v)
    for name, stream, meta, body in COMPACT:
        m = text(compact(meta)).encode()
        with open(os.path.join(HERE, name + '.bin'), 'wb') as f:
            f.write(frame('CALL', 0, stream, struct.pack('>I', len(m)) + m + body))
        out.append({'name': name, 'kind': 'CALL', 'flags': 0, 'stream': stream,
                    'meta': m.decode(), 'meta_object': text(meta), 'body_hex': body.hex(),
                    'file': name + '.bin'})
    with open(os.path.join(HERE, 'vectors.json'), 'w', encoding='utf-8') as f:
        json.dump({'protocol': 2, 'vectors': out}, f, indent=1, ensure_ascii=False)
        f.write('\n')


if __name__ == '__main__':
    main()
