"""Query strings and form bodies: :class:`MultiDict`, :class:`UploadedFile` and their parsers.

``self.request.http.query`` is a :class:`MultiDict` of the query string;
``self.request.form`` and ``self.request.files`` are those of an
``application/x-www-form-urlencoded`` or ``multipart/form-data`` body::

    name = self.request.form['name']              # the last value of a repeated field
    tags = self.request.form.getlist('tag')       # every value, in order
    upload = self.request.files['report']         # an UploadedFile
    upload.filename, upload.content_type, upload.data

A key given more than once reads as its **last** value (what Django's ``QueryDict`` and
Starlette's ``QueryParams`` do, and what the query string gave before ``getlist`` existed;
Flask's ``MultiDict`` gives the first); :meth:`MultiDict.getlist` gives every value.

Everything here is parsed on demand, the first time a service asks, and only from the
body the server already read within ``http.max_body_bytes``. A form has at most
:data:`MAX_FORM_PARTS` fields (query string: :data:`MAX_QUERY_FIELDS`), each multipart part
at most :data:`MAX_PART_HEADER_BYTES` of headers; a body that breaks
the rules is a :class:`~oxbus.errors.BadRequest` naming what is wrong, so a service that
reads the form answers 400. The multipart parser is this module's own (RFC 7578 on RFC
2046's framing): the stdlib's ``cgi`` is gone in 3.13, and the ``email`` package's parser
rewrites line endings of the parts it is given. Stdlib only, like the rest of the package.
"""

from __future__ import annotations

from .errors import BadRequest
from .simpleio import Bunch

TYPE_CHECKING = False  # see _protocol.py: keep ``typing`` out of the worker's startup
if TYPE_CHECKING:
    from typing import Any, Dict, Iterable, List, Optional, Tuple

__all__ = ['MultiDict', 'FormFields', 'UploadedFile', 'MAX_FORM_PARTS', 'MAX_QUERY_FIELDS',
           'MAX_PART_HEADER_BYTES', 'form_kind',
           'parse_query', 'parse_form', 'form_payload', 'looks_like_json', 'content_type_of']

#: At most this many fields (urlencoded) or parts (multipart) in a form body.
MAX_FORM_PARTS = 1000
#: At most this many fields in a query string.
MAX_QUERY_FIELDS = 1000
#: At most this many bytes of headers in one part of a multipart body.
MAX_PART_HEADER_BYTES = 16 * 1024

URLENCODED = 'application/x-www-form-urlencoded'
MULTIPART = 'multipart/form-data'


class MultiDict(Bunch):
    """A :class:`~oxbus.simpleio.Bunch` (a dict, keys also as attributes) of the last value
    of each key, with :meth:`getlist` for every value of a repeated key."""

    __slots__ = ('_pairs',)

    def __init__(self, pairs: Iterable[Tuple[str, Any]] = ()) -> None:
        pairs = list(pairs)
        dict.__init__(self, pairs)
        object.__setattr__(self, '_pairs', pairs)

    def getlist(self, key: str) -> List[Any]:
        """Every value of ``key`` in the order received; ``[]`` when it is absent. A key
        assigned (or deleted) since has its current value only (or none): ``getlist``
        never disagrees with ``self[key]``."""
        if key not in self:
            return []
        values = [v for k, v in self._pairs if k == key]
        current = dict.__getitem__(self, key)
        if not values or values[-1] is not current:
            return [current]
        return values

    def items_all(self) -> List[Tuple[str, Any]]:
        """Every (key, value) pair in the order received, repeated keys included; as
        :meth:`getlist`, a key assigned since has its current value only, a deleted one
        none."""
        out: List[Tuple[str, Any]] = []
        seen = set()
        for k, _ in self._pairs:
            if k not in seen:
                seen.add(k)
                out.extend((k, v) for v in self.getlist(k))
        out.extend((k, v) for k, v in self.items() if k not in seen)
        return out

    def __repr__(self) -> str:
        return 'MultiDict(%r)' % (self._pairs,)


