"""Models: dataclasses as a service's input and output (Zato 3.2's ``Model``).

::

    from dataclasses import dataclass
    from typing import List, Optional
    from oxbus import Model, Service

    @dataclass(init=False)
    class Phone(Model):
        imei: str
        owner_id: int

    @dataclass(init=False)
    class GetPhones(Model):
        client_id: int
        phones: List[Phone]
        note: Optional[str]          # optional: absent or null is allowed

    class Phones(Service):
        input = GetPhones            # or inside Zato's ``class SimpleIO:``
        output = GetPhones

        def handle(self):
            request = self.request.input          # a GetPhones instance
            self.response.payload = request       # serialised through the model

A model's fields are its annotations (``@dataclass`` or not; annotations written as strings,
``from __future__ import annotations``, are resolved in the model's module). On input the
JSON object is checked against them: ``int`` (64-bit), ``float``, ``bool``, ``str``,
``Decimal``, ``date``, ``datetime``, ``UUID`` converted as SimpleIO converts them, a
``List[X]`` checked item by item, a nested model built from its object, ``dict`` and
``Any`` taken as they come; a field is optional when its type is ``Optional[...]`` or it has
a default. **Every** problem is reported in one 400 naming its path
(``phones[1].imei``). An absent optional field reads as its default, else None (a model from
``zato.server.service`` reads as Zato does: ``''``, ``0``, ``[]``...).

On output a model instance (or a list of them, or a dict checked against the declared
output model) becomes a JSON object with the same types written out (dates as ISO 8601,
Decimal as text, UUID as text); a required field the service never set is a 500 naming it.
"""

from __future__ import annotations

from .simpleio import to_bool, to_date, to_datetime, to_decimal, to_float, to_int, to_uuid

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = ['Model', 'ModelCtx', 'ModelValidationError', 'model_fields', 'model_from_dict',
           'model_to_dict', 'is_model_class', 'describe_model']

_MISSING = object()


class ModelCtx:
    """What ``after_created`` receives (Zato's ``ModelCtx``): ``service``, ``data`` (the
    input dict) and ``DataClass``."""

    __slots__ = ('service', 'data', 'DataClass')

    def __init__(self, service: Any, data: Any, cls: Any) -> None:
        self.service = service
        self.data = data
        self.DataClass = cls


class ModelValidationError(ValueError):
    """A dict that does not fit a model: ``problems`` lists ``(path, reason)``."""

    def __init__(self, problems: List[Tuple[str, str]]) -> None:
        super().__init__('; '.join('%s: %s' % p for p in problems))
        self.problems = problems


class Model:
    """Base class of models: a dataclass (``@dataclass(init=False)`` as Zato writes them, or
    any other) whose fields are checked on input and written out on output."""

    #: Zato's hook: called as ``after_created(ctx)`` once an instance is built from input.
    after_created = None  # (no annotation: it would count as a field)
    #: What an absent optional field without a default reads as: None here, Zato's empty
    #: values (``''``, ``0``, ``[]``, ``{}``, ``0.0``) for ``zato.server.service.Model``.
    _oxbus_zato_empty = False

    def __getitem__(self, name: Any, default: Any = None) -> Any:
        return getattr(self, str(name), default)

    def __contains__(self, name: Any) -> bool:
        return hasattr(self, str(name))

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name, default)

    @classmethod
    def from_dict(cls, data: Any, extra: Optional[Dict[str, Any]] = None) -> Any:
        """Build an instance from a dict (``extra`` wins for its keys); ValueError
        (:class:`ModelValidationError`) naming every problem."""
        if extra:
            data = dict(data or {}, **extra)
        from .simpleio import Problems
        problems = Problems()
        out = model_from_dict(cls, data, '', problems, None)
        if problems:
            raise ModelValidationError(problems)
        return out

    def to_dict(self) -> Dict[str, Any]:
        """The instance as a dict of JSON values (nested models and lists included)."""
        return model_to_dict(self, '')

    def to_json(self, default: Any = None, impl_extra: Any = None) -> str:
        import json
        return json.dumps(self.to_dict(), separators=(',', ':'), ensure_ascii=False,
                          allow_nan=False)

    def clone(self) -> Any:
        return type(self).from_dict(self.to_dict())

    def __oxbus_json__(self) -> Dict[str, Any]:
        return model_to_dict(self, '')


