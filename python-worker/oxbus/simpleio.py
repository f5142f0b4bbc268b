"""SimpleIO: a service's declared input and output, checked and typed by the worker.

Zato's SimpleIO is the model. A service declares the names it reads and writes::

    input = 'customer_id', '-needs_details'   # a leading '-' marks an optional element
    output = 'name', '-email'

and then reads ``self.request.input.customer_id`` already converted and validated. As in
Zato, the *name* decides the type of a plain string element, so no schema language is needed:

* ``id`` and names ending in ``_id``, ``_count``, ``_size`` or ``_timeout`` are integers
  (an int, or a string of decimal digits; a bool or a float is refused; 64-bit signed);
* names starting with ``is_``, ``has_``, ``needs_`` or ``should_`` are booleans (a bool,
  0/1, or one of true/false/1/0/yes/no/on/off in any case);
* everything else is passed through as it came.

A Zato-style service (one written against ``zato.server.service``) follows Zato 3.2's
``simple-io.conf`` instead: boolean prefixes first and ``by_``/``may_`` too, integer
suffixes ``_size_min``/``_size_max`` too, and ``Text`` (a string) for every other name.

An element may also be typed explicitly, with Zato's element classes (``Int('page')``,
``Date('-since')``, ``Dict('address', 'street', '-zip')``...: :class:`Int`, :class:`Float`,
:class:`Bool`, :class:`Decimal`, :class:`Text`, :class:`Date`, :class:`DateTime`,
:class:`UUID`, :class:`List`, :class:`CSV`, :class:`Dict`, :class:`DictList`,
:class:`AsIs`, :class:`Opaque`, :class:`UTC`, :class:`Secret`), and given a default for
when it is absent: ``Int('-page_size', default=10)``, or in a plain string
``'-page_size=10'`` (the text after ``=`` converted by the element's type when the class
is created, so a bad default fails the deploy).

Each element's type is also reported to the supervisor (``Elem.type``: ``'integer'``,
``'boolean'``, ``'number'``, ``'string'``, ``'array'``, ``'object'`` or ``'any'``, see
:func:`describe`), which publishes the declarations in its OpenAPI document.

Values are looked up in the JSON request body first, then in the path parameters, then in
the query string (or path and query first, when the channel's ``params_priority`` says so).
Every problem is reported at once, in one 400 naming each field. On the way out, a declared
``output`` filters the response payload down to the declared keys and converts typed
values (a ``Date`` to ``'2024-05-01'``...); a required key that the service did not produce,
or a value its type cannot take, is a bug in the service and becomes a 500.

Declarations are parsed once, when the service class is created, so a typo such as
``input = 5`` fails the deploy instead of the first request.
"""

from __future__ import annotations

from .errors import BadRequest

TYPE_CHECKING = False  # see _protocol.py: keep ``typing`` out of the worker's startup
if TYPE_CHECKING:
    # As _Dict and _List: Dict and List are element classes of this module.
    from typing import (Any, Callable, Dict as _Dict, Iterable, List as _List, Mapping,
                        Optional, Tuple, Union)

    #: What a declaration may be: one name or element, or several; or a Model class (a
    #: service's ``input``/``output``, not parse_spec's).
    Spec = Union[None, str, 'Elem', Iterable[Union[str, 'Elem']], type]

__all__ = ['Bunch', 'Elem', 'OutputError', 'parse_spec', 'parse_input', 'filter_output',
           'describe', 'to_int', 'to_bool', 'to_float', 'NotGiven', 'AsIs', 'Bool', 'CSV',
           'Date', 'DateTime', 'Decimal', 'Dict', 'DictList', 'Float', 'Int', 'List', 'Opaque',
           'Secret', 'Text', 'UTC', 'UUID', 'Boolean', 'Integer', 'ListOfDicts', 'Unicode',
           'InputError']

