#!/usr/bin/env python3
"""Writes the golden vectors of the cluster bus protocol, version 1 (ipc-protocol/BUS.md).

This is a second, independent implementation of the bus's bytes (Python stdlib only:
hmac, hashlib, struct, json), so the Rust suite (ipc-protocol/tests/bus_golden.rs) checks
its codec, key derivation, transcripts and proofs against code that does not share a line
with it. Run it from anywhere; it rewrites every file in this directory but itself. The
output is deterministic: a fixed secret and fixed nonces, so the proofs are reproducible.
"""

import hashlib
import hmac
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
LABEL = b'oxbus-bus-v1'
KEY_INFO = b'oxbus-bus-v1 handshake'
KINDS = {'HELLO': 1, 'CHALLENGE': 2, 'AUTH': 3, 'WELCOME': 4, 'CALL': 5, 'REPLY': 6,
         'PING': 7, 'PONG': 8, 'NOTIFY': 9, 'BYE': 10, 'ERROR': 15}

# The handshake of the vectors: alpha (sorts first, so it dials) joins bravo, which already
# has a link with charlie, in cluster "prod".
SECRET = b'golden-vector cluster secret; never use it for a real cluster'
CLUSTER, DIALER, ACCEPTOR, LINKED = 'prod', 'alpha', 'bravo', ['charlie']
DIALER_NONCE = bytes(range(0x00, 0x20))
ACCEPTOR_NONCE = bytes(range(0xa0, 0xc0))
CONFIG_VERSION = 17


def hkdf_sha256(salt: bytes, ikm: bytes, info: bytes) -> bytes:
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b'\x01', hashlib.sha256).digest()


def derive_key(secret: bytes) -> bytes:
    return hkdf_sha256(LABEL, secret, KEY_INFO)


def transcript(role: str, cluster: str, dialer: str, acceptor: str,
               dialer_nonce: bytes, acceptor_nonce: bytes) -> bytes:
    fields = [LABEL, role.encode(), cluster.encode(), dialer.encode(), acceptor.encode(),
              dialer_nonce, acceptor_nonce]
    return b''.join(struct.pack('>I', len(f)) + f for f in fields)


def proof(key: bytes, role: str) -> bytes:
    t = transcript(role, CLUSTER, DIALER, ACCEPTOR, DIALER_NONCE, ACCEPTOR_NONCE)
    return hmac.new(key, t, hashlib.sha256).digest()


def dumps(value) -> str:
    return json.dumps(value, separators=(',', ':'))