def _init_fields(cls: Any) -> Any:
    """The names a dataclass's ``__init__`` takes (a frozenset), once per class."""
    cached = cls.__dict__.get('_oxbus_init_fields')
    if cached is None:
        import dataclasses
        cached = frozenset(f.name for f in dataclasses.fields(cls) if f.init)
        type.__setattr__(cls, '_oxbus_init_fields', cached)
    return cached


def is_model_class(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, Model)


# -- fields -------------------------------------------------------------------------------

class _Field:
    __slots__ = ('name', 'required', 'default', 'factory', 'kind', 'item', 'model', 'nullable')

    def __init__(self, name: str) -> None:
        self.name = name
        self.required = True
        self.default: Any = _MISSING
        self.factory: Any = None
        #: 'int', 'float', 'bool', 'str', 'decimal', 'date', 'datetime', 'uuid', 'list',
        #: 'dict', 'model', 'any'
        self.kind = 'any'
        self.item: Optional[_Field] = None  # a list's items
        self.model: Any = None
        self.nullable = False


_SIMPLE = {int: 'int', float: 'float', bool: 'bool', str: 'str', dict: 'dict', list: 'list',
           bytes: 'any'}


def _classify(field: _Field, hint: Any, where: str) -> None:
    import typing
    origin = getattr(hint, '__origin__', None)
    args = getattr(hint, '__args__', ()) or ()
    union_type = getattr(__import__('types'), 'UnionType', None)  # `str | None`, 3.10+
    if origin is typing.Union or (union_type is not None and isinstance(hint, union_type)):
        rest = [a for a in args if a is not type(None)]
        if len(rest) < len(args):
            field.nullable = True
            field.required = False
        if len(rest) == 1:
            _classify(field, rest[0], where)
        return  # another union: taken as it comes
    if origin in (list, typing.List) or hint in (list, typing.List):
        field.kind = 'list'
        if args and args[0] is not typing.Any:
            item = _Field(field.name)
            _classify(item, args[0], where)
            field.item = item
        return
    if origin in (dict, typing.Dict) or hint in (dict, typing.Dict):
        field.kind = 'dict'
        return
    if is_model_class(hint):
        field.kind = 'model'
        field.model = hint
        return
    kind = _SIMPLE.get(hint)
    if kind is not None:
        field.kind = kind
        return
    if not isinstance(hint, type):
        return  # Any, a TypeVar...: taken as it comes
    import datetime
    import decimal
    import uuid
    if issubclass(hint, decimal.Decimal):
        field.kind = 'decimal'
    elif issubclass(hint, datetime.datetime):  # subclasses too: Zato's DateTimeWithZone
        field.kind = 'datetime'
    elif issubclass(hint, datetime.date):
        field.kind = 'date'
    elif issubclass(hint, uuid.UUID):
        field.kind = 'uuid'
    # anything else (Any, a TypedDict, a Protocol, a class of the service's own): as it came


def model_fields(cls: Any) -> Tuple[_Field, ...]:
    """The fields of a model class, worked out once (TypeError naming the class if an
    annotation cannot be resolved)."""
    cached: Optional[Tuple[_Field, ...]] = cls.__dict__.get('_oxbus_fields')
    if cached is not None:
        return cached
    import typing
    where = '%s.%s' % (cls.__module__, cls.__qualname__)
    try:
        hints = typing.get_type_hints(cls)
    except Exception as e:  # NameError for an unknown name, TypeError for `int | None` on 3.9
        raise TypeError('model %s: its annotations cannot be resolved: %s: %s'
                        % (where, type(e).__name__, e)) from None
    dc_fields = getattr(cls, '__dataclass_fields__', None) or {}
    fields = []
    for name, hint in hints.items():
        if name.startswith('_') or getattr(hint, '__origin__', None) is typing.ClassVar \
                or hint is typing.ClassVar or name in ('after_created',):
            continue
        f = _Field(name)
        _classify(f, hint, where)
        dc = dc_fields.get(name)
        if dc is not None:
            import dataclasses
            if dc.default is not dataclasses.MISSING:
                f.default = dc.default
            elif dc.default_factory is not dataclasses.MISSING:
                f.factory = dc.default_factory
        elif name in cls.__dict__ or any(name in k.__dict__ for k in cls.__mro__[1:]):
            f.default = getattr(cls, name)
        if f.default is not _MISSING or f.factory is not None:
            f.required = False
        fields.append(f)
    result = tuple(fields)
    type.__setattr__(cls, '_oxbus_fields', result)
    return result


