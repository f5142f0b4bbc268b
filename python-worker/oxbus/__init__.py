"""Oxbus: write integration services in plain Python, served by the Oxbus Rust server.

This package is what a service author imports (``from oxbus import Service``) and what
the server runs as its Python worker (``python -m oxbus.worker``). It is stdlib-only so it
installs into any virtualenv without pulling dependencies into it.

The public API mirrors Zato's so that Zato services move over with an import change:
:class:`Service` with ``self.request``, ``self.response``, ``self.invoke``,
``self.invoke_async``, ``self.cache``, ``self.out`` (``self.outgoing``), ``self.logger``, ``self.cid``, ``self.channel``; SimpleIO ``input``
and ``output`` declarations; and the :class:`Reportable` family of exceptions that answer
with an HTTP status.

Unit tests of services import :mod:`oxbus.testing` (``TestClient``: a service run in the
test's process, no server); it is not imported here, so the worker never loads it.
"""

from .cache import CacheError, NotAnInteger, UnknownCache, ValueTooLarge
from .errors import (BadRequest, Conflict, Forbidden, InternalServerError, InvokeDepthError,
                     InvokeError, MethodNotAllowed, NotFound, Reportable, ServiceUnavailable,
                     TooManyRequests, Unauthorized)
from .outgoing import (AmqpNack, AmqpPublishError, AmqpRefused, AmqpUnroutable, AuthError,
                       DatabaseError, HTTPError, IntegrityError, InvalidCall,
                       OutgoingConnectionError, OutgoingError, OutgoingTimeout, PoolFull,
                       ProgrammingError, RedisError, ResponseTooLarge, SQLError,
                       UnknownConnection)
from .pubsub import (MessageTooLarge, PubSubAnswerTooLarge, PubSubConflict, PubSubError,
                     PubSubForbidden, PubSubInvalid, PubSubNotReachable, PubSubUnavailable,
                     SubscriptionNotFound, TopicFull, TopicNotFound)
from .model import Model, ModelCtx
from .service import Channel, HTTPRequest, Request, Response, Security, Service
from .simpleio import (CSV, UTC, UUID, AsIs, Bool, Bunch, Date, DateTime, Decimal, Dict,
                       DictList, Float, Int, List, Opaque, Secret, Text)
from .zato_compat import install as _install_zato_names

_install_zato_names()

__version__ = '0.1.0'

__all__ = [
    'Service', 'Request', 'HTTPRequest', 'Response', 'Channel', 'Security', 'Bunch',
    'Model', 'ModelCtx', 'AsIs', 'Bool', 'CSV', 'Date', 'DateTime', 'Decimal', 'Dict',
    'DictList', 'Float', 'Int', 'List', 'Opaque', 'Secret', 'Text', 'UTC', 'UUID',
    'Reportable', 'BadRequest', 'Unauthorized', 'Forbidden', 'NotFound', 'MethodNotAllowed',
    'Conflict', 'TooManyRequests', 'InternalServerError', 'ServiceUnavailable',
    'InvokeError', 'InvokeDepthError',
    'CacheError', 'UnknownCache', 'ValueTooLarge', 'NotAnInteger', 'OutgoingError',
    'UnknownConnection', 'InvalidCall', 'PoolFull', 'OutgoingTimeout',
    'OutgoingConnectionError', 'ResponseTooLarge', 'AuthError', 'HTTPError', 'DatabaseError',
    'SQLError', 'IntegrityError', 'ProgrammingError', 'RedisError', 'AmqpPublishError', 'AmqpNack',
    'AmqpUnroutable', 'AmqpRefused', 'PubSubError', 'TopicNotFound',
    'SubscriptionNotFound', 'PubSubForbidden', 'PubSubInvalid', 'MessageTooLarge',
    'PubSubAnswerTooLarge', 'TopicFull', 'PubSubConflict', 'PubSubUnavailable',
    'PubSubNotReachable', '__version__',
]
