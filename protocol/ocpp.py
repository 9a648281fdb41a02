"""OCPP-J framing for OCPP 2.0.1, sans-IO, validated against the ``ocpp`` package's schemas.

Theory of operation
-------------------
OCPP-J puts one JSON array in each WebSocket text message::

    CALL        [2, "<messageId>", "<Action>", {payload}]
    CALLRESULT  [3, "<messageId>", {payload}]
    CALLERROR   [4, "<messageId>", "<errorCode>", "<errorDescription>", {errorDetails}]

A CALLRESULT or CALLERROR answers the CALL with the same ``messageId`` (at most 36
characters). Either side may have at most one CALL of its own outstanding; calls in the two
directions cross freely.

``OcppEndpoint`` is one side of one connection, after h11: the shell hands it the text it
received (``receive_untrusted``) and gets back a small frozen event, and asks it for the text
to send (``call``, ``answer``, ``answer_error``). It never touches a socket or a clock: the
shell owns the timeout (a trio scope around the wait) and tells the endpoint to ``abandon``
a call that timed out, so that a late answer is recognised and ignored, not mistaken for
the answer to the next call.

Payloads are checked against the JSON schemas shipped by the ``ocpp`` package (the
``ocpp/v201/schemas/*.json`` files, read through ``importlib.resources``, with
``jsonschema``'s Draft 4 validator as the ``ocpp`` package itself uses). We read the schema
files rather than import ``ocpp.messages``, because that module imports asyncio and
``protocol/`` stays free of event loops. Our own outgoing payloads are checked too: a
payload that fails is our bug (``LocalProtocolError``), not the peer's.

Everything that parses received text raises only ``BadFrame`` (a ``BadPacket``), which
carries the OCPP error code to answer with and, when the frame was a CALL whose id we could
read, the CALLERROR text to send back (``reply``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from importlib import resources
from typing import Any, Final

import attrs
import jsonschema

from protocol.errors import BadPacket, DropReason, LocalProtocolError

OCPP_VERSION: Final = "2.0.1"
SUBPROTOCOL: Final = "ocpp2.0.1"

CALL: Final = 2
CALLRESULT: Final = 3
CALLERROR: Final = 4

MAX_MESSAGE_ID = 36
MAX_ACTION = 64
MAX_ERROR_DESCRIPTION = 255
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024

# OCPP 2.0.1 RPC framework error codes (part 4, 4.3).
FORMAT_VIOLATION: Final = "FormatViolation"
GENERIC_ERROR: Final = "GenericError"
INTERNAL_ERROR: Final = "InternalError"
MESSAGE_TYPE_NOT_SUPPORTED: Final = "MessageTypeNotSupported"
NOT_IMPLEMENTED: Final = "NotImplemented"
NOT_SUPPORTED: Final = "NotSupported"
OCCURRENCE_CONSTRAINT_VIOLATION: Final = "OccurrenceConstraintViolation"
PROPERTY_CONSTRAINT_VIOLATION: Final = "PropertyConstraintViolation"
PROTOCOL_ERROR: Final = "ProtocolError"
RPC_FRAMEWORK_ERROR: Final = "RpcFrameworkError"
SECURITY_ERROR: Final = "SecurityError"
TYPE_CONSTRAINT_VIOLATION: Final = "TypeConstraintViolation"
ERROR_CODES: Final = frozenset({
    FORMAT_VIOLATION, GENERIC_ERROR, INTERNAL_ERROR, MESSAGE_TYPE_NOT_SUPPORTED, NOT_IMPLEMENTED,
    NOT_SUPPORTED, OCCURRENCE_CONSTRAINT_VIOLATION, PROPERTY_CONSTRAINT_VIOLATION, PROTOCOL_ERROR,
    RPC_FRAMEWORK_ERROR, SECURITY_ERROR, TYPE_CONSTRAINT_VIOLATION,
})


class BadFrame(BadPacket):
    """Received text we will not accept.

    ``error_code`` is the OCPP error code that describes it; ``reply`` is the CALLERROR text
    to send back when the frame was a CALL whose message id could be read (OCPP answers a
    bad CALL; it never answers a bad answer).
    """

    def __init__(
        self,
        reason: DropReason,
        detail: str,
        *,
        error_code: str = FORMAT_VIOLATION,
        unique_id: str | None = None,
    ) -> None:
        super().__init__(reason, detail)
        self.error_code = error_code
        self.unique_id = unique_id
        self.reply: str | None = None
        if unique_id is not None:
            self.reply = encode(CallError(unique_id, error_code, detail[:MAX_ERROR_DESCRIPTION], {}))


# --- frames ------------------------------------------------------------------------------


@attrs.frozen
class Call:
    unique_id: str
    action: str
    payload: Mapping[str, Any]


@attrs.frozen
class CallResult:
    unique_id: str
    payload: Mapping[str, Any]


@attrs.frozen
class CallError:
    unique_id: str
    error_code: str
    error_description: str
    error_details: Mapping[str, Any]


Frame = Call | CallResult | CallError


def encode(frame: Frame) -> str:
    """A frame -> the JSON text of one WebSocket message."""
    body: list[Any]
    if isinstance(frame, Call):
        body = [CALL, frame.unique_id, frame.action, frame.payload]
    elif isinstance(frame, CallResult):
        body = [CALLRESULT, frame.unique_id, frame.payload]
    else:
        body = [CALLERROR, frame.unique_id, frame.error_code, frame.error_description,
                frame.error_details]
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_frame_untrusted(data: str | bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Frame:
    """One received WebSocket message -> a frame. Raises only ``BadFrame``.

    Checks the array shape and field types only; payloads are checked against their schema
    by ``validate_untrusted`` once we know which action they belong to.
    """
    if len(data) > max_bytes:
        raise BadFrame(DropReason.TOO_LARGE, f"message of {len(data)} bytes")
    try:
        msg = json.loads(data, parse_constant=_refuse_constant)
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise BadFrame(DropReason.MALFORMED_BODY, f"not JSON: {type(exc).__name__}") from None
    if type(msg) is not list or not msg:
        raise BadFrame(DropReason.MALFORMED_BODY, "not a JSON array", error_code=RPC_FRAMEWORK_ERROR)
    kind = msg[0]
    unique_id = msg[1] if len(msg) > 1 else None
    if type(unique_id) is not str or not 0 < len(unique_id) <= MAX_MESSAGE_ID:
        raise BadFrame(DropReason.BAD_HEADER, "message id must be text of 1 to 36 characters",
                       error_code=RPC_FRAMEWORK_ERROR)
    if kind == CALL and type(kind) is int:
        if len(msg) != 4:
            raise BadFrame(DropReason.BAD_HEADER, "CALL must have 4 elements",
                           error_code=RPC_FRAMEWORK_ERROR, unique_id=unique_id)
        action, payload = msg[2], msg[3]
        if type(action) is not str or not 0 < len(action) <= MAX_ACTION:
            raise BadFrame(DropReason.BAD_HEADER, "action must be short text",
                           error_code=RPC_FRAMEWORK_ERROR, unique_id=unique_id)
        if type(payload) is not dict:
            raise BadFrame(DropReason.BAD_FIELD, "payload must be an object",
                           error_code=FORMAT_VIOLATION, unique_id=unique_id)
        return Call(unique_id, action, payload)
    if kind == CALLRESULT and type(kind) is int:
        if len(msg) != 3 or type(msg[2]) is not dict:
            raise BadFrame(DropReason.BAD_HEADER, "CALLRESULT must be [3, id, {payload}]")
        return CallResult(unique_id, msg[2])
    if kind == CALLERROR and type(kind) is int:
        if len(msg) != 5:
            raise BadFrame(DropReason.BAD_HEADER, "CALLERROR must have 5 elements")
        code, description, details = msg[2], msg[3], msg[4]
        if type(code) is not str or type(description) is not str or type(details) is not dict:
            raise BadFrame(DropReason.BAD_FIELD, "CALLERROR fields have the wrong types")
        return CallError(unique_id, code[:64], description[:MAX_ERROR_DESCRIPTION], details)
    raise BadFrame(DropReason.UNKNOWN_TYPE, f"message type {kind!r}",
                   error_code=MESSAGE_TYPE_NOT_SUPPORTED, unique_id=unique_id)


# --- schemas -----------------------------------------------------------------------------

_SCHEMA_DIR = resources.files("ocpp").joinpath("v201", "schemas")
_VALIDATORS: dict[str, Any] = {}


def known_actions() -> frozenset[str]:
    """Every OCPP 2.0.1 action, from the ``ocpp`` package's schema file names."""
    return _KNOWN_ACTIONS


