"""The outbox: queued events sent in order, confirmed ones deleted in small batches, failures
counted, retried after n x MessageAttemptInterval and after MessageAttempts moved to the dead
letters (never deleted). The CSMS's ``idTokenInfo`` in a TransactionEvent answer is kept per
transaction (``id_token_status``)."""

from __future__ import annotations

from typing import Any

import trio

from meshagent.csms.calls import CallMixin, _Reconnect, _Session
from meshagent.csms.core import CONFIRM_EVERY, DRAIN_BATCH, log
from meshagent.csms.store import QueuedEvent
from protocol import ocpp


class OutboxMixin(CallMixin):
    async def wait_drained(self) -> None:
        """Return when the queue is empty (every recorded event confirmed or dead-lettered)."""
        while True:
            progress = self._progress
            if (await self._db(self.store.head)) is None:
                return
            await progress.wait()

    async def _drain(self, session: _Session) -> None:
        """Send the queue in order. Confirmed events are deleted every ``CONFIRM_EVERY`` (one
        fsync each): a crash before the delete only means the CSMS sees those events again
        (at most ``CONFIRM_EVERY`` plus the one in flight), and it recognises them by
        (transactionId, seqNo) and bills them once."""
        confirmed: list[int] = []
        try:
            while True:
                changed = self._queue_changed
                batch = await self._db(self.store.pending, DRAIN_BATCH)
                if not batch:
                    with trio.move_on_after(self.settings.queue_poll_s):
                        await changed.wait()
                    continue
                for event in batch:
                    result = await self._call(session, event.action, dict(event.payload))
                    if isinstance(result, ocpp.Answered):
                        self._note_id_token_info(event, result.payload)
                        confirmed.append(event.id)
                        self._stats["events_confirmed"] += 1
                        if len(confirmed) >= CONFIRM_EVERY:  # bound what a crash re-sends
                            await self._flush_confirmed(confirmed)
                        continue
                    await self._flush_confirmed(confirmed)
                    await self._failed_attempt(event, result)
                    break  # re-read the queue: the head may have changed
                await self._flush_confirmed(confirmed)
        finally:
            with trio.CancelScope(shield=True):
                await self._flush_confirmed(confirmed)

    def _note_id_token_info(self, event: QueuedEvent, answer: Any) -> None:
        info = answer.get("idTokenInfo") if isinstance(answer, dict) else None
        if event.action != "TransactionEvent" or event.transaction_id is None or not isinstance(info, dict):
            return
        status = info.get("status")
        if isinstance(status, str):
            self._id_token_status[event.transaction_id] = status
            if status in ("Invalid", "Blocked", "Expired"):
                log.warning("csms %s: idToken of transaction %s answered %s", self.settings.station_id,
                            event.transaction_id, status)
            self._poke("_stats_changed")

    def id_token_status(self, transaction_id: str) -> str | None:
        """The CSMS's last idTokenInfo status for a transaction (from its TransactionEvent
        answers), None if it said none: Invalid, Blocked or Expired ends it (StopTxOnInvalidId)."""
        return self._id_token_status.get(transaction_id)

    async def _flush_confirmed(self, confirmed: list[int]) -> None:
        if confirmed:
            ids = list(confirmed)
            await self._db(self.store.confirm_many, ids)
            del confirmed[: len(ids)]
            self._poke("_progress")
            self._poke("_stats_changed")

    async def _failed_attempt(self, event: QueuedEvent, result: ocpp.Failed | None) -> None:
        error = "timeout" if result is None else f"{result.error_code}: {result.description}"
        self._bump("failed_attempts")
        attempts = await self._db(self.store.note_failure, event.id, error)
        if attempts >= self._message_attempts:
            await self._db(self.store.dead_letter, event.id, self._wall_clock_ms())
            self._bump("dead_lettered")
            self._poke("_progress")
            log.error("csms %s: %s seqNo %s of %s dead-lettered after %d attempts (%s); "
                      "`meshagent csms-queue retry` sends it again", self.settings.station_id,
                      event.action, event.seq_no, event.transaction_id, attempts, error)
        if result is None:
            raise _Reconnect(f"no answer to {event.action}")
        await trio.sleep(self._attempt_interval_s * attempts)
