"""Issue 15 tuning: an overload whose lowering must wait for the duty window pauses at once (SiteController on
the FakeClock with a scripted site meter)."""

from __future__ import annotations

import math

from agent.energy.site import ConnectorLoad
from tests.agent.test_site_controller import Harness


def busy(cid: int, amps: float, *, due: float = -math.inf, drawn: float | None = None,
         started: float = 0.0) -> ConnectorLoad:
    measured = amps if drawn is None else drawn
    return ConnectorLoad(connector_id=cid, active=True, own_limit_a=32.0, offered_a=amps, relay_closed=amps > 0,
                         site_phases=(1, 2, 3), measured_a=(measured, measured, measured), started_s=started,
                         duty_due_s=due)


def test_an_overload_whose_lowering_must_wait_for_the_duty_window_pauses_at_once() -> None:
    h = Harness([busy(1, 14.0), busy(2, 14.0, started=1.0)], fuse=35.0)
    h.run(0.5, answer=(33.0, 33.0, 33.0))  # 5 A of house load: no overload, nothing paused
    assert h.applied[2][0] is not None and h.applied[2][0] > 0
    # The oven: 40 A on every phase. Connector 1 may change its duty now, connector 2 only in 4 s.
    now = h.clock.monotonic()
    h.loads = [busy(1, 14.0), busy(2, 14.0, due=now + 4.5, started=1.0)]
    h.run(0.5, answer=(40.0, 40.0, 40.0))
    assert h.applied[1] == (11.0, "site-fuse")  # 35 - 1 - 12 A of house = 22 A for two
    assert h.applied[2] == (0.0, "site-fuse"), "3 A off connector 1 alone cannot remove 5 A of excess"
    # Paused (X1: no offer): the next step hands it its share again, offered after the X1 hold.
    h.loads = [busy(1, 11.0), busy(2, 0.0, started=1.0)]
    h.run(0.5, answer=(23.0, 23.0, 23.0))  # 12 A of house + 11 A
    assert h.applied[2] == (11.0, "site-fuse")


def test_no_pause_when_the_lowerings_that_act_soon_remove_the_excess() -> None:
    now_due = 4.5
    # Both duty windows open: the duty changes correct it.
    h = Harness([busy(1, 14.0), busy(2, 14.0, started=1.0)], fuse=35.0)
    h.run(0.5, answer=(37.0, 37.0, 37.0))
    assert h.applied == {1: (12.5, "site-fuse"), 2: (12.5, "site-fuse")}  # 35 - 1 - 9 A of house, for two
    # Connector 2 cannot change its duty, but connector 1's cut (3.5 A) covers the 2 A of excess.
    h = Harness([busy(1, 16.0), busy(2, 12.0, due=now_due, started=1.0)], fuse=35.0)
    h.run(0.5, answer=(37.0, 37.0, 37.0))
    assert h.applied[1][0] == 12.5 and h.applied[2][0] == 12.5
    # Connector 2's EV still ramps down to an offer already lowered: that counts as relief.
    h = Harness([busy(1, 12.0), busy(2, 10.0, due=now_due, drawn=14.0, started=1.0)], fuse=35.0)
    h.run(0.5, answer=(37.0, 37.0, 37.0))
    assert h.applied[2][0] is not None and h.applied[2][0] > 0