def check_model(cls: Any, seen: Any = None) -> None:
    """Resolve the fields of a model and of every model nested in it (TypeError naming the
    model whose annotations cannot be resolved): for the deploy, not the first request."""
    seen = set() if seen is None else seen
    if cls in seen:
        return
    seen.add(cls)
    for f in model_fields(cls):
        item: Optional[_Field] = f
        while item is not None:
            if item.kind == 'model':
                check_model(item.model, seen)
            item = item.item


def describe_model(cls: Any) -> List[Dict[str, Any]]:
    """A model's top-level fields in the wire form of SimpleIO elements (for OpenAPI)."""
    types = {'int': 'integer', 'float': 'number', 'bool': 'boolean', 'str': 'string',
             'decimal': 'string', 'date': 'string', 'datetime': 'string', 'uuid': 'string',
             'list': 'array', 'dict': 'object', 'model': 'object', 'any': 'any'}
    formats = {'date': 'date', 'datetime': 'date-time', 'uuid': 'uuid', 'decimal': 'decimal'}
    out = []
    for f in model_fields(cls):
        item: Dict[str, Any] = {'name': f.name, 'required': f.required, 'type': types[f.kind]}
        if f.kind in formats:
            item['format'] = formats[f.kind]
        out.append(item)
    return out


_CONVERT: Dict[str, Callable[[Any], Any]] = {
    'int': to_int, 'float': to_float, 'bool': to_bool, 'decimal': to_decimal,
    'date': to_date, 'datetime': to_datetime, 'uuid': to_uuid,
}


def _empty(field: _Field) -> Any:
    return {'str': '', 'int': 0, 'float': 0.0, 'list': [], 'dict': {}}.get(field.kind)


def _join(path: str, name: str) -> str:
    return '%s.%s' % (path, name) if path else name


def _convert(field: _Field, value: Any, path: str, problems: List[Tuple[str, str]],
             service: Any) -> Any:
    kind = field.kind
    if kind == 'str':
        if isinstance(value, str):
            return value
        problems.append((path, 'expected a string'))
        return None
    if kind == 'model':
        if isinstance(value, field.model):
            return value
        if not isinstance(value, dict):
            problems.append((path, 'expected an object'))
            return None
        return model_from_dict(field.model, value, path, problems, service)
    if kind == 'list':
        if not isinstance(value, list):
            problems.append((path, 'expected a list'))
            return None
        item = field.item
        if item is None:
            return value
        out: List[Any] = []
        for i, v in enumerate(value):
            if getattr(problems, 'full', False):
                problems.append(('', ''))  # counted as more, not kept; the rest unread
                break
            sub = '%s[%d]' % (path, i)
            if v is None:
                if item.nullable:
                    out.append(None)
                else:
                    problems.append((sub, 'must not be null'))
                continue
            out.append(_convert(item, v, sub, problems, service))
        return out
    if kind == 'dict':
        if isinstance(value, dict):
            return value
        problems.append((path, 'expected an object'))
        return None
    convert = _CONVERT.get(kind)
    if convert is None:
        return value
    try:
        return convert(value)
    except ValueError as e:
        problems.append((path, str(e)))
        return None