class FormFields(MultiDict):
    """The fields of a form body that a JSON channel's request has as its ``payload`` (see
    :func:`form_payload`), with the body's ``files`` beside them."""

    __slots__ = ('files',)
    files: MultiDict

    def __init__(self, fields: MultiDict, files: MultiDict) -> None:
        super().__init__(fields._pairs)
        object.__setattr__(self, 'files', files)

    def __repr__(self) -> str:
        return 'FormFields(%r)' % (self._pairs,)


class UploadedFile:
    """A file part of a ``multipart/form-data`` body: ``name`` (the form field),
    ``filename`` (as the client named it: never a path to trust), ``content_type``
    (``application/octet-stream`` when the part gives none), ``data`` (the bytes), ``size``
    and ``headers`` (the part's, lower-case names)."""

    __slots__ = ('name', 'filename', 'content_type', 'data', 'headers')

    def __init__(self, name: str, filename: str, content_type: str, data: bytes,
                 headers: Optional[Dict[str, str]] = None) -> None:
        self.name = name
        self.filename = filename
        self.content_type = content_type
        self.data = data
        self.headers = headers if headers is not None else {}

    @property
    def size(self) -> int:
        """The file's length in bytes."""
        return len(self.data)

    def read(self) -> bytes:
        """The file's bytes (a file-like spelling of :attr:`data`)."""
        return self.data

    def __repr__(self) -> str:
        return '<UploadedFile %s %r %s, %d bytes>' % (self.name, self.filename,
                                                      self.content_type, len(self.data))


def parse_query(raw: str) -> MultiDict:
    """A query string (without ``?``) as a :class:`MultiDict`; blank values kept,
    undecodable escapes replaced, at most :data:`MAX_QUERY_FIELDS` fields (else 400)."""
    from urllib.parse import parse_qsl  # imported when asked: most services never do
    if _fields(raw) > MAX_QUERY_FIELDS:
        raise BadRequest('the query string has more than %d fields' % MAX_QUERY_FIELDS)
    return MultiDict(parse_qsl(raw, keep_blank_values=True))


def _fields(text: str) -> int:
    """How many fields ``text`` (``a=1&b=2``) has: empty ones (``a=1&&``) are none."""
    n = text.count('&') + 1
    if n <= MAX_FORM_PARTS and n <= MAX_QUERY_FIELDS:
        return n
    return sum(1 for piece in text.split('&') if piece)


def _media_type(content_type: Optional[str]) -> str:
    return (content_type or '').split(';', 1)[0].strip().lower()


def form_kind(content_type: Optional[str]) -> Optional[str]:
    """:data:`URLENCODED` or :data:`MULTIPART` when ``content_type`` is a form's, else None."""
    media = _media_type(content_type)
    return media if media in (URLENCODED, MULTIPART) else None


def parse_form(content_type: Optional[str], body: bytes) -> Tuple[MultiDict, MultiDict]:
    """(fields, files) of a form body; two empty ones when ``content_type`` is no form's.

    Raises :class:`~oxbus.errors.BadRequest` for a malformed form.
    """
    kind = form_kind(content_type)
    if kind == URLENCODED:
        return _parse_urlencoded(body), MultiDict()
    if kind == MULTIPART:
        return _parse_multipart(content_type or '', body)
    return MultiDict(), MultiDict()


def looks_like_json(body: bytes) -> bool:
    """Whether ``body``'s first non-blank byte is ``{``, ``[`` or ``"``: JSON meant, if
    broken; a JSON channel never reads such a body as a form."""
    head = body[:64].lstrip(b' \t\r\n')
    if not head:
        head = body.lstrip(b' \t\r\n')[:1]
    return head[:1] in (b'{', b'[', b'"')


def content_type_of(headers: Any) -> Optional[str]:
    """The ``Content-Type`` among ``headers`` (the CALL meta's ``[[name, value], ...]``):
    the last one when a request sent several, for the payload and ``request.form`` alike."""
    content_type = None
    for pair in headers or ():
        if pair[0] == 'content-type':
            content_type = pair[1]
    return content_type


