"""The service bench/amqp_publish.py deploys: N publishes with publisher confirms of one
message to a queue (through the default exchange), timed inside the worker, either through
the server (``self.out.amqp.send``: a pooled confirm channel, many sends in flight on it) or
with pika (BlockingConnection, confirm_delivery: each basic_publish waits for its confirm),
in the same worker process. pika's connection is opened once per worker thread and kept."""
import threading
import time

from oxbus import Service

_local = threading.local()


def _pika_channel(url):
    ch = getattr(_local, 'ch', None)
    if ch is None or ch.is_closed:
        import pika  # installed by bench/amqp_publish.py into the worker's interpreter
        conn = pika.BlockingConnection(pika.URLParameters(url))
        ch = conn.channel()
        ch.confirm_delivery()
        _local.conn, _local.ch = conn, ch
    return ch


class AmqpPublishLoop(Service):
    """{"target": "oxbus"|"pika", "n": N, "size": body bytes, "queue": q, "conn": name,
    "url": amqp URL for pika}."""
    name = 'bench.amqp-publish'

    def handle(self):
        p = self.request.payload
        n, queue = p['n'], p['queue']
        body = b'x' * p.get('size', 200)
        started = time.perf_counter()
        cpu = time.thread_time()
        if p['target'] == 'oxbus':
            send, conn = self.out.amqp.send, p['conn']
            for _ in range(n):
                send(body, conn, '', queue)
        else:
            import pika
            ch = _pika_channel(p['url'])
            props = pika.BasicProperties(delivery_mode=2)
            for _ in range(n):
                ch.basic_publish('', queue, body, props)
        wall = time.perf_counter() - started
        self.response.payload = {'n': n, 'wall_s': wall,
                                 'worker_cpu_s': time.thread_time() - cpu}