def _list_actions() -> frozenset[str]:
    names = set()
    for entry in _SCHEMA_DIR.iterdir():
        name = entry.name
        if name.endswith("Request.json"):
            names.add(name[: -len("Request.json")])
    return frozenset(names)


_KNOWN_ACTIONS = _list_actions()


def _validator(action: str, is_request: bool) -> Any:
    schema_name = action + ("Request" if is_request else "Response")
    validator = _VALIDATORS.get(schema_name)
    if validator is None:
        if action not in _KNOWN_ACTIONS:
            raise KeyError(action)
        text = _SCHEMA_DIR.joinpath(schema_name + ".json").read_text(encoding="utf-8-sig")
        validator = jsonschema.Draft4Validator(json.loads(text))
        _VALIDATORS[schema_name] = validator
    return validator


def _error_code_for(failure: Any) -> str:
    kind = failure.validator
    if kind == "required":
        return OCCURRENCE_CONSTRAINT_VIOLATION
    if kind == "type":
        return TYPE_CONSTRAINT_VIOLATION
    if kind in ("maxLength", "minLength", "minimum", "maximum", "enum", "maxItems", "minItems"):
        return PROPERTY_CONSTRAINT_VIOLATION
    return FORMAT_VIOLATION


def schema_problem(action: str, payload: Mapping[str, Any], *, is_request: bool) -> tuple[str, str] | None:
    """``(error_code, message)`` if ``payload`` breaks the action's schema, else None.

    Raises ``KeyError`` for an action OCPP 2.0.1 does not define.
    """
    validator = _validator(action, is_request)
    failure = jsonschema.exceptions.best_match(validator.iter_errors(payload))
    if failure is None:
        return None
    where = "/".join(str(p) for p in failure.absolute_path) or "payload"
    return _error_code_for(failure), f"{action}: {where}: {failure.message}"[:MAX_ERROR_DESCRIPTION]


