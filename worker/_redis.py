"""The worker's Redis client: redis-py with a shorter path for each command.

An event costs the worker several Redis round trips (the claim, the lease's confirm, the sent
mark, the shared cache). redis-py 8's command path spends more CPU around a round trip than on
it: a retry wrapper, observability hooks that look up their (disabled) collector on every call,
and a pool that takes a lock, a queue and its bookkeeping for every connection it hands out.
Measured on the benchmark host, one GET cost 163 µs of CPU under gevent through
``Redis.execute_command`` against 77 µs through the connection itself.

``LeanPool`` keeps connections it handed out and got back in a deque (no lock: ``append`` and
``pop`` are atomic) and hands them out again from there; only when the deque is empty does the
pool proper hand out or make one. ``LeanRedis.execute_command`` sends on a pooled connection and
parses the reply with redis-py's own response callbacks; a connection error (a Redis restart
leaves every pooled socket dead) is retried once on a fresh connection, then raised: every
caller treats a Redis failure as such (the dedupe store requeues, the cache bypasses Redis).
Pipelines without a transaction take the same path (``LeanPipeline``); transactions keep
redis-py's code and share the pool.

Under gevent the commands (and plain pipelines) that the task greenlets issue in one turn of the
event loop share one round trip: the first of them spawns a greenlet that runs once the others
have had their turn, writes them all on one connection and reads every reply, and each caller
gets its own reply (or its own error). Each greenlet still waits for its reply before its next
command, so its commands keep their order; a connection error fails (and first retries) the
whole turn, as it did one command. Fewer, fuller round trips: the task greenlets of a turn used
to cost one each, and each a write, a read and a wake-up in the worker and in Redis.
"""

# redis-py is untyped where this module reaches into it (pools, connections, replies).
# mypy: disable-error-code="no-untyped-call"
from __future__ import annotations

import collections
import copy
import threading
from collections.abc import Callable
from typing import Any

import redis as redis_lib
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

_RETRIED = (RedisConnectionError, RedisTimeoutError, OSError)
# Set on a connection given back with every reply read (``LeanPool.release_in_step``).
_IN_STEP = "_lean_in_step"


def _on_pooled_connection(pool: Any, trip: Callable[[Any], Any]) -> Any:
    """``trip(connection)`` on a pooled connection: once more on a fresh socket after a
    connection error (a Redis restart leaves every pooled socket dead), then raised. A reply
    error (read whole) leaves the connection in step; anything else disconnects it."""
    connection = pool.get_connection()
    try:
        try:
            result = trip(connection)
        except _RETRIED:
            connection.disconnect()  # reconnects on the next send
            result = trip(connection)
    except ResponseError:
        pool.release_in_step(connection)
        raise
    except BaseException:
        connection.disconnect()
        pool.release(connection)
        raise
    pool.release_in_step(connection)
    return result


def _round_trip(
    parse: Callable[..., Any], connection: Any, commands: list[tuple[tuple[Any, ...], Any]]
) -> list[Any]:
    """``commands`` ((args, options) pairs) in one write, then every reply read with ``parse``
    (redis-py's ``parse_response``); an error reply is returned as its ResponseError."""
    connection.send_packed_command(connection.pack_commands([args for args, _ in commands]))
    replies: list[Any] = []
    for args, options in commands:
        try:
            replies.append(parse(connection, args[0], **options))
        except ResponseError as exc:
            replies.append(exc)  # every reply is read, so the socket stays in step
    return replies


class LeanPool(redis_lib.BlockingConnectionPool):
    """A ``BlockingConnectionPool`` with a lock-free front: connections given back wait in a
    deque for the next taker. At most ``max_connections`` exist, as before: a connection in
    the deque still counts as handed out by the pool proper. Once the pool proper has made all
    of them, given-back connections go back to it instead, so that a caller blocked in it (all
    connections busy) is served rather than timed out."""

    def __init__(self, **kwargs: Any) -> None:
        self._ready: collections.deque[Any] = collections.deque()
        super().__init__(**kwargs)

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            connection = self._ready.pop()
        except IndexError:
            return super().get_connection()
        if connection.__dict__.pop(_IN_STEP, False):
            # Every reply was read: nothing can be waiting on it but a close by the server,
            # which the first send or read reports and ``_on_pooled_connection`` retries.
            return connection
        # The pool proper's check: a socket with data waiting was given back mid-reply (or the
        # server closed it); it is not reused as it is.
        try:
            stale = connection.can_read()
        except _RETRIED:
            stale = True
        if stale:
            connection.disconnect()
        return connection

    def release_in_step(self, connection: Any) -> None:
        """Gives back a connection whose every reply was read: the next taker skips the check
        for data waiting on it (a poll, the larger part of a round trip's CPU in profiles)."""
        self._give_back(connection, in_step=True)

    def release(self, connection: Any) -> None:
        self._give_back(connection, in_step=False)

    def _give_back(self, connection: Any, *, in_step: bool) -> None:
        if connection.pid != self.pid or len(self._connections) >= self.max_connections:
            connection.__dict__.pop(_IN_STEP, None)
            super().release(connection)
            return
        connection.__dict__[_IN_STEP] = in_step
        self._ready.append(connection)

    def disconnect(self, inuse_connections: bool = True) -> None:
        self._hand_back()
        super().disconnect(inuse_connections)

    def reset(self) -> None:
        ready = getattr(self, "_ready", None)
        if ready is not None:
            ready.clear()
        super().reset()

    def _hand_back(self) -> None:
        while True:
            try:
                connection = self._ready.pop()
            except IndexError:
                return
            connection.__dict__.pop(_IN_STEP, None)
            super().release(connection)