def frame(kind: str, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack('>IBBI', len(payload), KINDS[kind], flags, stream) + payload


def main() -> None:
    key = derive_key(SECRET)
    p_acceptor, p_dialer = proof(key, 'acceptor'), proof(key, 'dialer')
    vectors = []

    def add_json(name, kind, value, flags=0, stream=0):
        text = dumps(value)
        vectors.append({'name': name, 'kind': kind, 'flags': flags, 'stream': stream,
                        'payload_text': text, 'file': name + '.bin'})
        return frame(kind, flags, stream, text.encode())

    def add_raw(name, kind, payload, flags=0, stream=0):
        vectors.append({'name': name, 'kind': kind, 'flags': flags, 'stream': stream,
                        'payload_hex': payload.hex(), 'file': name + '.bin'})
        return frame(kind, flags, stream, payload)

    def add_meta(name, kind, meta, body, flags=0, stream=0):
        text = dumps(meta)
        vectors.append({'name': name, 'kind': kind, 'flags': flags, 'stream': stream,
                        'meta': text, 'body_hex': body.hex(), 'file': name + '.bin'})
        m = text.encode()
        return frame(kind, flags, stream, struct.pack('>I', len(m)) + m + body)

    files = {}
    files['hello'] = add_json('hello', 'HELLO', {
        'protocol': 1, 'cluster': CLUSTER, 'server': DIALER, 'nonce': DIALER_NONCE.hex()})
    files['challenge'] = add_json('challenge', 'CHALLENGE', {
        'protocol': 1, 'cluster': CLUSTER, 'server': ACCEPTOR, 'nonce': ACCEPTOR_NONCE.hex(),
        'proof': p_acceptor.hex()})
    files['auth'] = add_json('auth', 'AUTH', {'proof': p_dialer.hex()})
    files['welcome'] = add_json('welcome', 'WELCOME', {
        'config_version': CONFIG_VERSION, 'servers': sorted([DIALER, ACCEPTOR] + LINKED)})
    files['ping'] = add_raw('ping', 'PING', bytes.fromhex('0102030405060708'))
    files['pong'] = add_raw('pong', 'PONG', bytes.fromhex('0102030405060708'))
    files['notify'] = add_json('notify', 'NOTIFY', {
        'config_version': 18, 'server': DIALER, 'kinds': ['modules', 'channels']})
    files['notify_minimal'] = add_json('notify_minimal', 'NOTIFY', {
        'config_version': 19, 'server': ACCEPTOR})
    files['call_deploy_activate'] = add_meta('call_deploy_activate', 'CALL', {
        'op': 'deploy.activate',
        'modules': [{'name': 'crm.customers', 'version': 3}, {'name': 'crm.util', 'version': 7}],
        'config_version': 18}, b'', stream=1)
    files['reply_deploy_report'] = add_meta('reply_deploy_report', 'REPLY', {'status': 200},
        dumps({'server': ACCEPTOR, 'config_version': 18, 'modules': [
            {'name': 'crm.customers', 'version': 3}, {'name': 'crm.util', 'version': 8}],
            'workers': [
            {'worker_id': 1, 'pid': 4242, 'ok': True, 'ms': 12},
            {'worker_id': 2, 'pid': 4243, 'ok': False, 'ms': 40,
             'error': "ModuleNotFoundError: No module named 'lxml'"}]}).encode(), stream=1)
    files['call_deploy_remove'] = add_meta('call_deploy_remove', 'CALL', {
        'op': 'deploy.remove', 'modules': ['crm.util'], 'config_version': 20}, b'',
        stream=0x80000001)
    files['reply_deploy_remove'] = add_meta('reply_deploy_remove', 'REPLY', {'status': 200},
        dumps({'server': DIALER, 'config_version': 21,
               'modules': [{'name': 'crm.util', 'version': None}], 'workers': [
            {'worker_id': 1, 'pid': 5100, 'ok': True, 'ms': 3}]}).encode(),
        stream=0x80000001)
    files['call_reserved_op'] = add_meta('call_reserved_op', 'CALL', {
        'op': 'cache.get', 'cache': 'default'}, b'cust.7', stream=0x7fffffff)
    files['reply_unknown_op'] = add_meta('reply_unknown_op', 'REPLY', {'status': 501},
        dumps({'error': 'unknown op: cache.get (reserved for a later version of the '
                        'cluster bus)'}).encode(), stream=0x7fffffff)
    files['call_async_unknown_op'] = add_meta('call_async_unknown_op', 'CALL', {
        'op': 'example.fire'}, bytes.fromhex('0001ff0d0a22'), flags=1, stream=0xffffffff)
    files['bye'] = add_raw('bye', 'BYE', b'')
    files['error_protocol_mismatch'] = add_json('error_protocol_mismatch', 'ERROR', {
        'code': 'protocol_mismatch',
        'message': f'server "{ACCEPTOR}" speaks cluster bus protocol 1, its peer speaks 2: '
                   'every server of a cluster must run an Oxbus release with the same bus '
                   'protocol'})
    files['error_wrong_cluster'] = add_json('error_wrong_cluster', 'ERROR', {
        'code': 'wrong_cluster',
        'message': f'server "{ACCEPTOR}" is in cluster "{CLUSTER}" but server "{DIALER}" is '
                   'in cluster "staging": check the cluster name in both servers\' '
                   'configuration'})
    files['error_bad_proof'] = add_json('error_bad_proof', 'ERROR', {
        'code': 'bad_proof',
        'message': f'the proof from server "{DIALER}" does not verify: the two servers do '
                   'not share the same cluster secret'})

    for name, data in files.items():
        with open(os.path.join(HERE, name + '.bin'), 'wb') as f:
            f.write(data)

    manifest = {
        'protocol': 1,
        'handshake': {
            'secret_text': SECRET.decode(),
            'key': derive_key(SECRET).hex(),
            'cluster': CLUSTER,
            'dialer': DIALER,
            'acceptor': ACCEPTOR,
            'linked': LINKED,
            'config_version': CONFIG_VERSION,
            'dialer_nonce': DIALER_NONCE.hex(),
            'acceptor_nonce': ACCEPTOR_NONCE.hex(),
            'transcript_dialer': transcript('dialer', CLUSTER, DIALER, ACCEPTOR,
                                            DIALER_NONCE, ACCEPTOR_NONCE).hex(),
            'transcript_acceptor': transcript('acceptor', CLUSTER, DIALER, ACCEPTOR,
                                              DIALER_NONCE, ACCEPTOR_NONCE).hex(),
            'proof_dialer': p_dialer.hex(),
            'proof_acceptor': p_acceptor.hex(),
        },
        'vectors': vectors,
    }
    with open(os.path.join(HERE, 'vectors.json'), 'w', encoding='utf-8') as f:
        json.dump(manifest, f, indent=1)
        f.write('\n')


if __name__ == '__main__':
    main()