def check_outgoing(action: str, payload: Mapping[str, Any], *, is_request: bool) -> None:
    """Our own payload must match its schema; a mismatch is our bug."""
    try:
        problem = schema_problem(action, payload, is_request=is_request)
    except KeyError:
        raise LocalProtocolError(f"{action} is not an OCPP {OCPP_VERSION} action") from None
    if problem is not None:
        raise LocalProtocolError(f"invalid outgoing {action}: {problem[1]}")
    try:
        json.dumps(payload, allow_nan=False)
    except ValueError as exc:
        raise LocalProtocolError(f"invalid outgoing {action}: {exc}") from None


# --- one side of one connection ----------------------------------------------------------


@attrs.frozen
class Answered:
    """The CSMS (or station) answered our outstanding call."""

    action: str
    unique_id: str
    payload: Mapping[str, Any]


@attrs.frozen
class Failed:
    """Our outstanding call was answered with a CALLERROR."""

    action: str
    unique_id: str
    error_code: str
    description: str


@attrs.frozen
class Requested:
    """The peer sent a valid CALL; answer it with ``answer`` or ``answer_error``."""

    unique_id: str
    action: str
    payload: Mapping[str, Any]


@attrs.frozen
class Ignored:
    """An answer to no call of ours (late after a timeout, or a wrong id); nothing to do."""

    unique_id: str
    why: str


Event = Answered | Failed | Requested | Ignored


@attrs.frozen
class EndpointStatistics:
    calls_sent: int
    answered: int
    failed: int
    abandoned: int
    requests_received: int
    answers_sent: int
    bad_frames: int
    ignored: int


@attrs.frozen
class Outstanding:
    unique_id: str
    action: str