class LeanPipeline(redis_lib.client.Pipeline):
    """A pipeline without a transaction, scripts or watches takes the short path: one write of
    all its commands, their replies read with redis-py's callbacks, one retry on a fresh
    connection as ``LeanRedis.execute_command`` does. Any other pipeline is redis-py's."""

    turns: _Turns | None = None  # the client's, when its round trips are shared per loop turn

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        stack = self.command_stack
        if (
            not stack
            or self.transaction  # type: ignore[truthy-function]  # the instance's flag
            or self.explicit_transaction
            or self.scripts
            or self.watching
            or self.connection is not None
        ):
            return super().execute(raise_on_error)
        try:
            if self.turns is not None:
                responses = self.turns.run(stack)
            else:
                responses = _on_pooled_connection(
                    self.connection_pool, lambda connection: self._round_trip(connection, stack)
                )
        finally:
            self.reset()
        if raise_on_error:
            self.raise_first_error(stack, responses)
        return responses

    def _round_trip(self, connection: Any, stack: list[Any]) -> list[Any]:
        return _round_trip(self.parse_response, connection, stack)


class _Turn:
    """The commands of one event-loop turn, their replies once ``done`` is set."""

    __slots__ = ("commands", "done", "error", "replies")

    def __init__(self) -> None:
        self.commands: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.replies: list[Any] = []
        self.error: BaseException | None = None  # the whole turn failed
        self.done = threading.Event()


class _Turns:
    """Shares one round trip among the commands issued in one turn of the event loop (module
    docstring). ``spawn`` starts the greenlet that sends them."""

    def __init__(
        self,
        pool: Any,
        spawn: Callable[..., Any],
        round_trip: Callable[[Any, list[Any]], list[Any]],
    ):
        self._pool = pool
        self._spawn = spawn
        self._round_trip = round_trip
        self._turn: _Turn | None = None

    def run(self, commands: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> list[Any]:
        """The replies to ``commands`` (a ResponseError as its reply), sent with this turn's."""
        turn = self._turn
        if turn is None:
            turn = self._turn = _Turn()
            self._spawn(self._send, turn)
        start = len(turn.commands)
        turn.commands.extend(commands)
        # Untimed, and never on an event already set (gevent's one unguarded path, see
        # ``worker._gevent.wait_for``): ``_send`` sets it exactly once, in a ``finally``, after
        # its round trip (bounded by the connection's socket timeout).
        if not turn.done.is_set():
            turn.done.wait()
        if turn.error is not None:
            raise copy.copy(turn.error)  # each caller its own exception object
        return turn.replies[start : start + len(commands)]

    def _send(self, turn: _Turn) -> None:
        if self._turn is turn:
            self._turn = None  # commands from here on go in the next turn
        try:
            turn.replies = _on_pooled_connection(
                self._pool, lambda connection: self._round_trip(connection, turn.commands)
            )
        except Exception as exc:  # noqa: BLE001 - raised by every caller of the turn
            turn.error = exc
        except BaseException as exc:  # killed (a shutdown): the callers hear it, then it goes on
            turn.error = exc
            raise
        finally:
            turn.done.set()


class LeanRedis(redis_lib.Redis):
    """``redis.Redis`` whose single commands and plain pipelines take the short path, and under
    gevent share one round trip per loop turn (module docstring)."""

    turns: _Turns | None = None

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipeline = LeanPipeline(
            self.connection_pool, self.response_callbacks, transaction, shard_hint
        )
        pipeline.turns = self.turns
        return pipeline

    def execute_command(self, *args: Any, **options: Any) -> Any:
        if self.turns is not None:
            (reply,) = self.turns.run([(args, options)])
            if isinstance(reply, ResponseError):
                raise reply
            return reply

        def trip(connection: Any) -> Any:
            connection.send_command(*args, check_health=False)
            return self.parse_response(connection, args[0], **options)

        return _on_pooled_connection(self.connection_pool, trip)

    def _round_trip(self, connection: Any, commands: list[Any]) -> list[Any]:
        return _round_trip(self.parse_response, connection, commands)


def lean_client(url: str, *, per_turn: bool | None = None, **pool_options: Any) -> LeanRedis:
    """``per_turn``: share a round trip per event-loop turn (default: under gevent's patching)."""
    client = LeanRedis(connection_pool=LeanPool.from_url(url, **pool_options))
    from worker._gevent import _patched  # noqa: PLC0415 - asks only whether patch() ran

    if _patched() if per_turn is None else per_turn:
        import gevent  # noqa: PLC0415 - only under gevent's patching

        client.turns = _Turns(client.connection_pool, gevent.spawn, client._round_trip)
    return client


__all__ = ["LeanPipeline", "LeanPool", "LeanRedis", "lean_client"]
