"""What a file-transfer channel hands its service: one complete file of a watched folder
(ipc-protocol/SPEC.md, "File-transfer channels"), in Zato 3.2's shape.

A service a file-transfer channel invokes sees ``self.channel.type == 'file-transfer'``,
``self.channel.name`` the channel's name, and in ``self.request.raw_request`` (and
``self.request.payload``, the same dict) Zato's keys::

    full_path      '/data/in/2026/x.csv'
    file_name      'x.csv'
    relative_dir   '2026'              (below the watched folder; '' directly in it)
    base_dir       '/data/in/2026'     (the file's folder, as Zato's)
    channel_name   'orders-in'
    ts_utc         '2026-12-07T10:00:00.123456'   (when the server picked the file up)
    raw_data       the text (str, decoded with the channel's data_encoding); bytes for a
                   binary file (or one that did not decode); '' when the channel does not
                   read files (the service reads full_path itself)
    data           what the channel's parse_with made of the text; None when not parsed
    has_raw_data   whether raw_data holds the file
    has_data       whether data holds a parse result
    parse_error    None, or why raw_data was not decoded or data not parsed (the
                   traceback of a parser's exception, as Zato's format_exc())

and Oxbus's ``watched_dir`` (the watched folder the file is in or below), ``size``,
``mtime_ns`` and ``redelivered`` (the file may have been handed to the service before: the
server holding it stopped before it recorded an outcome). A decoding or parsing
failure never fails the call: the service runs and decides. SimpleIO input declarations
do not apply to this channel.

``parse_with``: ``json`` (``json.loads``), ``csv`` (a list of rows), ``xml`` (an
``xml.etree.ElementTree.Element``), ``lines`` (``str.splitlines``), or ``py:module.callable``,
any importable callable given the text; as in Zato, ``py:csv.reader`` is given an
``io.StringIO`` of it (and so returns a reader to iterate).

The server owns the file: once the service returned it records the file done and moves it
to the channel's processed folder (or deletes it); an exception moves it to the failed
folder, the error beside it.
"""

from __future__ import annotations

import json
import sys

from .service import Request

TYPE_CHECKING = False  # see _protocol.py: keep ``typing`` out of the worker's startup
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Tuple

__all__ = ['FileTransferRequest', 'raw_request_from_call', 'get_parser', 'PARSERS',
           'UnknownParser']


def _csv(text: str) -> Any:
    import csv
    import io
    return list(csv.reader(io.StringIO(text)))


def _xml(text: str) -> Any:
    from xml.etree import ElementTree
    return ElementTree.fromstring(text)


#: The parsers ``parse_with`` names without ``py:``; each takes the file's text.
PARSERS: Dict[str, Callable[[str], Any]] = {
    'json': json.loads,
    'csv': _csv,
    'xml': _xml,
    'lines': str.splitlines,
}

# ``py:`` parsers, by name: (the module they came from, the callable). A name is resolved
# once; a hot deployment that replaces the module in sys.modules resolves it again.
_py_parsers: Dict[str, Tuple[Any, Callable[[str], Any]]] = {}


class UnknownParser(ValueError):
    """A ``parse_with`` that names no parser (neither a built-in one nor ``py:...``)."""


def _resolve(dotted: str) -> Tuple[Any, Any]:
    """(module, object) for ``pkg.module.attr`` (or ``pkg.module.Class.method``)."""
    from importlib import import_module
    parts = dotted.split('.')
    if len(parts) < 2 or not all(parts):
        raise UnknownParser('py:%s: expected py:<module>.<callable>' % dotted)
    # The longest prefix that is a module; the rest are attributes of it.
    for cut in range(len(parts) - 1, 0, -1):
        module_name = '.'.join(parts[:cut])
        try:
            module = import_module(module_name)
        except ModuleNotFoundError as e:
            # Only a missing module of this very name (or a parent of it) means "try a
            # shorter prefix"; a module that exists and fails its own imports is reported.
            if cut > 1 and e.name is not None and (
                    module_name == e.name or module_name.startswith(e.name + '.')):
                continue
            raise
        obj: Any = module
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return module, obj
    raise AssertionError('not reached')  # cut == 1 either returns or raises


