"""SunSpec 704's setpoint reversion timer, as a simulated charger keeps it.

Theory of operation
-------------------
The agent arms the timer by writing ``WSetRvrtTms`` (whole seconds; 0 disarms it), with
``WSetRvrt`` the power to revert to and ``WSetEnaRvrt`` whether that setpoint is then enabled;
the agent writes 0 W and disabled, so a device that hears nothing more returns to no power.
Writing the setpoint (``WSetEna``, ``WSetMod``, ``WSet``) restarts an armed timer, as writing
``WSetRvrtTms`` does: the control loop's periodic re-send renews it. When it runs out with no
write renewing it, the setpoint reverts, once, and ``reversions`` counts it.

It takes ``now`` from the unit's clock and says what to do; the unit (``ChargerUnit`` in
``hardware.simulated.images``) applies it to the physics, and renders ``remaining_s`` as
``WSetRvrtRem``.
"""

from __future__ import annotations

import math

import attrs


@attrs.define
class ReversionTimer:
    wset_rvrt_w: float = 0.0  # WSetRvrt, SunSpec sign (+ generation)
    wset_ena_rvrt: int = 0  # WSetEnaRvrt: the reverted setpoint enabled (1) or not (0)
    wset_rvrt_tms: int = 0  # WSetRvrtTms, s; 0: not armed
    deadline: float | None = None  # on the unit's clock; None: not running
    reversions: int = 0  # times it ran out and the setpoint reverted

    def arm(self, after_s: int, now: float) -> None:
        """``WSetRvrtTms`` written: run ``after_s`` from now (0 stops it)."""
        self.wset_rvrt_tms = after_s
        self.deadline = now + after_s if after_s else None

    def renew(self, now: float) -> None:
        """The setpoint was written: an armed timer starts again."""
        if self.wset_rvrt_tms:
            self.deadline = now + self.wset_rvrt_tms

    def remaining_s(self, now: float) -> int:
        """``WSetRvrtRem``: whole seconds left, 0 when not running."""
        return 0 if self.deadline is None else max(0, math.ceil(self.deadline - now))

    def run_out(self, now: float) -> tuple[int, float] | None:
        """When the timer has run out: (``WSetEna``, ``WSet``) to revert to, once; else None."""
        if self.deadline is None or now < self.deadline:
            return None
        self.deadline = None
        self.reversions += 1
        return self.wset_ena_rvrt, self.wset_rvrt_w
