"""bench/amqp_consume_svc.py - the work every consumer of bench/amqp_consume.py does per
message (`work`), and the Oxbus service an AMQP channel hands each message to.

`work` is what a typical consumer does with a small JSON order: parse it and total its
lines. The pika and kombu consumers import this file and call the same function.
"""
import json

from oxbus import Service


def work(body):
    order = json.loads(body)
    return sum(line['qty'] * line['price'] for line in order['lines'])


class Consume(Service):
    name = 'bench.amqp-consume'

    def handle(self):
        work(self.request.raw_request)
