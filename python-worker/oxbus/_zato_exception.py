"""``zato.common.exception``: Zato 3.2's exceptions, raised the Zato way.

``raise BadRequest(self.cid, 'no such customer')`` answers 400 with that message;
``BadRequest(self.cid)`` alone answers with Zato's default message. A
:class:`ZatoException` (or any other exception) is a 500 whose details go only to the log.
"""

from __future__ import annotations

from . import errors as _e

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional, Tuple

__all__ = ['ZatoException', 'ServiceMissingException', 'RuntimeInvocationError',
           'ClientSecurityException', 'ConnectionException', 'TimeoutException',
           'StatusAwareException', 'HTTPException', 'ParsingException', 'Inactive',
           'Reportable', 'ClientHTTPError', 'BadRequest', 'Conflict', 'Forbidden',
           'MethodNotAllowed', 'NotFound', 'Unauthorized', 'TooManyRequests',
           'InternalServerError', 'ServiceUnavailable', 'PubSubSubscriptionExists']


class ZatoException(Exception):
    """Zato's base exception: ``ZatoException(cid, msg)``; a 500 (internal error). The HTTP
    status exceptions below derive from it too, as in Zato, so ``except ZatoException``
    catches them."""

    def __init__(self, cid: Any = None, msg: Any = None, *rest: Any) -> None:
        super().__init__(msg)
        self.cid = cid
        self.msg = msg

    def __str__(self) -> str:
        return '' if self.msg is None else str(self.msg)


class ServiceMissingException(ZatoException):
    pass


class RuntimeInvocationError(ZatoException):
    pass


class ClientSecurityException(ZatoException):
    pass


class ConnectionException(ZatoException):
    pass


class TimeoutException(ConnectionException):
    pass


class ParsingException(ZatoException):
    pass


class Inactive(ZatoException):
    def __init__(self, name: str) -> None:
        super().__init__(None, '`{}` is inactive'.format(name))


class Reportable(_e.Reportable, ZatoException):
    """``Reportable(cid, msg, status)``: answers ``status`` with ``msg``; both an Oxbus
    :class:`oxbus.Reportable` and a :class:`ZatoException`."""

    def __init__(self, cid: Any = None, msg: Any = None, status: Any = None,
                 needs_msg: bool = False, **kwargs: Any) -> None:
        if status is None:
            _e.Reportable.__init__(self, cid, msg, **kwargs)
        else:
            _e.Reportable.__init__(self, cid, msg, status, **kwargs)
        self.needs_msg = needs_msg

    def __str__(self) -> str:
        return self.msg


StatusAwareException = Reportable
HTTPException = Reportable
ClientHTTPError = Reportable


def _zato_class(base: Any, default_msg: Optional[str]) -> Any:
    # Zato's hierarchy (ZatoException > Reportable > BadRequest...) over Oxbus's own class,
    # whose status and family (the server's error counts) it keeps.
    class Zato(Reportable, base):  # type: ignore[misc]
        def __init__(self, cid: Any = None, msg: Any = default_msg, *ignored: Any,
                     **kwargs: Any) -> None:
            kwargs.pop('needs_msg', None)
            base.__init__(self, cid, msg if msg is not None else base.reason, **kwargs)
            self.needs_msg = False
    Zato.__name__ = Zato.__qualname__ = base.__name__
    Zato.__module__ = 'zato.common.exception'
    return Zato


BadRequest = _zato_class(_e.BadRequest, 'Bad request')
Conflict = _zato_class(_e.Conflict, None)
Forbidden = _zato_class(_e.Forbidden, 'You are not allowed to access this resource')
MethodNotAllowed = _zato_class(_e.MethodNotAllowed, None)
NotFound = _zato_class(_e.NotFound, None)
TooManyRequests = _zato_class(_e.TooManyRequests, None)
InternalServerError = _zato_class(_e.InternalServerError, None)
ServiceUnavailable = _zato_class(_e.ServiceUnavailable, None)


class Unauthorized(Reportable, _e.Unauthorized):
    """``Unauthorized(cid, msg, challenge)``: 401 with ``www-authenticate: challenge``."""

    def __init__(self, cid: Any = None, msg: Any = None, challenge: Any = None,
                 *ignored: Any, **kwargs: Any) -> None:
        args: Tuple[Any, ...] = (cid, msg if msg is not None else 'Unauthorized')
        if challenge:
            args = args + (challenge,)
        _e.Unauthorized.__init__(self, *args, **kwargs)
        self.needs_msg = False
        self.challenge = challenge


class PubSubSubscriptionExists(BadRequest):  # type: ignore[misc, valid-type]
    pass