_INT_NAMES = frozenset(('id',))
_INT_SUFFIXES = ('_id', '_count', '_size', '_timeout')
_BOOL_PREFIXES = ('is_', 'has_', 'needs_', 'should_')
# Zato 3.2's simple-io.conf, for Zato-style services: booleans first, two more prefixes,
# two more suffixes.
_ZATO_INT_SUFFIXES = _INT_SUFFIXES + ('_size_min', '_size_max')
_ZATO_BOOL_PREFIXES = _BOOL_PREFIXES + ('by_', 'may_')
#: At most this many refused elements are reported in one 400 (a body of a million bad list
#: items must not become an answer of a million lines); ``truncated`` says there were more.
MAX_PROBLEMS = 50
_BOOL_STRINGS = {
    'true': True, '1': True, 'yes': True, 'on': True,
    'false': False, '0': False, 'no': False, 'off': False,
}
_DIGITS = frozenset('0123456789')
#: Integers are 64-bit signed: what every JSON peer (and the server) can hold exactly.
INT_MIN = -(2 ** 63)
INT_MAX = 2 ** 63 - 1


class _NotGivenType:
    """The marker of an element without a default (Zato's ``NotGiven``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return 'NotGiven'

    def __bool__(self) -> bool:
        return False


NotGiven = _NotGivenType()


class Bunch(dict):  # type: ignore[type-arg]
    """A dict whose keys are also attributes (Zato's ``Bunch``): ``b.x`` is ``b['x']``."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        return 'Bunch(%s)' % dict.__repr__(self)


def bunchify(value: Any) -> Any:
    """Dicts (at any depth, in lists too) as :class:`Bunch` objects (Zato's ``bunchify``)."""
    if isinstance(value, dict):
        return Bunch((k, bunchify(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(bunchify(v) for v in value) if isinstance(value, list) \
            else tuple(bunchify(v) for v in value)
    return value


# -- converters: value in, converted value out, or ValueError with the client's reason -----

def to_int(value: Any) -> int:
    """Convert an input value to int, or raise ValueError with the client-facing reason."""
    # bool is an int subclass, and True silently becoming 1 is exactly the kind of
    # surprise typed input exists to prevent.
    if isinstance(value, int) and not isinstance(value, bool):
        number = int(value)
    elif isinstance(value, str):
        digits = value[1:] if value[:1] in ('-', '+') else value
        # Only ASCII digits: int() would also take '٣', '1_000' and surrounding spaces.
        if not digits or not _DIGITS.issuperset(digits) or len(digits) > 40:
            raise ValueError('expected an integer')
        number = int(value)
    else:
        raise ValueError('expected an integer')
    if not INT_MIN <= number <= INT_MAX:
        raise ValueError('integer out of range (64-bit signed)')
    return number


def to_bool(value: Any) -> bool:
    """Convert an input value to bool, or raise ValueError with the client-facing reason."""
    if value is True or value is False:
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        converted = _BOOL_STRINGS.get(value.lower())
        if converted is not None:
            return converted
    raise ValueError('expected a boolean')


def _finite(number: float) -> float:
    if number != number or number in (float('inf'), float('-inf')):
        raise ValueError('expected a finite number')
    return number


def to_float(value: Any) -> float:
    """A number (int or float, not bool) or its decimal text, finite."""
    if isinstance(value, bool):
        raise ValueError('expected a number')
    if isinstance(value, (int, float)):
        try:
            return _finite(float(value))
        except OverflowError:
            raise ValueError('expected a finite number') from None
    if isinstance(value, str) and value.strip() == value and value:
        try:
            number = float(value)
        except ValueError:
            raise ValueError('expected a number') from None
        return _finite(number)
    raise ValueError('expected a number')


def to_decimal(value: Any) -> Any:
    import decimal
    if isinstance(value, bool):
        raise ValueError('expected a decimal number')
    if isinstance(value, decimal.Decimal):
        number = value
    elif isinstance(value, (int, str)) and (not isinstance(value, str) or value.strip() == value):
        try:
            number = decimal.Decimal(value)
        except decimal.InvalidOperation:
            raise ValueError('expected a decimal number') from None
    elif isinstance(value, float):
        number = decimal.Decimal(repr(value))
    else:
        raise ValueError('expected a decimal number')
    if not number.is_finite():
        raise ValueError('expected a finite decimal number')
    if abs(number.adjusted()) > 1000 or len(number.as_tuple().digits) > 1000:
        # Decimal takes any exponent, and int() or quantize() of 1e999999999 costs minutes.
        raise ValueError('decimal number out of range')
    return number


def to_text(value: Any) -> str:
    """Zato's ``Text``: a string; numbers become their text, containers are refused."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode('utf-8')
        except UnicodeDecodeError:
            raise ValueError('expected UTF-8 text') from None
    raise ValueError('expected a string')


def to_date(value: Any) -> Any:
    import datetime
    if isinstance(value, datetime.datetime):
        return value.date()
    if isinstance(value, datetime.date):
        return value
    if isinstance(value, str):
        try:
            return datetime.date.fromisoformat(value[:10] if len(value) > 10 and value[10] in 'T '
                                               else value)
        except ValueError:
            pass
    raise ValueError('expected a date (YYYY-MM-DD)')


def to_datetime(value: Any) -> Any:
    import datetime
    if isinstance(value, datetime.datetime):
        return value
    if isinstance(value, str):
        text = value[:-1] + '+00:00' if value.endswith(('Z', 'z')) else value
        try:
            return datetime.datetime.fromisoformat(text)
        except ValueError:
            pass
    raise ValueError('expected a date and time (ISO 8601)')


def to_uuid(value: Any) -> Any:
    import uuid
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise ValueError('expected a UUID')


def to_list(value: Any) -> list:  # type: ignore[type-arg]
    """Zato's ``List``: a list as it came; a single value becomes a list of one."""
    if isinstance(value, list):
        return value
    if isinstance(value, tuple):
        return list(value)
    return [value]


def to_csv(value: Any) -> list:  # type: ignore[type-arg]
    """Zato's ``CSV``: ``'a,b,c'`` becomes ``['a', 'b', 'c']``; a list is taken as it is."""
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        return value.split(',') if value else []
    raise ValueError('expected comma-separated text')


def to_dict(value: Any) -> dict:  # type: ignore[type-arg]
    if isinstance(value, dict):
        return value
    raise ValueError('expected an object')


def to_utc(value: Any) -> str:
    """Zato's ``UTC``: a timestamp text with a ``+00:00`` suffix removed."""
    if isinstance(value, str):
        return value.replace('+00:00', '')
    raise ValueError('expected a timestamp')


# -- output conversions: what a typed value becomes in the JSON answer ---------------------

def _iso(value: Any) -> Any:
    isoformat = getattr(value, 'isoformat', None)
    return isoformat() if isoformat is not None else value


def _out_date(value: Any) -> Any:
    import datetime
    if isinstance(value, datetime.datetime):
        return value.date().isoformat()
    if isinstance(value, datetime.date):
        return value.isoformat()
    return to_date(value).isoformat()


def _out_datetime(value: Any) -> Any:
    import datetime
    if isinstance(value, datetime.date):
        return value.isoformat()
    return to_datetime(value).isoformat()


def _out_decimal(value: Any) -> str:
    return str(to_decimal(value))


def _out_text(value: Any) -> str:
    """A ``Text`` element's answer: a string, whatever scalar the service put there (a
    date as ISO 8601, a Decimal or UUID as its text, an Enum member as its value's), so
    the answer is the ``string`` the API document promises; containers are refused."""
    if isinstance(value, str):
        return value
    try:
        return to_text(value)
    except ValueError:
        pass
    import datetime
    import decimal
    import enum
    import uuid
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, enum.Enum):
        return _out_text(value.value)
    raise ValueError('expected a string')


def _is_object(value: Any) -> bool:
    # A model instance is written out as an object too (Model.__oxbus_json__).
    return isinstance(value, dict) or hasattr(type(value), '__oxbus_json__')


def _out_dict(value: Any) -> Any:
    if _is_object(value):
        return value
    raise ValueError('expected an object')


def _out_dict_list(value: Any) -> Any:
    if isinstance(value, (list, tuple)) and all(_is_object(v) for v in value):
        return value
    raise ValueError('expected a list of objects')


def _out_uuid(value: Any) -> Any:
    import uuid
    # Zato sends a UUID object as 32 hex digits, and anything else as it is.
    return value.hex if isinstance(value, uuid.UUID) else value


class Elem:
    """One declared SimpleIO element: its name, whether it is required, its type.

    ``convert`` turns an input value into the element's type (None: passed through as it
    came) and ``output`` a value of the answer into its JSON form (None: as it is).
    ``type`` names what the converter accepts, in JSON Schema's words: ``'integer'``,
    ``'boolean'``, ``'number'``, ``'string'``, ``'array'``, ``'object'``, or ``'any'``.
    ``default`` is what an absent optional element reads as (:data:`NotGiven`: the
    service's default, None unless the service says otherwise).

    Subclasses are Zato's element types; ``Elem('name')`` itself types by the name.
    """

    __slots__ = ('name', 'required', 'default', 'convert', 'output', 'type', 'format', 'keys',
                 'empty_absent', 'nested')

    #: The converter of the class (None: by name, for the plain Elem).
    _convert: Optional[Callable[[Any], Any]] = None
    _output: Optional[Callable[[Any], Any]] = None
    _type = 'any'
    _format: Optional[str] = None
    #: Whether an empty string counts as absent (typed, non-text elements).
    _empty_is_absent = True
    #: Whether every value of a repeated form field or query key is read (a List), not
    #: the last one.
    _multi = False

    def __init__(self, name: str, *keys: Any, default: Any = NotGiven, **_ignored: Any) -> None:
        if not isinstance(name, str):
            raise TypeError('element names are strings, not %r' % (name,))
        required = not name.startswith('-')
        name = name if required else name[1:]
        if '=' in name:
            name, text = name.split('=', 1)
            if default is NotGiven:
                default = text
        if not name:
            raise TypeError('empty element name')
        self.name = name
        self.required = required
        self.keys: Tuple[Elem, ...] = ()
        if type(self) is Elem:
            convert = _converter_for(name)
            self.convert = convert
            self.output = convert
            self.type = _TYPE_NAMES[convert]
        else:
            self.convert = type(self)._convert
            self.output = type(self)._output or self.convert
            self.type = type(self)._type
        self.format = type(self)._format
        if keys:
            self.keys = tuple(_as_elem(k, '%s key' % name) for k in keys)
        #: An empty string reads as absent (typed, non-text elements; '' is no integer).
        self.empty_absent = type(self)._empty_is_absent
        #: Whether values are checked inside (a Dict's keys, a DictList's items).
        self.nested = bool(self.keys) or isinstance(self, DictList)
        self.default = self._checked_default(default)

    def _checked_default(self, default: Any) -> Any:
        if default is NotGiven or default is None or self.convert is None:
            return default
        try:
            return self.convert(default)
        except ValueError as e:
            raise TypeError('element %r: default %r: %s' % (self.name, default, e)) from None

    def copy(self) -> Elem:
        """A copy to change (a declaration's elements may be shared: never change one)."""
        copy = object.__new__(type(self))
        for slot in Elem.__slots__:
            object.__setattr__(copy, slot, getattr(self, slot))
        return copy

    def with_missing(self, missing: Any) -> Elem:
        """A copy whose absent value is ``missing`` when it has no default of its own (a
        Dict's keys too)."""
        keys = tuple(k.with_missing(missing) for k in self.keys)
        if self.default is not NotGiven and all(a is b for a, b in zip(keys, self.keys)):
            return self
        copy = self.copy()
        copy.keys = keys
        if copy.default is NotGiven:
            copy.default = missing if copy.convert is not to_bool or missing != '' else False
        return copy

    def with_text_keys(self) -> Elem:
        """A copy whose plain-string Dict keys take their values as they came (Zato types
        only top-level names), at any depth."""
        if not self.keys:
            return self
        copy = self.copy()
        copy.keys = tuple(_as_is_elem(k).with_text_keys() for k in self.keys)
        return copy

    def __repr__(self) -> str:
        return '%s(%r, required=%r)' % (type(self).__name__, self.name, self.required)


def _as_is_elem(elem: Elem) -> Elem:
    if type(elem) is Elem:  # a plain string key: typed by no name rule in Zato
        as_is = AsIs(('' if elem.required else '-') + elem.name)
        as_is.default = elem.default
        return as_is
    return elem


class AsIs(Elem):
    """Passed through exactly as it came, whatever its name says."""
    __slots__ = ()
    _empty_is_absent = False


class Opaque(AsIs):
    """Like :class:`AsIs` (Zato: not described in API documents)."""
    __slots__ = ()


class Int(Elem):
    __slots__ = ()
    _convert = staticmethod(to_int)
    _type = 'integer'


class Bool(Elem):
    __slots__ = ()
    _convert = staticmethod(to_bool)
    _type = 'boolean'


class Float(Elem):
    __slots__ = ()
    _convert = staticmethod(to_float)
    _type = 'number'


class Decimal(Elem):
    __slots__ = ()
    _convert = staticmethod(to_decimal)
    _output = staticmethod(_out_decimal)
    _type = 'string'
    _format = 'decimal'


class Text(Elem):
    __slots__ = ()
    _convert = staticmethod(to_text)
    _output = staticmethod(_out_text)
    _type = 'string'
    _empty_is_absent = False


class Secret(Text):
    """Text that Zato keeps out of logs; Oxbus never logs input anyway."""
    __slots__ = ()


class Date(Elem):
    __slots__ = ()
    _convert = staticmethod(to_date)
    _output = staticmethod(_out_date)
    _type = 'string'
    _format = 'date'


class DateTime(Elem):
    __slots__ = ()
    _convert = staticmethod(to_datetime)
    _output = staticmethod(_out_datetime)
    _type = 'string'
    _format = 'date-time'


class UTC(Elem):
    __slots__ = ()
    _convert = staticmethod(to_utc)
    _type = 'string'


class UUID(Elem):
    __slots__ = ()
    _convert = staticmethod(to_uuid)
    _output = staticmethod(_out_uuid)
    _type = 'string'
    _format = 'uuid'


class List(Elem):
    """A list; from a form body or the query string, every value of a repeated key
    (``tags=a&tags=b`` -> ``['a', 'b']``)."""
    __slots__ = ()
    _convert = staticmethod(to_list)
    _type = 'array'
    _multi = True


class CSV(Elem):
    """Comma-separated text in (a list in the service), comma-separated text out."""
    __slots__ = ()
    _convert = staticmethod(to_csv)
    _output = staticmethod(lambda v: ','.join(map(str, v)) if isinstance(v, (list, tuple)) else v)
    _type = 'string'


class Dict(Elem):
    """An object; ``Dict('address', 'street', '-zip', Int('floor'))`` checks its keys."""
    __slots__ = ()
    _convert = staticmethod(to_dict)
    _output = staticmethod(_out_dict)
    _type = 'object'


class DictList(Dict):
    """A list of objects, each checked as :class:`Dict` checks one."""
    __slots__ = ()
    # A list, where Dict's converter gives a dict: the element types' converters differ.
    _convert = staticmethod(  # type: ignore[assignment]
        lambda v: v if isinstance(v, list) else _refuse('expected a list'))
    _output = staticmethod(_out_dict_list)
    _type = 'array'


def _copy(value: Any) -> Any:
    import copy
    return copy.copy(value)


def _refuse(reason: str) -> Any:
    raise ValueError(reason)


# Zato's other names for the same types.
Boolean = Bool
Integer = Int
ListOfDicts = DictList
Unicode = Text


_TYPE_NAMES: _Dict[Optional[Callable[[Any], Any]], str] = {
    to_int: 'integer', to_bool: 'boolean', None: 'any'}


def describe(elems: Tuple[Elem, ...]) -> _List[_Dict[str, Any]]:
    """The wire form of a declaration (``ServiceInfo`` ``input``/``output`` in SPEC.md)."""
    out = []
    for e in elems:
        item: _Dict[str, Any] = {'name': e.name, 'required': e.required, 'type': e.type}
        if e.format:
            item['format'] = e.format
        out.append(item)
    return out


def _converter_for(name: str, zato: bool = False) -> Optional[Callable[[Any], Any]]:
    if zato:
        # Booleans first, as Zato's simple-io.conf orders them: is_id is a boolean there.
        if name.startswith(_ZATO_BOOL_PREFIXES):
            return to_bool
        if name in _INT_NAMES or name.endswith(_ZATO_INT_SUFFIXES):
            return to_int
        return None
    if name in _INT_NAMES or name.endswith(_INT_SUFFIXES):
        return to_int
    if name.startswith(_BOOL_PREFIXES):
        return to_bool
    return None


def _as_elem(item: Any, where: str, text_default: bool = False) -> Elem:
    if isinstance(item, Elem):
        return item
    if not isinstance(item, str):
        raise TypeError('%s: elements must be strings or SimpleIO elements, got %r'
                        % (where, item))
    try:
        if text_default:  # a Zato-style service: Zato's name rules, Text for the others
            name = item[1:] if item.startswith('-') else item
            convert = _converter_for(name.split('=', 1)[0], zato=True)
            elem: Elem = (Text if convert is None else Int if convert is to_int
                          else Bool)(item)
        else:
            elem = Elem(item)
    except TypeError as e:
        raise TypeError('%s: %s in %r' % (where, e, item)) from None
    return elem


def parse_spec(spec: Spec, where: str, text_default: bool = False,
               missing: Any = NotGiven) -> Tuple[Elem, ...]:
    """Parse an ``input``/``output`` declaration; ``where`` names it in error messages.

    ``text_default`` types names the name rules leave untyped as :class:`Text` (Zato's
    rule); ``missing`` is what an absent optional element without a default reads as
    (:data:`NotGiven`: None; a Zato-style service passes its ``default_value``).
    """
    if spec is None:
        return ()
    items: Any = (spec,) if isinstance(spec, (str, Elem)) else spec
    try:
        items = tuple(items)
    except TypeError:
        raise TypeError('%s must be a string, a SimpleIO element or a sequence of them, not %r'
                        % (where, spec)) from None
    elems = []
    seen = set()
    for item in items:
        elem = _as_elem(item, where, text_default)
        if elem.name in seen:
            raise TypeError('%s: %r is declared twice' % (where, elem.name))
        seen.add(elem.name)
        if text_default:
            elem = elem.with_text_keys()
        if missing is not NotGiven:
            elem = elem.with_missing(missing)
        elems.append(elem)
    return tuple(elems)


_MISSING = object()


class InputError(BadRequest):
    """A 400 naming every refused input element: ``details`` has ``field`` (the first) and
    ``errors`` (each ``{"field", "error"}``)."""


class Problems(list):  # type: ignore[type-arg]
    """The refused elements of one input: keeps the first :data:`MAX_PROBLEMS`, counts the
    rest (``dropped``)."""

    __slots__ = ('dropped',)

    def __init__(self) -> None:
        super().__init__()
        self.dropped = 0

    def append(self, item: Any) -> None:
        if len(self) < MAX_PROBLEMS:
            list.append(self, item)
        else:
            self.dropped += 1

    @property
    def full(self) -> bool:
        return len(self) >= MAX_PROBLEMS


def problems_error(problems: _List[Tuple[str, str]]) -> InputError:
    """The 400 of refused input: ``error`` names the first few, ``errors`` lists each
    (at most :data:`MAX_PROBLEMS`), ``truncated`` when there were more."""
    messages = [m if m.startswith(('missing input', 'invalid input'))
                else 'invalid input: %s: %s' % (f, m) for f, m in problems]
    dropped = getattr(problems, 'dropped', 0)
    more = len(messages) - 5
    msg = '; '.join(messages[:5]) + (
        '; and more (the first %d are in errors)' % len(messages) if dropped
        else '; and %d more (in errors)' % more if more > 0 else '')
    details: _Dict[str, Any] = {'field': problems[0][0], 'errors': [
        {'field': f, 'error': m} for (f, _), m in zip(problems, messages)]}
    if dropped:
        details['truncated'] = True
    return InputError(msg, details=details)


def _problem(name: str, reason: str) -> Tuple[str, str]:
    return name, 'invalid input: %s: %s' % (name, reason)


def convert_value(elem: Elem, value: Any, path: str, problems: _List[Tuple[str, str]]) -> Any:
    """Convert one present value of ``elem`` (and a Dict's keys); record problems."""
    convert = elem.convert
    if convert is None:
        return value
    try:
        value = convert(value)
    except ValueError as e:
        problems.append(_problem(path, str(e)))
        return None
    if elem.keys:
        if isinstance(value, list):  # DictList
            out = []
            for i, item in enumerate(value):
                if getattr(problems, 'full', False):
                    problems.append(('', ''))  # counted as more, not kept; the rest unread
                    break
                if not isinstance(item, dict):
                    problems.append(_problem('%s[%d]' % (path, i), 'expected an object'))
                    continue
                out.append(_convert_keys(elem.keys, item, '%s[%d]' % (path, i), problems))
            return out
        return _convert_keys(elem.keys, value, path, problems)
    if type(elem) is DictList:
        for i, item in enumerate(value):
            if getattr(problems, 'full', False):
                problems.append(('', ''))  # counted as more, not kept; the rest unread
                break
            if not isinstance(item, dict):
                problems.append(_problem('%s[%d]' % (path, i), 'expected an object'))
    return value


def _convert_keys(keys: Tuple[Elem, ...], item: _Dict[str, Any], path: str,
                  problems: _List[Tuple[str, str]]) -> Bunch:
    out = Bunch()
    for key in keys:
        sub = '%s.%s' % (path, key.name)
        value = item.get(key.name, _MISSING)
        if (value is _MISSING or value is None
                or (key.convert is not None and value == '' and key.empty_absent)):
            if key.required:
                problems.append((sub, 'missing input: %s' % sub))
            else:
                default = None if key.default is NotGiven else key.default
                out[key.name] = (_copy(default) if isinstance(default, (list, dict, set))
                                 else default)
            continue
        out[key.name] = convert_value(key, value, sub, problems)
    return out


def _every(source: Mapping[str, Any], name: str, value: Any) -> Any:
    """Every value of ``name`` when ``source`` is a MultiDict (a form body, the query
    string) that has it more than once, else ``value`` (the one found)."""
    getlist = getattr(source, 'getlist', None)
    if getlist is None:
        return value
    values = getlist(name)
    return values if len(values) > 1 else value


def parse_input(elems: Tuple[Elem, ...], payload: Any, params: Optional[Mapping[str, Any]],
                query: Callable[[], Mapping[str, str]], json_body: bool = True,
                params_first: bool = False) -> Bunch:
    """Build ``request.input`` from the payload, then path params, then the query string.

    With ``params_first`` (a channel whose ``params_priority`` is ``channel-params-over-msg``,
    Zato's default) the path parameters and the query string are looked at before the body.
    ``query`` is a callable so the query string is parsed only when a value is not found
    in the body or the path. ``json_body`` is False for raw requests, whose body is not
    a place to look values up in. Raises :class:`InputError` (a
    :class:`~oxbus.errors.BadRequest`) naming every refused field.
    """
    if json_body and payload is not None and not isinstance(payload, dict):
        raise BadRequest('expected a JSON object')
    body = payload if json_body and payload is not None else None
    result = Bunch()
    query_dict: Optional[Mapping[str, str]] = None
    problems: Optional[_List[Tuple[str, str]]] = None
    for elem in elems:
        name = elem.name
        value: Any = _MISSING
        if body is not None and not params_first:
            value = body.get(name, _MISSING)
            if elem._multi and value is not _MISSING:
                value = _every(body, name, value)
        if value is _MISSING and params:
            value = params.get(name, _MISSING)
        if value is _MISSING:
            if query_dict is None:
                query_dict = query()
            value = query_dict.get(name, _MISSING)
            if elem._multi and value is not _MISSING:
                value = _every(query_dict, name, value)
        if value is _MISSING and params_first and body is not None:
            value = body.get(name, _MISSING)
            if elem._multi and value is not _MISSING:
                value = _every(body, name, value)
        convert = elem.convert
        if (value is _MISSING or value is None
                or (convert is not None and value == '' and elem.empty_absent)):
            if elem.required:
                if problems is None:
                    problems = Problems()
                problems.append((name, 'missing input: %s' % name))
                continue
            default = elem.default
            if default is NotGiven:
                value = None
            elif isinstance(default, (list, dict, set)):
                value = _copy(default)  # never share a mutable default
            else:
                value = default
        elif convert is not None:
            if elem.nested:
                if problems is None:
                    problems = Problems()
                value = convert_value(elem, value, name, problems)
            else:
                try:
                    value = convert(value)
                except ValueError as e:
                    if problems is None:
                        problems = Problems()
                    problems.append(_problem(name, str(e)))
                    continue
        result[name] = value
    if problems:
        raise problems_error(problems)
    return result


class OutputError(Exception):
    """A service did not produce a required output element, or produced one its type cannot
    take: a bug in the service."""

    def __init__(self, field: str, reason: Optional[str] = None) -> None:
        if reason is None:
            message = 'missing output: %s' % field
        elif field:
            message = 'invalid output: %s: %s' % (field, reason)
        else:  # the payload itself
            message = 'invalid output: %s' % reason
        super().__init__(message)
        self.field = field
        self.reason = reason


def filter_output(elems: Tuple[Elem, ...], payload: Any, skip_empty: bool = False) -> Any:
    """Reduce a dict (or each dict of a list) to the declared output elements, typed.

    Other payload types (text, bytes, None) pass through: a declaration describes JSON
    objects, and a service that answers with something else has chosen to. With
    ``skip_empty`` (Zato's ``skip_empty_keys``) keys whose value is None or ``''`` are left
    out.
    """
    if isinstance(payload, dict):
        return _filter_one(elems, payload, skip_empty)
    if isinstance(payload, list):
        try:
            return [_filter_one(elems, item, skip_empty) if isinstance(item, dict) else item
                    for item in payload]
        except OutputError:
            # Say which item: the error path only, so the loop above stays a comprehension.
            for i, item in enumerate(payload):
                if isinstance(item, dict):
                    try:
                        _filter_one(elems, item, skip_empty)
                    except OutputError as e:
                        raise OutputError('[%d].%s' % (i, e.field), e.reason) from None
            raise
    return payload


def _filter_one(elems: Tuple[Elem, ...], item: _Dict[str, Any],
                skip_empty: bool) -> _Dict[str, Any]:
    out = {}
    for elem in elems:
        name = elem.name
        if name in item:
            value = item[name]
            if value is None or value == '':
                if skip_empty:
                    continue
            elif elem.output is not None:
                try:
                    value = elem.output(value)
                except ValueError as e:
                    raise OutputError(name, str(e)) from None
            out[name] = value
        elif elem.required:
            raise OutputError(name)
    return out


class SimpleIOPayload(Bunch):
    """The initial ``self.response.payload`` of a Zato-style service that declares output:
    set keys as attributes or items (``payload.name = 'Ann'``), or make it a list
    (``payload[:] = rows``, ``payload.append(row)``), as Zato's payload object allows.
    Assigning a new value to ``self.response.payload`` replaces it, as in Zato."""

    __slots__ = ('_oxbus_list',)

    def __setitem__(self, key: Any, value: Any) -> None:
        if isinstance(key, slice):
            items = object.__getattribute__(self, '_list')()
            items[key] = value
            return
        dict.__setitem__(self, key, value)

    def _list(self) -> list:  # type: ignore[type-arg]
        try:
            items: list = object.__getattribute__(self, '_oxbus_list')  # type: ignore[type-arg]
            return items
        except AttributeError:
            items = []
            object.__setattr__(self, '_oxbus_list', items)
            return items

    def __setattr__(self, name: str, value: Any) -> None:
        dict.__setitem__(self, name, value)

    def append(self, item: Any) -> None:
        object.__getattribute__(self, '_list')().append(item)

    def extend(self, items: Any) -> None:
        object.__getattribute__(self, '_list')().extend(items)

    def getvalue(self) -> Any:
        """A list when the service made it one, else the dict of what it set; None when it
        set nothing (an empty answer, which output declarations do not apply to)."""
        try:
            items = object.__getattribute__(self, '_oxbus_list')
        except AttributeError:
            return dict(self) if self else None
        return items
