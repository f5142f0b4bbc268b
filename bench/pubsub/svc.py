"""The service of bench/pubsub.sh's "service publishing" variant: publishes `n` messages of
`size` bytes to `topic`, each stamped with its creation time (Unix ns, 20 digits) so that the
subscriber measures publish-to-delivery latency; `mode` "loop" publishes them one
`self.pubsub.publish` at a time, "list" in one call with `data_list`."""

import time

from oxbus import Service


class Publish(Service):
    name = 'bench.publish'

    def handle(self):
        req = self.request.payload
        topic, n, size = req['topic'], int(req['n']), int(req['size'])
        gd = bool(req.get('gd', True))
        pad = 'x' * max(0, size - 20)
        if req.get('mode') == 'list':
            data = ['%020d%s' % (time.time_ns(), pad) for _ in range(n)]
            published = len(self.pubsub.publish(topic, data_list=data, has_gd=gd))
        else:
            for _ in range(n):
                self.pubsub.publish(topic, data='%020d%s' % (time.time_ns(), pad), has_gd=gd)
            published = n
        self.response.payload = {'published': published}
