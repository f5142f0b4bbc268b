"""Exceptions a service raises to answer with an HTTP error status.

These mirror Zato's ``zato.common.exception`` (``Reportable``, ``BadRequest``, ``NotFound``,
...) so that ported services keep their ``raise`` statements: both the Oxbus style
``BadRequest('no such customer')`` and the Zato style ``BadRequest(self.cid, 'no such
customer')`` work. The worker turns a :class:`Reportable` into a REPLY with its
``status_code`` and the JSON body ``{"error": <message>, ..., "cid": <cid>}``; any other
exception becomes a 500 whose details go only to the log, never to the client.

:class:`InvokeError` is not one of them: it is what ``self.invoke`` / ``self.ainvoke``
raise when the callee could not be run at all (no such service, its input refused, the
invoke depth limit), a fault of the calling service, which uncaught answers 500.
"""

from __future__ import annotations

TYPE_CHECKING = False  # see _protocol.py: keep ``typing`` out of the worker's startup
if TYPE_CHECKING:
    from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

__all__ = [
    'Reportable', 'BadRequest', 'Unauthorized', 'Forbidden', 'NotFound', 'MethodNotAllowed',
    'Conflict', 'TooManyRequests', 'InternalServerError', 'ServiceUnavailable',
    'InvokeError', 'InvokeDepthError',
]


class Reportable(Exception):
    """An error whose message is safe to show to the client, with the HTTP status to use.

    Accepted call forms::

        Reportable('message')                    # status from the class (500 here)
        Reportable(cid, 'message')               # Zato style
        Reportable(cid, 'message', 404)          # Zato style with an explicit status

    Keyword arguments: ``status_code`` overrides the class status, ``details`` adds keys to
    the JSON error body, and ``headers`` adds response headers (e.g. ``retry-after``).
    """

    #: The HTTP status this exception maps to; subclasses set their own.
    status_code: int = 500
    #: The status reason, used as the message when none is given.
    reason: str = 'Internal Server Error'

    def __init__(self, *args: Any, status_code: Optional[int] = None,
                 details: Optional[Mapping[str, Any]] = None,
                 headers: Optional[Mapping[str, str]] = None) -> None:
        cid, msg, status = _split_args(args)
        super().__init__(*args)
        #: The correlation id given Zato style; the worker reports the invocation's own cid.
        self.cid: Optional[str] = cid
        self.msg: str = msg if msg is not None else self.reason
        if status is not None:
            self.status_code = int(status)
        if status_code is not None:
            self.status_code = int(status_code)
        self.details: Dict[str, Any] = dict(details or ())
        self.headers: Dict[str, str] = dict(headers or ())

    @property
    def status(self) -> int:
        """Zato's name for :attr:`status_code`."""
        return self.status_code

    def __str__(self) -> str:
        return self.msg


def _split_args(args: Tuple[Any, ...]) -> Tuple[Any, Optional[str], Any]:
    # One positional argument is the message; two or more are Zato's (cid, msg[, status]).
    if not args:
        return None, None, None
    if len(args) == 1:
        return None, _text(args[0]), None
    status = args[2] if len(args) > 2 else None
    return args[0], _text(args[1]), status


def _text(value: Any) -> Optional[str]:
    return None if value is None else str(value)


class BadRequest(Reportable):
    """400: the request is malformed or its input invalid."""
    status_code = 400
    reason = 'Bad Request'


class Unauthorized(Reportable):
    """401: credentials are missing or wrong.

    Zato's third positional argument, ``challenge``, becomes the ``www-authenticate`` header.
    """
    status_code = 401
    reason = 'Unauthorized'

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        challenge = None
        if len(args) > 2:
            args, challenge = args[:2], args[2]
        super().__init__(*args, **kwargs)
        if challenge:
            self.headers.setdefault('www-authenticate', str(challenge))


class Forbidden(Reportable):
    """403: authenticated, but not allowed to do this."""
    status_code = 403
    reason = 'Forbidden'


class NotFound(Reportable):
    """404: the thing asked for does not exist."""
    status_code = 404
    reason = 'Not Found'


class MethodNotAllowed(Reportable):
    """405: the service has no handler for this HTTP method.

    ``allowed`` lists the methods that are, for the ``allow`` header and the error body.
    """
    status_code = 405
    reason = 'Method Not Allowed'

    def __init__(self, *args: Any, allowed: Iterable[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.allowed = list(allowed)
        if self.allowed:
            self.details.setdefault('allowed', self.allowed)
            self.headers.setdefault('allow', ', '.join(self.allowed))


class Conflict(Reportable):
    """409: the request conflicts with the current state."""
    status_code = 409
    reason = 'Conflict'


class TooManyRequests(Reportable):
    """429: the caller is over its rate limit."""
    status_code = 429
    reason = 'Too Many Requests'


class InternalServerError(Reportable):
    """500 with a message the client may see (Zato has it too); other exceptions hide theirs."""
    status_code = 500
    reason = 'Internal Server Error'


class ServiceUnavailable(Reportable):
    """503: a dependency is down or the worker is draining; the caller may retry later."""
    status_code = 503
    reason = 'Service Unavailable'


class InvokeError(RuntimeError):
    """``self.invoke`` / ``self.ainvoke`` could not run the callee: there is no service of
    that name, it refused the input it was given (its SimpleIO or model input), it answers
    only HTTP verbs, or the invocation nested past the invoke depth limit.

    A fault of the *calling* service, not of its client: uncaught, the caller answers 500
    (``internal error`` and the cid) and its log line carries this message, which names the
    callee and the cause, without a traceback. Not a :class:`Reportable`, so an HTTP client
    never sees a callee's status or field names. A callee's own ``raise NotFound(...)``
    (or any exception its handler raises) is not wrapped: it reaches the caller unchanged.
    ``service`` is the callee's name; ``details`` what the callee said of its input.
    """

    def __init__(self, msg: str, service: Optional[str] = None,
                 details: Optional[Mapping[str, Any]] = None) -> None:
        super().__init__(msg)
        self.msg = msg
        self.service = service
        self.details: Dict[str, Any] = dict(details or ())

    def __str__(self) -> str:
        return self.msg


class InvokeDepthError(InvokeError):
    """In-process invokes nested past the limit (``oxbus._dispatch.MAX_INVOKE_DEPTH``): a
    service invoking itself, or a cycle of services; ``chain`` is the services' names from
    the outermost caller on."""

    def __init__(self, msg: str, chain: Tuple[str, ...]) -> None:
        super().__init__(msg, chain[-1] if chain else None)
        self.chain = chain
