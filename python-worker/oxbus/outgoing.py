"""``self.out`` (Zato's long name: ``self.outgoing``): the server's outgoing connections.

::

    self.out.rest['CRM'].conn.get(self.cid, params={'id': 42})    # oxbus.rest
    self.out.plain_http['CRM'].conn.post(self.cid, {'a': 1})       # the same object
    self.out.sql['crm'].fetch_all('SELECT ...', {'x': 1})          # oxbus.sql
    self.out.mqtt['sensors'].publish('site/1/temp', {'c': 21.5})   # oxbus.mqtt
    self.out.redis['cache'].get('k')                               # oxbus.kvdb
    self.out.amqp.send({'id': 1}, 'orders', 'orders.x', 'created')  # oxbus.amqp
    self.outgoing.sql.get('crm').session()                         # Zato's session form

The connections are defined on the server (``docs/OUTGOING.md``), which holds their pools
and their credentials: no password, key or token ever reaches the worker. This module
also exports the exceptions every outgoing call may raise::

    OutgoingError                     base of all below
    ├── UnknownConnection (KeyError)  no connection of that name (or it was deleted)
    ├── InvalidCall (ValueError)      the call itself was refused (missing placeholder...)
    ├── PoolFull                      no pooled connection free within the pool wait
    ├── OutgoingTimeout (TimeoutError)
    ├── OutgoingConnectionError (ConnectionError)   connect/TLS failure, broken connection
    ├── ResponseTooLarge              over max_response_bytes / max_rows
    ├── AuthError                     the OAuth2 token could not be obtained
    ├── RedisError                    Redis answered an error (WRONGTYPE...); .message, .code
    ├── HTTPError                     Response.raise_for_status()
    ├── DatabaseError (= SQLError)    the database refused the statement; .code
    │   ├── IntegrityError            constraint violations
    │   └── ProgrammingError          syntax errors, unknown tables or columns
    └── AmqpPublishError              the broker did not take a message
        ├── AmqpNack                  basic.nack
        ├── AmqpUnroutable            a mandatory message came back; .reply_code, .reply_text
        └── AmqpRefused               the broker closed the channel (missing exchange...)
"""

from __future__ import annotations

from ._outcall import (AmqpNack, AmqpPublishError, AmqpRefused, AmqpUnroutable, AuthError,
                       Caller, DatabaseError, HTTPError, IntegrityError,
                       InvalidCall, OutgoingConnectionError, OutgoingError, OutgoingTimeout,
                       PoolFull, ProgrammingError, RedisError, ResponseTooLarge, SQLError,
                       UnknownConnection)
from .kvdb import RedisConnections
from .mqtt import MqttConnections
from .amqp import AmqpOutgoing
from .rest import RestConnections, Response
from .sql import Json, SqlConnections, text

TYPE_CHECKING = False  # see _protocol.py: keep ``typing`` out of the worker's startup
if TYPE_CHECKING:
    from typing import Optional

    from ._outcall import ARequest, Notify, Request

__all__ = [
    'OutgoingAPI', 'Response', 'Json', 'text', 'OutgoingError', 'UnknownConnection',
    'InvalidCall', 'PoolFull', 'OutgoingTimeout', 'OutgoingConnectionError',
    'ResponseTooLarge', 'AuthError', 'HTTPError', 'DatabaseError', 'SQLError',
    'IntegrityError', 'ProgrammingError', 'AmqpPublishError', 'AmqpNack', 'AmqpUnroutable',
    'AmqpRefused', 'RedisError',
]


class OutgoingAPI:
    """``self.out`` / ``self.outgoing``: ``rest`` (alias ``plain_http``), ``sql``, ``amqp``,
    ``redis`` and ``mqtt``."""

    __slots__ = ('rest', 'sql', 'amqp', 'redis', 'mqtt')

    def __init__(self, request: Request, arequest: Optional[ARequest] = None,
                 notify: Optional[Notify] = None) -> None:
        caller = Caller(request, arequest, notify)
        #: The REST connections by name (:class:`oxbus.rest.RestConnections`).
        self.rest = RestConnections(caller)
        #: The SQL connections by name (:class:`oxbus.sql.SqlConnections`).
        self.sql = SqlConnections(caller)
        #: Publishing through the outgoing AMQP connections (:class:`oxbus.amqp.AmqpOutgoing`).
        self.amqp = AmqpOutgoing(caller)
        #: The Redis connections by name (:class:`oxbus.kvdb.RedisConnections`).
        self.redis = RedisConnections(caller)
        #: The MQTT connections by name (:class:`oxbus.mqtt.MqttConnections`).
        self.mqtt = MqttConnections(caller)

    @property
    def plain_http(self) -> RestConnections:
        """Zato's name for :attr:`rest`."""
        return self.rest

    def __repr__(self) -> str:
        return '<OutgoingAPI>'
