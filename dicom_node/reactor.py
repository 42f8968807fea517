"""Event-driven association reactors: pynetdicom's, without the polling sleeps.

pynetdicom runs two threads per association and both poll: the DUL thread sleeps
``_run_loop_delay`` whenever it finds nothing to do, and the association thread sleeps 1 ms
before every look at the DIMSE queue. One C-STORE crosses both loops twice (request in,
response out), so a bare pynetdicom SCP spends ~1.5 ms of each instance asleep: 385
instances/s against DCMTK's storescu, where the same SCP woken by events does ~600/s.

Here both threads block until there is work instead:

- the DUL thread waits in ``poll()`` on the association's socket and on a wake-up pipe that
  every primitive queued for sending writes to (and a kill request);
- the association thread waits on an :class:`threading.Event` set whenever the DUL queues a
  complete DIMSE message or an ACSE primitive for it, when the DUL thread ends, or on kill.

Both also wake every ``TIMER_TICK`` seconds to look at the ARTIM and idle timers, exactly
as the polling loops did on each turn. Everything else -- the state machine, PDU decoding,
the order of checks -- is pynetdicom's own, reached through its public hooks
(``request_handler`` of the association server) and the same attributes its loops use.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import ssl
import struct
import threading
import time
from typing import Any, Literal, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.dul import _PDU_TYPES, DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import RequestHandler

from dicom_node.fastpath import ProtocolError, StoreFastPath

log = logging.getLogger("filmless.dicom.reactor")

_PDU_TYPE_CODES = frozenset(code[0] for code in _PDU_TYPES)
# Most a PDU's buffer is allocated ahead of the bytes received (see _recv_exact).
_RECV_CHUNK = 1 << 20

# Longest a reactor sleeps without an event: the resolution of the ARTIM and idle timers.
TIMER_TICK = 0.02


class SignallingQueue(queue.Queue):  # type: ignore[type-arg]
    """A queue that calls ``signal`` after every put (to wake the consumer's thread)."""

    def __init__(self, signal: Any) -> None:
        super().__init__()
        self._signal = signal

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._signal()


class EventDrivenDUL(DULServiceProvider):
    """pynetdicom's DUL provider whose reactor sleeps in ``poll()`` instead of ``sleep()``."""

    def __init__(self, assoc: EventDrivenAssociation) -> None:
        self._wake_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        super().__init__(assoc)
        # Outgoing primitives wake this thread; incoming ones wake the association's.
        self.to_provider_queue = SignallingQueue(self.wake)
        self.to_user_queue = SignallingQueue(assoc.wake)
        self._fast: StoreFastPath | Literal[False] | None = None  # made on the first P-DATA-TF

    # pynetdicom stops the thread by assigning ``_kill_thread`` (``stop_dul``, ``kill_dul``).
    @property
    def _kill_thread(self) -> bool:
        return bool(self.__dict__.get("_kill_requested", False))

    @_kill_thread.setter
    def _kill_thread(self, value: bool) -> None:
        self.__dict__["_kill_requested"] = value
        if value:
            self.wake()

    def wake(self) -> None:
        with self._wake_lock:
            if self._wake_w >= 0:
                try:
                    os.write(self._wake_w, b"\0")
                except BlockingIOError:
                    pass  # the pipe is full of wake-ups already

    def _close_wake_pipe(self) -> None:
        with self._wake_lock:
            for fd in (self._wake_r, self._wake_w):
                if fd >= 0:
                    os.close(fd)
            self._wake_r = self._wake_w = -1

    def _wait_for_work(self) -> None:
        """Block until the socket is readable, a primitive is queued, or a timer tick."""
        if self.to_provider_queue.qsize():
            return
        sock = self.socket.socket if self.socket is not None else None
        fd = sock.fileno() if sock is not None else -1
        if fd < 0:
            time.sleep(0.001)  # no connection (yet, or any more): the transport events decide
            return
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return  # decrypted bytes already buffered: select/poll cannot see them
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLPRI)
        poller.register(self._wake_r, select.POLLIN)
        try:
            ready = poller.poll(TIMER_TICK * 1000)
        except (OSError, ValueError):
            return
        if any(rfd == self._wake_r for rfd, _ in ready):
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except (BlockingIOError, OSError):
                pass

    # --- reading PDUs ---------------------------------------------------------------------------
    def _recv_exact(self, size: int) -> bytearray | None:
        """``size`` bytes from the socket, or None if the connection closed or failed first.

        Memory grows with what actually arrives (at most _RECV_CHUNK ahead of it): a PDU
        header may claim up to 4 GiB."""
        sock = cast(Any, self.socket).socket
        buffer = bytearray(min(size, _RECV_CHUNK))
        received = 0
        try:
            while received < size:
                if received == len(buffer):
                    buffer.extend(bytes(min(size - received, _RECV_CHUNK)))
                n = sock.recv_into(memoryview(buffer)[received:])
                if not n:
                    return None
                received += n
        except (OSError, TimeoutError) as exc:
            log.info("connection failed while a PDU was received: %s", exc)
            return None
        return buffer

    def _read_pdu_data(self) -> None:
        """pynetdicom's ``_read_pdu_data`` reading whole PDUs at once (it reads 4 KB at a time),
        with the P-DATA-TF PDUs of an established association going to the C-STORE fast
        path (:mod:`dicom_node.fastpath`) first."""
        header = self._recv_exact(6)
        if header is None:
            self.event_queue.put("Evt17")  # transport connection closed
            return
        pdu_type, _, length = struct.unpack(">BBL", header)
        if pdu_type not in _PDU_TYPE_CODES:
            log.error("unknown PDU type 0x%02X received", pdu_type)
            self.event_queue.put("Evt19")  # unrecognised or invalid PDU
            return
        body = self._recv_exact(length)
        if body is None:
            log.error("connection closed before the entire PDU was received")
            self.event_queue.put("Evt17")
            return
        if pdu_type == 0x04 and self.state_machine.current_state == "Sta6":
            fast = self._fast_path()
            if fast is not None:
                try:
                    fast.feed(body)
                except ProtocolError as exc:
                    log.error("invalid P-DATA-TF PDU from %s: %s", self.assoc.requestor.ae_title, exc)
                    self.event_queue.put("Evt19")
                return
        self._queue_pdu(header + body)

    def _queue_pdu(self, pdu_bytes: bytes | bytearray) -> None:
        """Decode a received PDU and queue it for the state machine, as pynetdicom does."""
        try:
            pdu, event = self._decode_pdu(bytearray(pdu_bytes))
        except Exception:  # noqa: BLE001 - as pynetdicom: an undecodable PDU is Evt19
            log.exception("unable to decode the received PDU")
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def _fast_path(self) -> StoreFastPath | None:
        """The association's C-STORE fast path, made on its first P-DATA-TF; None when the AE
        has no archive store (pynetdicom's handlers take everything)."""
        if self._fast is None:
            target = getattr(self.assoc.ae, "filmless_store", None)
            if target is None or not self.assoc.is_acceptor:
                self._fast = False
            else:
                self._fast = StoreFastPath(self.assoc, target, self._queue_pdu, cast(Any, self.socket).send)
        return self._fast or None

    def run_reactor(self) -> None:
        try:
            self._run_event_driven()
        finally:
            if self._fast:
                self._fast.close()
            self._close_wake_pipe()
            cast(EventDrivenAssociation, self.assoc).wake()  # it notices the DUL has ended

    def _run_event_driven(self) -> None:
        # The same turn as DULServiceProvider.run_reactor, with the idle sleep replaced.
        self._idle_timer.start()
        sleep = False
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                sleep = True
            if sleep:
                self._wait_for_work()
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception:
                log.exception("exception in the DUL reactor, aborting the association")
                self._abort_hard()
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                sleep = True
                continue
            self.state_machine.do_action(event)
            sleep = False

    def _abort_hard(self) -> None:
        """Bypass the state machine (its state is unknown after an exception) and abort."""
        abort_pdu = A_ABORT_RQ()
        abort_pdu.source = 0x02
        abort_pdu.reason_diagnostic = 0x00
        try:
            if self.socket is not None:
                self.socket.send(abort_pdu.encode())
        except Exception:  # noqa: BLE001 - the connection may be gone already
            pass
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        self.assoc._kill = True
        self._kill_thread = True


