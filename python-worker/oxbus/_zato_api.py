"""``zato.common.api`` and ``zato.common.json_internal``: the constants and helpers Zato's
documented services use.

``CHANNEL`` names Zato's channel types with the values ``self.channel.type`` has here, so
``self.channel.type == CHANNEL.HTTP_SOAP`` is true for a REST call as it is in Zato.
"""

from __future__ import annotations

from json import dumps, loads

from .simpleio import NotGiven

__all__ = ['CACHE', 'CHANNEL', 'DATA_FORMAT', 'PARAMS_PRIORITY', 'NotGiven', 'ZATO_NONE',
           'ZATO_NOT_GIVEN', 'dumps', 'loads', 'HTTP_SOAP_SERIALIZATION_TYPE', 'URL_TYPE']

ZATO_NONE = 'ZATO_NONE'
ZATO_NOT_GIVEN = NotGiven


class CACHE:
    class TYPE:
        BUILTIN = 'builtin'
        MEMCACHED = 'memcached'


class CHANNEL:
    HTTP_SOAP = 'rest'
    REST = 'rest'
    JSON_RPC = 'jsonrpc'
    INVOKE = 'invoke'
    INVOKE_ASYNC = 'invoke'
    SCHEDULER = 'scheduler'
    AMQP = 'amqp'
    MQTT = 'mqtt'
    PUBLISH = 'pubsub'
    WEB_SOCKET = 'websocket'
    FILE_TRANSFER = 'file-transfer'
    FANOUT_CALL = 'invoke'
    FANOUT_ON_TARGET = 'invoke'
    FANOUT_ON_FINAL = 'invoke'
    PARALLEL_EXEC_CALL = 'invoke'
    PARALLEL_EXEC_ON_TARGET = 'invoke'


class DATA_FORMAT:
    JSON = 'json'
    DICT = 'dict'
    XML = 'xml'
    CSV = 'csv'
    POST = 'post'
    HL7 = 'hl7'


class PARAMS_PRIORITY:
    CHANNEL_PARAMS_OVER_MSG = 'channel-params-over-msg'
    MSG_OVER_CHANNEL_PARAMS = 'msg-over-channel-params'
    DEFAULT = CHANNEL_PARAMS_OVER_MSG


class URL_TYPE:
    SOAP = 'soap'
    PLAIN_HTTP = 'plain_http'


class HTTP_SOAP_SERIALIZATION_TYPE:
    STRING_VALUE = 'string'
    SUDS = 'suds'
