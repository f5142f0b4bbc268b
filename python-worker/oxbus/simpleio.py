"""SimpleIO: a service's declared input and output, checked and typed by the worker.

Zato's SimpleIO is the model. A service declares the names it reads and writes::

    input = 'customer_id', '-needs_details'   # a leading '-' marks an optional element
    output = 'name', '-email'

and then reads ``self.request.input.customer_id`` already converted and validated. As in
Zato, the *name* decides the type, so no schema language is needed:

* ``id`` and names ending in ``_id``, ``_count``, ``_size`` or ``_timeout`` are integers
  (an int, or a string of decimal digits; a bool or a float is refused);
* names starting with ``is_``, ``has_``, ``needs_`` or ``should_`` are booleans (a bool,
  0/1, or one of true/false/1/0/yes/no/on/off in any case);
* everything else is passed through as it came.

Each element's type is also reported to the supervisor (``Elem.type``: ``'integer'``,
``'boolean'`` or ``'any'``, see :func:`describe`), which publishes the declarations in
its OpenAPI document.

Values are looked up in the JSON request body first, then in the path parameters, then in
the query string. Problems become 400 responses naming the field. On the way out, a
declared ``output`` filters the response payload down to the declared keys; a required key
that the service did not produce is a bug in the service and becomes a 500.

Declarations are parsed once, when the service class is created, so a typo such as
``input = 5`` fails the deploy instead of the first request.
"""

from __future__ import annotations

from .errors import BadRequest

TYPE_CHECKING = False  # see _protocol.py: keep ``typing`` out of the worker's startup
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

    #: What a declaration may be: one name, or several.
    Spec = Union[None, str, Iterable[str]]

__all__ = ['Bunch', 'Elem', 'OutputError', 'parse_spec', 'parse_input', 'filter_output',
           'describe', 'to_int', 'to_bool']

_INT_NAMES = frozenset(('id',))
_INT_SUFFIXES = ('_id', '_count', '_size', '_timeout')
_BOOL_PREFIXES = ('is_', 'has_', 'needs_', 'should_')
_BOOL_STRINGS = {
    'true': True, '1': True, 'yes': True, 'on': True,
    'false': False, '0': False, 'no': False, 'off': False,
}
_DIGITS = frozenset('0123456789')


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


def to_int(value: Any) -> int:
    """Convert an input value to int, or raise ValueError with the client-facing reason."""
    # bool is an int subclass, and True silently becoming 1 is exactly the kind of
    # surprise typed input exists to prevent.
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        digits = value[1:] if value[:1] in ('-', '+') else value
        # Only ASCII digits: int() would also take '٣', '1_000' and surrounding spaces.
        if digits and _DIGITS.issuperset(digits):
            return int(value)
    raise ValueError('expected an integer')


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


class Elem:
    """One declared SimpleIO element: its name, whether it is required, its converter.

    ``type`` names what the converter accepts, in JSON Schema's words: ``'integer'``,
    ``'boolean'``, or ``'any'`` for an element passed through as it came.
    """

    __slots__ = ('name', 'required', 'convert', 'type')

    def __init__(self, name: str, required: bool) -> None:
        self.name = name
        self.required = required
        self.convert = _converter_for(name)
        self.type = _TYPE_NAMES[self.convert]

    def __repr__(self) -> str:
        return 'Elem(%r, required=%r)' % (self.name, self.required)


_TYPE_NAMES: Dict[Optional[Callable[[Any], Any]], str] = {
    to_int: 'integer', to_bool: 'boolean', None: 'any'}


def describe(elems: Tuple[Elem, ...]) -> List[Dict[str, Any]]:
    """The wire form of a declaration (``ServiceInfo`` ``input``/``output`` in SPEC.md)."""
    return [{'name': e.name, 'required': e.required, 'type': e.type} for e in elems]


def _converter_for(name: str) -> Optional[Callable[[Any], Any]]:
    if name in _INT_NAMES or name.endswith(_INT_SUFFIXES):
        return to_int
    if name.startswith(_BOOL_PREFIXES):
        return to_bool
    return None


def parse_spec(spec: Spec, where: str) -> Tuple[Elem, ...]:
    """Parse an ``input``/``output`` declaration; ``where`` names it in error messages."""
    if spec is None:
        return ()
    items = (spec,) if isinstance(spec, str) else spec
    try:
        items = tuple(items)
    except TypeError:
        raise TypeError('%s must be a string or a sequence of strings, not %r'
                        % (where, spec)) from None
    elems = []
    seen = set()
    for item in items:
        if not isinstance(item, str):
            raise TypeError('%s: elements must be strings, got %r' % (where, item))
        required = not item.startswith('-')
        name = item if required else item[1:]
        if not name:
            raise TypeError('%s: empty element name in %r' % (where, item))
        if name in seen:
            raise TypeError('%s: %r is declared twice' % (where, name))
        seen.add(name)
        elems.append(Elem(name, required))
    return tuple(elems)


_MISSING = object()


def parse_input(elems: Tuple[Elem, ...], payload: Any, params: Optional[Mapping[str, Any]],
                query: Callable[[], Mapping[str, str]], json_body: bool = True) -> Bunch:
    """Build ``request.input`` from the payload, then path params, then the query string.

    ``query`` is a callable so the query string is parsed only when a value is not found
    in the body or the path. ``json_body`` is False for raw requests, whose body is not
    a place to look values up in. Raises :class:`~oxbus.errors.BadRequest` naming the field.
    """
    if json_body and payload is not None and not isinstance(payload, dict):
        raise BadRequest('expected a JSON object')
    body = payload if json_body and payload is not None else None
    result = Bunch()
    query_dict: Optional[Mapping[str, str]] = None
    for elem in elems:
        name = elem.name
        value: Any = _MISSING
        if body is not None:
            value = body.get(name, _MISSING)
        if value is _MISSING and params:
            value = params.get(name, _MISSING)
        if value is _MISSING:
            if query_dict is None:
                query_dict = query()
            value = query_dict.get(name, _MISSING)
        if value is _MISSING or value is None:
            if elem.required:
                raise BadRequest('missing input: %s' % name, details={'field': name})
            value = None
        elif elem.convert is not None:
            try:
                value = elem.convert(value)
            except ValueError as e:
                raise BadRequest('invalid input: %s: %s' % (name, e),
                                 details={'field': name}) from None
        result[name] = value
    return result


class OutputError(Exception):
    """A service did not produce a required output element: a bug in the service."""

    def __init__(self, field: str) -> None:
        super().__init__('missing output: %s' % field)
        self.field = field


def filter_output(elems: Tuple[Elem, ...], payload: Any) -> Any:
    """Reduce a dict (or each dict of a list) to the declared output elements.

    Other payload types (text, bytes, None) pass through: a declaration describes JSON
    objects, and a service that answers with something else has chosen to.
    """
    if isinstance(payload, dict):
        return _filter_one(elems, payload)
    if isinstance(payload, list):
        return [_filter_one(elems, item) if isinstance(item, dict) else item
                for item in payload]
    return payload


def _filter_one(elems: Tuple[Elem, ...], item: Dict[str, Any]) -> Dict[str, Any]:
    out = {}
    for elem in elems:
        name = elem.name
        if name in item:
            out[name] = item[name]
        elif elem.required:
            raise OutputError(name)
    return out