def form_payload(headers: Any, body: bytes) -> Optional[FormFields]:
    """The payload of a body that is not JSON on a JSON channel: its form fields when the
    ``Content-Type`` among ``headers`` (:func:`content_type_of`) is a form's, else None.
    Raises :class:`~oxbus.errors.BadRequest` for a malformed form."""
    content_type = content_type_of(headers)
    if form_kind(content_type) is None:
        return None
    fields, files = parse_form(content_type, body)
    return FormFields(fields, files)


def _parse_urlencoded(body: bytes) -> MultiDict:
    # Decoded as the query string is: UTF-8 (a browser percent-encodes everything but
    # ASCII; a client that sent UTF-8 raw still means UTF-8), bytes and %-escapes that are
    # not UTF-8 replaced by U+FFFD, not refused.
    from urllib.parse import parse_qsl
    text = body.decode('utf-8', 'replace')
    if _fields(text) > MAX_FORM_PARTS:
        raise BadRequest('the form has more than %d fields' % MAX_FORM_PARTS)
    return MultiDict(parse_qsl(text, keep_blank_values=True, encoding='utf-8',
                               errors='replace'))


def _bad(why: str) -> BadRequest:
    return BadRequest('malformed multipart/form-data body: %s' % why)


def _header_params(value: str, html: bool = False) -> Tuple[str, Dict[str, str]]:
    """``form-data; name="a"; filename="b"`` -> ('form-data', {'name': 'a', ...}),
    parameter names lower-cased, a parameter without a value (``; foo;``) skipped.

    In a quoted string a backslash escapes only ``"`` and ``\\`` (``C:\\dir\\a.txt``, as a
    browser sends a path, stays as it is). With ``html`` (a part's Content-Disposition)
    ``%22``, ``%0D`` and ``%0A`` are decoded too: the HTML spec's escapes, which browsers
    send."""
    params: Dict[str, str] = {}
    head, _, rest = value.partition(';')
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in ' \t;':
            i += 1
        eq = rest.find('=', i)
        if eq < 0:
            break
        semi = rest.find(';', i, eq)
        if semi >= 0:  # a parameter without a value
            i = semi
            continue
        key = rest[i:eq].strip().lower()
        i = eq + 1
        while i < n and rest[i] in ' \t':
            i += 1
        if i < n and rest[i] == '"':
            i += 1
            out = []
            while i < n and rest[i] != '"':
                if rest[i] == '\\' and i + 1 < n and rest[i + 1] in '"\\':
                    i += 1
                out.append(rest[i])
                i += 1
            if i >= n:
                raise _bad('an unterminated quoted string in %r' % value)
            i += 1
            val = ''.join(out)
            if html and '%' in val:
                val = (val.replace('%22', '"').replace('%0D', '\r').replace('%0A', '\n')
                       .replace('%0d', '\r').replace('%0a', '\n'))
        else:
            end = rest.find(';', i)
            end = n if end < 0 else end
            val = rest[i:end].strip()
            i = end
        params[key] = val
    return head.strip().lower(), params


def _parse_multipart(content_type: str, body: bytes) -> Tuple[MultiDict, MultiDict]:
    _, ct_params = _header_params(content_type)
    boundary = ct_params.get('boundary', '')
    if not boundary:
        raise _bad('the Content-Type names no boundary')
    if len(boundary) > 70:
        raise _bad('the boundary is longer than 70 characters')
    try:
        delim = b'--' + boundary.encode('ascii')
    except UnicodeEncodeError:
        raise _bad('the boundary is not ASCII') from None
    # The first delimiter line opens the body (anything before it is a preamble to
    # ignore); a longer line that starts with the delimiter (`--BX` for boundary B) is not
    # one.
    next_delim = b'\r\n' + delim
    if body.startswith(delim) and _delimiter_line_at(body, len(delim)):
        pos = len(delim)
    else:
        try:
            pos = _next_delimiter(body, next_delim, 0) + len(next_delim)
        except BadRequest:
            raise _bad('no boundary line %r' % delim.decode('ascii')) from None
    fields: List[Tuple[str, Any]] = []
    files: List[Tuple[str, Any]] = []
    while True:
        if body.startswith(b'--', pos):
            return MultiDict(fields), MultiDict(files)  # the closing delimiter
        eol = body.find(b'\r\n', pos)
        if eol < 0 or body[pos:eol].strip(b' \t'):
            raise _bad('a boundary line is not followed by CRLF')
        start = eol + 2
        end = _next_delimiter(body, next_delim, start)
        if len(fields) + len(files) >= MAX_FORM_PARTS:
            raise BadRequest('the form has more than %d parts' % MAX_FORM_PARTS)
        _one_part(body, start, end, fields, files)
        pos = end + len(next_delim)


