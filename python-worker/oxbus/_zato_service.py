"""``zato.server.service``: Zato 3.2's ``Service``, ``Model`` and SimpleIO element types.

A module written for Zato deploys unchanged::

    from zato.server.service import Service, Int, AsIs

    class GetCustomer(Service):
        class SimpleIO:
            input_required = Int('customer_id'),
            input_optional = 'name',
            output_required = 'name',

        def handle(self):
            self.response.payload.name = 'Ann'

A service based on this ``Service`` is an Oxbus service that behaves as Zato documents
where the two differ: an absent optional input element reads as ``''`` (``False`` for a
``Bool``) unless the SimpleIO says otherwise (``default_value``, ``default_input_value`` or
the element's ``default=``); names that no rule types are Zato's ``Text``; path and query
parameters win over the body for the same name unless the channel's ``params_priority``
says ``msg-over-channel-params``, and undeclared ones are in ``self.request.input`` too;
``self.response.payload`` starts as a payload object to set attributes on when output is
declared; and the hooks ``accept``, ``validate_input``, ``validate_output``,
``finalize_handle`` and, for a scheduled run, ``before_job``/``after_job`` and the job
type's own (``before_interval_based_job``...) run beside ``before_handle`` and
``after_handle``, in Zato's order. docs/ZATO.md lists
every attribute of Zato's ``Service`` and what it is here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from . import model as _model
from . import service as _service
from .errors import BadRequest
from .model import ModelCtx
from .simpleio import (CSV, UTC, UUID, AsIs, Bool, Boolean, Bunch, Date, DateTime, Decimal,
                       Dict, DictList, Float, Int, Integer, List, ListOfDicts, Opaque, Secret,
                       Text, Unicode)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict as _Dict, Optional

__all__ = ['Service', 'Model', 'ModelCtx', 'dataclass', 'AsIs', 'Bool', 'Boolean', 'CSV',
           'Date', 'DateTime', 'Decimal', 'Dict', 'DictList', 'Float', 'Int', 'Integer',
           'List', 'ListOfDicts', 'Opaque', 'Secret', 'Text', 'UTC', 'UUID', 'Unicode',
           'Bunch']


class Model(_model.Model):
    """Zato's ``Model``: an absent optional field reads as Zato's empty value of its type
    (``''``, ``0``, ``0.0``, ``[]``, ``{}``; None for others)."""

    _oxbus_zato_empty = True


_JOB_TYPES = ('one_time', 'interval_based', 'cron_style')
_ZATO_HOOKS_BEFORE = ('accept', 'before_handle', 'validate_input', 'before_job') + tuple(
    'before_%s_job' % t for t in _JOB_TYPES)
_ZATO_HOOKS_AFTER = ('validate_output', 'after_handle', 'finalize_handle', 'after_job') + tuple(
    'after_%s_job' % t for t in _JOB_TYPES)


class Service(_service.Service):
    """Zato 3.2's ``Service`` on Oxbus (see the module docstring)."""

    _oxbus_zato = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        base = Service
        # Zato's hooks are plain functions (Zato has no async services): one written as
        # `async def` would silently never run, so it fails the deploy instead.
        for hook in _ZATO_HOOKS_BEFORE + _ZATO_HOOKS_AFTER:
            if _service._is_coroutine_function(getattr(cls, hook)):
                raise TypeError('%s.%s: the hooks of a Zato-style service are plain '
                                'functions, not async def' % (cls.__qualname__, hook))
        before = any(getattr(cls, h) is not getattr(base, h) for h in _ZATO_HOOKS_BEFORE)
        after = any(getattr(cls, h) is not getattr(base, h) for h in _ZATO_HOOKS_AFTER)
        cls._oxbus_hooks = (before, after)

    # -- Zato's hooks -----------------------------------------------------------------------

    def accept(self) -> bool:
        """Return False to refuse the call (a 400) before ``handle`` runs."""
        return True

    def validate_input(self) -> Any:
        """Run after ``before_handle``, before ``handle``; raise to refuse the input."""

    def validate_output(self) -> Any:
        """Run after ``handle``, before ``after_handle``."""

    def finalize_handle(self) -> Any:
        """Run last, after ``after_handle``."""

    # Zato's job hooks: run, in this order, around a scheduled run (channel 'scheduler').
    def before_job(self) -> Any:
        pass

    def before_one_time_job(self) -> Any:
        pass

    def before_interval_based_job(self) -> Any:
        pass

    def before_cron_style_job(self) -> Any:
        pass

    def after_job(self) -> Any:
        pass

    def after_one_time_job(self) -> Any:
        pass

    def after_interval_based_job(self) -> Any:
        pass

    def after_cron_style_job(self) -> Any:
        pass

    @property
    def job_type(self) -> str:
        """For a scheduled run, the job's type (``one_time``, ``interval_based``,
        ``cron_style``); ``''`` otherwise, as in Zato."""
        request = self.__dict__.get('request')
        return (request._meta.get('job_type') or '') if request is not None else ''

    def _oxbus_job_hooks(self, when: str) -> None:
        if self.channel.type != 'scheduler':
            return
        getattr(self, when + '_job')()
        job_type = self.job_type
        if job_type in _JOB_TYPES:
            getattr(self, '%s_%s_job' % (when, job_type))()

    def _oxbus_before(self) -> Any:
        cls = type(self)
        if cls.accept is not Service.accept and not self.accept():
            raise BadRequest('the service did not accept the request')
        self._oxbus_job_hooks('before')
        self.before_handle()
        if cls.validate_input is not Service.validate_input:
            self.validate_input()

    def _oxbus_after(self) -> Any:
        cls = type(self)
        if cls.validate_output is not Service.validate_output:
            self.validate_output()
        self.after_handle()
        self._oxbus_job_hooks('after')
        if cls.finalize_handle is not Service.finalize_handle:
            self.finalize_handle()

    # -- Zato's other API -------------------------------------------------------------------

    @classmethod
    def get_name(cls) -> str:
        return cls.name

    @property
    def impl_name(self) -> str:
        return '%s.%s' % (type(self).__module__, type(self).__qualname__)

    @property
    def data_format(self) -> str:
        return self.request.data_format

    @property
    def wsgi_environ(self) -> _Dict[str, Any]:
        """A read-only stand-in for Zato's WSGI environ: the HTTP request's method, path,
        query string and remote address under their WSGI names."""
        http = self.request.http
        return {'REQUEST_METHOD': http.method, 'PATH_INFO': http.path,
                'QUERY_STRING': http.query_raw, 'REMOTE_ADDR': http.remote_addr,
                'zato.http.remote_addr': http.remote_addr}

    # Zato's positional order (channel third, cid eighth), not oxbus.Service's (cid third):
    # a module written for Zato calls it so.
    def invoke_async(self, name: Any, payload: Any = None,  # type: ignore[override]
                     channel: Any = None, data_format: Any = None, transport: Any = None,
                     expiration: Any = None, to_json_string: bool = False, cid: Any = None,
                     callback: Any = None, zato_ctx: Any = None, environ: Any = None) -> str:
        """Zato's ``invoke_async``: returns the new cid. ``callback`` is not supported (the
        callee's answer goes nowhere): ``NotImplementedError`` names the alternative,
        ``self.patterns.parallel``."""
        if callback is not None:
            raise NotImplementedError(
                'invoke_async(callback=...) is not supported by Oxbus; use '
                'self.patterns.parallel.invoke({name: payload}, on_target=callback)')
        if isinstance(name, type) and issubclass(name, _service.Service):
            name = name.name
        if to_json_string and not isinstance(payload, (str, bytes)):
            from json import dumps
            payload = dumps(payload)
        if isinstance(payload, str):
            payload = payload.encode('utf-8')
        return _service.Service.invoke_async(self, name, payload,
                                             cid if isinstance(cid, str) and cid else None)

    def sleep(self, timeout: float = 1) -> None:
        time.sleep(timeout)

    def log_input(self, user_msg: str = '', level: int = 20, **_ignored: Any) -> _Dict[str, Any]:
        msg = {'cid': self.cid, 'name': self.name, 'payload': self.request.payload}
        self.logger.log(level, '%s%s', user_msg + ' ' if user_msg else '', msg)
        return msg

    def log_output(self, user_msg: str = '', level: int = 20, **_ignored: Any
                   ) -> _Dict[str, Any]:
        msg = {'cid': self.cid, 'name': self.name, 'payload': self.response.payload}
        self.logger.log(level, '%s%s', user_msg + ' ' if user_msg else '', msg)
        return msg

    @property
    def config(self) -> Any:
        """Zato 3.2's other name for :attr:`user_config`."""
        return self.user_config

    @property
    def chan(self) -> Any:
        """Zato's short name for :attr:`channel`."""
        return self.channel

    @property
    def server(self) -> Any:
        raise NotImplementedError('self.server (Zato\'s server object) has no Oxbus '
                                  'equivalent: see docs/ZATO.md for what replaces its parts')

    def lock(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError('self.lock (a distributed lock) is not supported by Oxbus')


Service._oxbus_hooks = (False, False)