def get_parser(parse_with: Any) -> Callable[[str], Any]:
    """The callable ``parse_with`` names, taking the file's text.

    Raises :class:`UnknownParser` for a name that is no parser, and whatever importing a
    ``py:`` name raises (ImportError, AttributeError...) when it does not import.
    """
    if not isinstance(parse_with, str):
        raise UnknownParser('parse_with is a str, not %s' % type(parse_with).__name__)
    name = parse_with.strip()
    if not name.startswith('py:'):
        parser = PARSERS.get(name)
        if parser is None:
            raise UnknownParser('unknown parser %r: parse_with is json, csv, xml, lines or '
                                'py:<module>.<callable>' % parse_with)
        return parser
    dotted = name[3:].strip()
    hit = _py_parsers.get(dotted)
    if hit is not None:
        module, parser = hit
        if sys.modules.get(module.__name__) is module:
            return parser
    module, obj = _resolve(dotted)
    if not callable(obj):
        raise UnknownParser('py:%s is not callable (a %s)' % (dotted, type(obj).__name__))
    if dotted == 'csv.reader':
        # Zato's special case: csv.reader wants lines, so it gets a file-like object.
        reader = obj

        def parser(text: str) -> Any:
            import io
            return reader(io.StringIO(text))
    else:
        parser = obj
    _py_parsers[dotted] = (module, parser)
    return parser


def raw_request_from_call(meta: Dict[str, Any], body: bytes) -> Dict[str, Any]:
    """``self.request.raw_request`` of a ``file-transfer`` invocation (its meta's ``file``
    object and its body, the file's bytes); ValueError when the meta has no ``file``
    object. Decoding and parsing failures are reported in ``parse_error``, never raised."""
    info = meta.get('file')
    if not isinstance(info, dict):
        raise ValueError('a file-transfer call without its file object')
    has_raw_data = bool(info.get('has_raw_data'))
    raw_data: Any = ''
    data: Any = None
    has_data = False
    parse_error = None
    if has_raw_data:
        raw = body if type(body) is bytes else bytes(body)
        if info.get('binary'):
            raw_data = raw
        else:
            encoding = info.get('data_encoding') or 'utf-8'
            try:
                raw_data = raw.decode(encoding)
            except Exception as e:  # UnicodeDecodeError, LookupError, TypeError (not a str)
                raw_data = raw
                parse_error = 'cannot decode as %s: %s' % (encoding, e)
            else:
                parse_with = info.get('parse_with')
                if parse_with:
                    try:
                        data = get_parser(parse_with)(raw_data)
                        has_data = True
                    except UnknownParser as e:
                        parse_error = str(e)
                    except Exception:  # the parser's, or the import of a py: one
                        import traceback
                        parse_error = traceback.format_exc()
    ts_utc = info.get('ts_utc')
    if ts_utc is None:
        import datetime
        ts_utc = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None).isoformat()
    return {
        'full_path': info.get('full_path'),
        'file_name': info.get('file_name'),
        'relative_dir': info.get('relative_dir') or '',
        'base_dir': info.get('base_dir'),
        'channel_name': meta.get('channel_name'),
        'ts_utc': ts_utc,
        'raw_data': raw_data,
        'data': data,
        'has_raw_data': has_raw_data,
        'has_data': has_data,
        'parse_error': parse_error,
        'watched_dir': info.get('watched_dir'),
        'size': info.get('size'),
        'mtime_ns': info.get('mtime_ns'),
        'redelivered': bool(info.get('redelivered')),
    }


class FileTransferRequest(Request):
    """``self.request`` of a file-transfer invocation: ``raw_request`` (and ``payload``,
    until the service sets another) is the file's dict (above); ``raw`` the body as
    received (the file's bytes, or empty); ``data_format`` ``'raw'``."""

    __slots__ = ('_raw_request',)

    def __init__(self, raw_request: Dict[str, Any], raw: bytes, meta: Dict[str, Any]) -> None:
        super().__init__(raw_request, raw, 'raw', meta)
        self._raw_request = raw_request

    @property
    def raw_request(self) -> Dict[str, Any]:
        return self._raw_request
