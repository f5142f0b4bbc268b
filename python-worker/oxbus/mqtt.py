"""MQTT from a service: ``self.out.mqtt['name'].publish(topic, payload, qos=1, retain=False)``
(and the awaitable ``apublish``), and the message an MQTT channel hands its service
(``self.request.mqtt``).

The connection lives in the server (``docs/CONNECTORS.md``, "MQTT"), which holds its client
and its password: a publish is one ``out.mqtt`` call over the worker's IPC connection
(``ipc-protocol/SPEC.md``), the payload raw in the body. It returns once the broker
acknowledged the message (QoS 1: its PUBACK came) or once the message was written (QoS 0),
and raises otherwise::

    UnknownConnection   no MQTT connection of that name
    InvalidCall         a topic with a wildcard, a QoS other than 0 or 1
    OutgoingTimeout     no PUBACK within the connection's timeout_ms (it may still arrive)
    OutgoingConnectionError   not connected within the timeout (``error == 'connect'``), or
                        the connection broke before the PUBACK (``error == 'io'``)
    ResponseTooLarge    a payload over the 16 MiB packet limit
    PoolFull            1024 publishes already wait for the broker
"""

from __future__ import annotations

from ._outcall import invocation_context
from ._protocol import encode_json
from .service import MqttMessage

TYPE_CHECKING = False  # see _protocol.py: keep ``typing`` out of the worker's startup
if TYPE_CHECKING:
    from typing import Any, Dict, Tuple

    from ._outcall import Caller

__all__ = ['MqttConnections', 'MqttConnection', 'MqttMessage']


def _payload(payload: Any) -> bytes:
    """bytes as they are, str as UTF-8, anything else (dict, list, numbers...) as JSON."""
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, (bytearray, memoryview)):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode('utf-8')
    return encode_json(payload)


class MqttConnection:
    """One outgoing MQTT connection (``self.out.mqtt['name']``)."""

    __slots__ = ('name', '_caller')

    def __init__(self, name: str, caller: Caller) -> None:
        self.name = name
        self._caller = caller

    def _call(self, topic: str, payload: Any, qos: int, retain: bool
              ) -> Tuple[Dict[str, Any], bytes]:
        if not isinstance(topic, str):
            raise TypeError('topic must be a str, not %s' % type(topic).__name__)
        if qos not in (0, 1) or isinstance(qos, bool):
            from ._outcall import InvalidCall
            raise InvalidCall('MQTT connection %s: qos must be 0 or 1, not %r (QoS 2 is not '
                              'supported)' % (self.name, qos), self.name, 'invalid', 400)
        meta: Dict[str, Any] = {'op': 'out.mqtt', 'conn': self.name, 'topic': topic,
                                'qos': qos, 'retain': bool(retain)}
        meta.update(invocation_context())
        return meta, _payload(payload)

    def publish(self, topic: str, payload: Any, qos: int = 1, retain: bool = False) -> None:
        """Publish ``payload`` (bytes; str as UTF-8; dict, list... as JSON) to ``topic``.
        Returns once the broker's PUBACK came (QoS 1) or the message was written (QoS 0)."""
        meta, body = self._call(topic, payload, qos, retain)
        self._caller.call(self.name, meta, body)

    async def apublish(self, topic: str, payload: Any, qos: int = 1,
                       retain: bool = False) -> None:
        """:meth:`publish` for ``async def`` services."""
        meta, body = self._call(topic, payload, qos, retain)
        await self._caller.acall(self.name, meta, body)

    def __repr__(self) -> str:
        return '<MqttConnection %s>' % self.name


class MqttConnections:
    """``self.out.mqtt``: the MQTT connections by name (``self.out.mqtt['sensors']``, or
    ``.get('sensors')``). Names are checked by the server at call time."""

    __slots__ = ('_caller', '_conns')

    def __init__(self, caller: Caller) -> None:
        self._caller = caller
        self._conns: Dict[str, MqttConnection] = {}

    def __getitem__(self, name: str) -> MqttConnection:
        conn = self._conns.get(name)
        if conn is None:
            if not isinstance(name, str):
                raise TypeError('connection names are strings, not %s' % type(name).__name__)
            conn = MqttConnection(name, self._caller)
            if len(self._conns) < 256:
                conn = self._conns.setdefault(name, conn)
        return conn

    def get(self, name: str) -> MqttConnection:
        return self[name]

    def __repr__(self) -> str:
        return '<MqttConnections>'
