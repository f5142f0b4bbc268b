"""``zato.common.typing_``: the type aliases Zato's models and services annotate with.

``list_``, ``optional``, ``dict_``, ``any_`` and the named shapes (``anydict``, ``strnone``,
``intlist``, ``dictlist``...) are the ``typing`` objects Zato 3.2 defines them as, so a model
field annotated ``optional[str]`` or ``list_[Phone]`` is checked as :mod:`oxbus.model`
describes. ``from_dict(Model, data)`` builds a model from a dict (dacite's name).
"""

from __future__ import annotations

from dataclasses import *  # noqa: F401,F403 - Zato re-exports dataclasses from here
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal as decimal_
from pathlib import Path
from types import ModuleType
from typing import IO as io_
from typing import Any as any_
from typing import BinaryIO as binaryio_
from typing import Callable as callable_
from typing import Dict as dict_
from typing import Generator as generator_
from typing import Iterator as iterator_
from typing import List as list_
from typing import NoReturn as noreturn
from typing import Optional as optional
from typing import Set as set_
from typing import Text as str_
from typing import TextIO as textio_
from typing import Tuple as tuple_
from typing import Type as type_
from typing import TypeVar as typevar_
from typing import Union as union_
from typing import cast as cast_

try:
    from typing import Protocol, TypedDict
except ImportError:  # pragma: no cover - 3.9 has both
    Protocol = TypedDict = None  # type: ignore

from .model import Model, model_from_dict


class DateTimeWithZone(datetime):
    pass


def from_dict(data_class: any_, data: any_, config: any_ = None) -> any_:
    """dacite's ``from_dict`` as Zato re-exports it: a model instance from a dict
    (ValueError naming every field that does not fit)."""
    if isinstance(data_class, type) and issubclass(data_class, Model):
        return data_class.from_dict(data)
    problems: list = []  # type: ignore[type-arg]
    out = model_from_dict(data_class, data, '', problems, None)
    if problems:
        from .model import ModelValidationError
        raise ModelValidationError(problems)
    return out


def list_field() -> any_:
    return field(default_factory=list)


def dict_field() -> any_:
    return field(default_factory=dict)


intnone = optional[int]
strnone = optional[str]
anydict = dict_[any_, any_]
anydictnone = optional[anydict]
anylist = list_[any_]
anylistnone = optional[anylist]
anynone = optional[any_]
anyset = set_[any_]
anytuple = tuple_[any_, ...]
boolnone = optional[bool]
byteslist = list_[bytes]
bytesnone = optional[bytes]
callnone = optional[callable_[..., any_]]
commondict = dict_[str, union_[int, str_, bool, float, anydict, anylist, datetime, None]]
commoniter = union_[anylist, anytuple]
date_ = date
datetime_ = datetime
datetimez = DateTimeWithZone
decnone = optional[decimal_]
dictlist = list_[anydict]
dictnone = optional[anydict]
dictorlist = union_[anydict, anylist]
dtnone = optional[datetime]
floatnone = optional[float]
intanydict = dict_[int, any_]
intdict = dict_[int, int]
intlist = list_[int]
intlistnone = optional[list_[int]]
intset = set_[int]
intstrdict = dict_[int, str]
listnone = anylistnone
listorstr = union_[anylist, str]
model = type_[Model]
modelnone = optional[type_[Model]]
module_ = ModuleType
path_ = Path
pathlist = list_[Path]
stranydict = dict_[str, any_]
strdict = stranydict
strbytes = union_[str_, bytes]
strbooldict = dict_[str, bool]
strdictdict = dict_[str, anydict]
strdictlist = list_[stranydict]
strdictnone = union_[stranydict, None]
strint = union_[str_, int]
strintbool = union_[str_, int, bool]
strintdict = dict_[str, int]
strintnone = union_[strnone, intnone]
strlist = list_[str]
strlistdict = dict_[str, anylist]
strlistempty = list_[strnone]
strlistnone = optional[list_[str]]
strnonedict = dict_[str, strnone]
strset = set_[str]
strsetdict = dict_[str, anyset]
strstrdict = dict_[str, str]
strtuple = tuple_[str, ...]
tuplist = union_[anylist, anytuple]
tupnone = optional[anytuple]

__all__ = [n for n in dir() if not n.startswith('_')]