class EventDrivenAssociation(Association):
    """An acceptor association whose reactor waits for events instead of sleeping 1 ms.

    Made from an association pynetdicom's request handler has configured (contexts, AE
    titles, handlers, socket, timeouts), before its threads start: see :meth:`adopt`.
    """

    _wake_event: threading.Event

    @classmethod
    def adopt(cls, assoc: Association) -> EventDrivenAssociation:
        """Turn a configured, not yet started acceptor into an event-driven one."""
        if assoc.is_alive() or assoc.dul.is_alive():
            raise RuntimeError("an association can only be adopted before it starts")
        old = assoc.dul
        assoc.__class__ = cls
        adopted = cast(EventDrivenAssociation, assoc)
        adopted._wake_event = threading.Event()
        dul = EventDrivenDUL(adopted)
        dul.socket = old.socket
        dul.event_queue = old.event_queue  # holds Evt5, the connection the socket brought
        dul.artim_timer.timeout = old.artim_timer.timeout
        dul._idle_timer.timeout = old._idle_timer.timeout
        adopted.dul = dul
        adopted.dimse.msg_queue = SignallingQueue(adopted.wake)
        return adopted

    def wake(self) -> None:
        self._wake_event.set()

    def kill(self) -> None:
        self._wake_event.set()
        super().kill()

    def _serve_request(self, msg: Any, context_id: int) -> None:
        """C-MOVE and C-GET go to the archive's retrieve service (:mod:`dicom_node.retrieve`)
        when the AE has one; everything else to pynetdicom's service classes."""
        service = getattr(self.ae, "filmless_retrieve", None)
        if service is None or not isinstance(msg, (C_MOVE, C_GET)) or self._sent_release or not msg.is_valid_request:
            super()._serve_request(msg, context_id)
            return
        context = self._accepted_cx.get(context_id)
        if context is None:
            log.info("DIMSE message on an unaccepted presentation context %s; aborting", context_id)
            self.abort()
            return
        self.dimse.cancel_req = {}
        self._is_paused = True  # as pynetdicom does: the service sends on this association
        try:
            service.serve(self, msg, context)
        except Exception:  # noqa: BLE001 - as pynetdicom: a failing service aborts
            log.exception("retrieve service failed")
            self.abort()
        finally:
            self._is_paused = False
            self.dimse.cancel_req = {}

    def _run_reactor(self) -> None:
        # The same checks, in the same order, as Association._run_reactor.
        self._is_paused = False
        while not self._kill:
            self._wake_event.wait(TIMER_TICK)
            self._wake_event.clear()

            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, context_id)  # type: ignore[arg-type]
                self._wake_event.set()  # look at the queue again before sleeping

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                log.debug("association released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                log.error("network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


class EventDrivenRequestHandler(RequestHandler):
    """The association server's request handler, creating event-driven associations."""

    def _create_association(self) -> Association:
        return EventDrivenAssociation.adopt(super()._create_association())