def model_from_dict(cls: Any, data: Any, path: str, problems: List[Tuple[str, str]],
                    service: Any) -> Any:
    """An instance of ``cls`` from ``data`` (a dict or a model); problems appended."""
    if not isinstance(data, dict):
        if isinstance(data, Model):
            data = {f.name: getattr(data, f.name) for f in model_fields(type(data))
                    if hasattr(data, f.name)}
        else:
            problems.append((path or '(body)', 'expected an object'))
            return None
    zato_empty = getattr(cls, '_oxbus_zato_empty', False)
    values: Dict[str, Any] = {}
    for f in model_fields(cls):
        sub = _join(path, f.name)
        value = data.get(f.name, _MISSING)
        if value is _MISSING or value is None:
            if value is None and f.nullable:
                values[f.name] = None
                continue
            if f.default is not _MISSING:
                default = f.default
                # A plain class's mutable default is one object: each instance gets a copy.
                values[f.name] = (__import__('copy').copy(default)
                                  if isinstance(default, (list, dict, set)) else default)
            elif f.factory is not None:
                values[f.name] = f.factory()
            elif not f.required:
                values[f.name] = _empty(f) if zato_empty else None
            else:
                problems.append((sub, 'missing input: %s' % sub if value is _MISSING
                                 else 'must not be null'))
            continue
        values[f.name] = _convert(f, value, sub, problems, service)
    if problems:
        return None
    params = getattr(cls, '__dataclass_params__', None)
    init_fields = _init_fields(cls) if params is not None and params.init else None
    if init_fields is not None and init_fields <= values.keys():
        # A dataclass with its __init__: through it, so that __post_init__ runs (Zato does).
        # What __init__ or __post_init__ raises is the model's own failure: a 500, its text
        # in the log only.
        # Fields outside __init__ (field(init=False)) are the dataclass's own to set.
        instance = cls(**{k: values[k] for k in init_fields})
    else:
        instance = cls.__new__(cls)
        for name, value in values.items():
            object.__setattr__(instance, name, value)
    hook = getattr(instance, 'after_created', None)
    if hook is not None:
        hook(ModelCtx(service, data, cls))
    return instance


# -- output ---------------------------------------------------------------------------------

class ModelOutputError(ValueError):
    """A model the service answered with misses a required field or has one of a bad type."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__('%s: %s' % (field, reason))
        self.field = field
        self.reason = reason


def _out_value(field: Optional[_Field], value: Any, path: str) -> Any:
    if value is None:
        return None
    if isinstance(value, Model):
        return model_to_dict(value, path)
    if isinstance(value, (list, tuple)):
        item = field.item if field is not None else None
        return [_out_value(item, v, '%s[%d]' % (path, i)) for i, v in enumerate(value)]
    if field is not None:
        kind = field.kind
        if kind == 'model' and isinstance(value, dict):
            return _dict_to_model_dict(field.model, value, path)
        convert = _CONVERT.get(kind)
        if convert is not None:
            try:
                value = convert(value)
            except ValueError as e:
                raise ModelOutputError(path, str(e)) from None
        elif kind == 'str' and not isinstance(value, str):
            raise ModelOutputError(path, 'expected a string')
    isoformat = getattr(value, 'isoformat', None)
    if isoformat is not None and not isinstance(value, str):
        return isoformat()
    import decimal
    import uuid
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    return value


def model_to_dict(instance: Any, path: str) -> Dict[str, Any]:
    """A model instance as a dict of JSON values; ModelOutputError naming a field."""
    out: Dict[str, Any] = {}
    for f in model_fields(type(instance)):
        sub = _join(path, f.name)
        value = getattr(instance, f.name, _MISSING)
        if value is _MISSING:
            if f.required:
                raise ModelOutputError(sub, 'missing output')
            value = f.default if f.default is not _MISSING else (
                f.factory() if f.factory is not None else None)
        out[f.name] = _out_value(f, value, sub)
    return out


def _dict_to_model_dict(cls: Any, value: Dict[str, Any], path: str) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for f in model_fields(cls):
        sub = _join(path, f.name)
        if f.name not in value:
            if f.required:
                raise ModelOutputError(sub, 'missing output')
            continue
        out[f.name] = _out_value(f, value[f.name], sub)
    return out


def output_through_model(cls: Any, payload: Any) -> Any:
    """The answer of a service whose ``output`` is model ``cls``: instances (of any
    model) serialised, dicts checked and filtered against ``cls``, lists item by item."""
    if isinstance(payload, Model):
        return model_to_dict(payload, '')
    if isinstance(payload, dict):
        return _dict_to_model_dict(cls, payload, '')
    if isinstance(payload, list):
        return [output_through_model(cls, item) for item in payload]
    return payload
