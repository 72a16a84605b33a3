"""Events the codec returns from `ServerConnection.receive_data`.

Small classes with `__slots__`: one is allocated per completed message, so
they stay as cheap as a tuple.
"""

from __future__ import annotations

__all__ = ["BinaryMessage", "CloseReceived", "Event", "Pong", "ProtocolFailure", "TextMessage"]


class Event:
    __slots__: tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and all(
            getattr(self, name) == getattr(other, name) for name in self.__slots__
        )

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"


class TextMessage(Event):
    """A complete text message (all fragments joined, UTF-8 already checked)."""

    __slots__ = ("data",)

    def __init__(self, data: str) -> None:
        self.data = data


class BinaryMessage(Event):
    """A complete binary message (all fragments joined)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class Pong(Event):
    """A pong frame from the peer (an answer to our ping, or unsolicited)."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


class CloseReceived(Event):
    """The peer sent a close frame; `code` is 1005 when it carried no payload.

    The codec does not answer it: the caller sends its close with `send_close`.
    """

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


class ProtocolFailure(Event):
    """The peer broke the protocol; `code` is the close code to send (1002, 1007, 1009).

    The codec parses no more input after it and does not send the close itself.
    """

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