@attrs.define
class OcppEndpoint:
    """One side of one OCPP-J connection: frames in, events out; at most one call of ours open.

    ``id_prefix`` makes message ids unique across connections (the shell passes a few
    random characters per connection); a counter makes them unique within one.
    """

    id_prefix: str
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    _outstanding: Outstanding | None = None
    _abandoned: set[str] = attrs.field(factory=set)
    _counter: int = 0
    _stats: dict[str, int] = attrs.field(factory=lambda: dict.fromkeys(
        ("calls_sent", "answered", "failed", "abandoned", "requests_received", "answers_sent",
         "bad_frames", "ignored"), 0))

    def __attrs_post_init__(self) -> None:
        if not 0 < len(self.id_prefix) <= 16:
            raise LocalProtocolError("id_prefix must be 1 to 16 characters")

    @property
    def outstanding(self) -> Outstanding | None:
        return self._outstanding

    def call(self, action: str, payload: Mapping[str, Any]) -> tuple[str, str]:
        """Start a call: returns ``(unique_id, text to send)``."""
        if self._outstanding is not None:
            raise LocalProtocolError(
                f"call {self._outstanding.action} is still outstanding; OCPP allows one at a time")
        check_outgoing(action, payload, is_request=True)
        self._counter += 1
        unique_id = f"{self.id_prefix}-{self._counter}"
        self._outstanding = Outstanding(unique_id, action)
        self._stats["calls_sent"] += 1
        return unique_id, encode(Call(unique_id, action, payload))

    def abandon(self) -> None:
        """The shell gave up waiting (its timeout scope expired); a late answer is ignored."""
        if self._outstanding is not None:
            self._abandoned.add(self._outstanding.unique_id)
            if len(self._abandoned) > 64:  # bounded: only recent ids can plausibly come back
                self._abandoned.pop()
            self._outstanding = None
            self._stats["abandoned"] += 1

    def answer(self, request: Requested, payload: Mapping[str, Any]) -> str:
        check_outgoing(request.action, payload, is_request=False)
        self._stats["answers_sent"] += 1
        return encode(CallResult(request.unique_id, payload))

    def answer_error(self, request: Requested, error_code: str, description: str = "") -> str:
        if error_code not in ERROR_CODES:
            raise LocalProtocolError(f"{error_code!r} is not an OCPP error code")
        self._stats["answers_sent"] += 1
        return encode(CallError(request.unique_id, error_code, description[:MAX_ERROR_DESCRIPTION], {}))

    def receive_untrusted(self, data: str | bytes) -> Event:
        """One received message -> an event. Raises only ``BadFrame`` (send its ``reply``)."""
        try:
            frame = parse_frame_untrusted(data, self.max_message_bytes)
            if isinstance(frame, Call):
                return self._request(frame)
        except BadFrame:
            self._stats["bad_frames"] += 1
            raise
        out = self._outstanding
        if out is None or frame.unique_id != out.unique_id:
            why = "late answer to an abandoned call" if frame.unique_id in self._abandoned else "answer to no call"
            self._abandoned.discard(frame.unique_id)
            self._stats["ignored"] += 1
            return Ignored(frame.unique_id, why)
        if isinstance(frame, CallError):
            self._outstanding = None
            self._stats["failed"] += 1
            return Failed(out.action, frame.unique_id, frame.error_code, frame.error_description)
        problem = schema_problem(out.action, frame.payload, is_request=False)
        if problem is not None:
            # A malformed answer is still the end of our call: the peer will not send another.
            self._outstanding = None
            self._stats["bad_frames"] += 1
            raise BadFrame(DropReason.BAD_FIELD, problem[1], error_code=problem[0])
        self._outstanding = None
        self._stats["answered"] += 1
        return Answered(out.action, frame.unique_id, frame.payload)

    def _request(self, frame: Call) -> Requested:
        try:
            problem = schema_problem(frame.action, frame.payload, is_request=True)
        except KeyError:
            raise BadFrame(DropReason.UNKNOWN_TYPE, f"unknown action {frame.action}",
                           error_code=NOT_SUPPORTED, unique_id=frame.unique_id) from None
        if problem is not None:
            raise BadFrame(DropReason.BAD_FIELD, problem[1], error_code=problem[0],
                           unique_id=frame.unique_id)
        self._stats["requests_received"] += 1
        return Requested(frame.unique_id, frame.action, frame.payload)

    def statistics(self) -> EndpointStatistics:
        return EndpointStatistics(**self._stats)


# --- values used in payloads -------------------------------------------------------------


def format_timestamp(epoch_ms: int) -> str:
    """OCPP dateTime (RFC 3339, UTC, milliseconds) from Unix milliseconds, without a clock."""
    if epoch_ms < 0:
        raise LocalProtocolError("timestamps before 1970 are not representable")
    days, ms_of_day = divmod(epoch_ms, 86_400_000)
    year, month, day = _civil_from_days(days)
    hh, rest = divmod(ms_of_day, 3_600_000)
    mm, rest = divmod(rest, 60_000)
    ss, ms = divmod(rest, 1000)
    return f"{year:04d}-{month:02d}-{day:02d}T{hh:02d}:{mm:02d}:{ss:02d}.{ms:03d}Z"


def _civil_from_days(z: int) -> tuple[int, int, int]:
    # Howard Hinnant's days_from_civil inverse; exact for the proleptic Gregorian calendar.
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return y + (m <= 2), m, d


def finite(value: float) -> float:
    if not math.isfinite(value):
        raise LocalProtocolError(f"{value!r} is not a finite number")
    return value