def _next_delimiter(body: bytes, delim: bytes, start: int) -> int:
    """Where the part that starts at ``start`` ends: the next CRLF ``--boundary`` followed
    by ``--`` or by optional white space and CRLF (RFC 2046's delimiter line); the same
    text followed by anything else is data of the part."""
    end = body.find(delim, start)
    while end >= 0:
        if _delimiter_line_at(body, end + len(delim)):
            return end
        end = body.find(delim, end + 1)
    raise _bad('the body ends inside a part (no closing boundary)')


def _delimiter_line_at(body: bytes, after: int) -> bool:
    """Whether the delimiter that ends at ``after`` is one: followed by ``--`` or by
    optional white space and CRLF."""
    if body.startswith(b'--', after):
        return True
    eol = body.find(b'\r\n', after)
    return eol >= 0 and not body[after:eol].strip(b' \t')


def _one_part(body: bytes, start: int, end: int, fields: List[Tuple[str, Any]],
              files: List[Tuple[str, Any]]) -> None:
    if body.startswith(b'\r\n', start):
        head, data_start = b'', start + 2
    else:
        # The headers' end is looked for within the cap only, so no part's headers cost
        # more than MAX_PART_HEADER_BYTES of work however large the body.
        blank = body.find(b'\r\n\r\n', start, min(end, start + MAX_PART_HEADER_BYTES + 4))
        if blank < 0:
            if end - start > MAX_PART_HEADER_BYTES + 4 \
                    and body.find(b'\r\n\r\n', start, end) >= 0:
                raise BadRequest('a part of the multipart/form-data body has more than %d '
                                 'bytes of headers' % MAX_PART_HEADER_BYTES)
            raise _bad('a part has no empty line after its headers')
        head, data_start = body[start:blank], blank + 4
    headers: Dict[str, str] = {}
    for line in head.split(b'\r\n'):
        key, colon, value = line.partition(b':')
        if not colon:
            raise _bad('a part header without a colon: %r' % line[:100])
        # Browsers send file names as raw UTF-8 here.
        headers[key.strip().decode('latin-1').lower()] = value.strip().decode(
            'utf-8', 'replace')
    disposition = headers.get('content-disposition')
    if disposition is None:
        raise _bad('a part has no Content-Disposition header')
    kind, params = _header_params(disposition, html=True)
    if kind != 'form-data' or 'name' not in params:
        raise _bad('a part\'s Content-Disposition is not form-data with a name: %r'
                   % disposition[:200])
    name = params['name']
    data = body[data_start:end]
    part_type = headers.get('content-type')
    filename = params.get('filename')
    star = params.get('filename*')
    if star is not None:
        # RFC 5987: charset'language'percent-encoded; it wins over a plain filename, which
        # is kept when filename* is not of that form or cannot be decoded.
        from urllib.parse import unquote
        charset, q1, rest = star.partition("'")
        _, q2, encoded = rest.partition("'")
        try:
            if not (q1 and q2):
                raise ValueError('no charset\'language\' prefix')
            filename = unquote(encoded, encoding=charset or 'utf-8', errors='strict')
        except (LookupError, ValueError):  # UnicodeDecodeError is a ValueError
            if filename is None:
                raise _bad('filename* of part %r cannot be decoded' % name) from None
    if filename is not None:
        files.append((name, UploadedFile(name, filename,
                                         part_type or 'application/octet-stream', data,
                                         headers)))
        return
    charset = _header_params(part_type)[1].get('charset', 'utf-8') if part_type else 'utf-8'
    try:
        fields.append((name, data.decode(charset)))
    except (LookupError, UnicodeDecodeError):
        raise _bad('field %r is not valid %s text' % (name, charset)) from None
