"""CPU settings of the agent's modules that `cpsim fleet` changes for its N stations in one process.

Each is a module-level period the agent reads where it uses it (nothing here changes how a charger runs: the
real agent never imports this module). What a longer period costs is said next to it; README "Fleet mode"
lists them too.
"""

from __future__ import annotations

# Smart charging re-applies the composite limits at least this often even when nothing changed (the charger's
# 30 s covers a voltage change or a wall-clock step under W-unit or absolute-time profiles). Every change the
# agent knows of (a profile set or cleared, a session started or stopped, the next period of a schedule)
# still applies at once; in the fleet the voltage is constant and the stations share one clock. At 30 s it
# was 2 wake-ups per station-minute, each building every connector's view.
SMART_CHARGING_MAX_WAIT_S = 300.0
# The security watch looks at a connected link every second on a charger (1.6: to count and report failed
# dials, SecurityEventNotification; 2.0.1: also to fall back to the next network profile after the attempts).
# In the fleet a dial failure is still counted and reported, at most this much later: 1000 stations at 1 s
# would be 1000 wake-ups a second, most of an idle fleet's CPU. 60 s (30 before): one wake-up per
# station-minute fewer (with its sleep future and timer), ~0.1 CPU-ms per station-minute.
SECURITY_WATCH_S = 60.0
# A connector writes its open session's last meter value (sessions.last_energy_wh, the energy a session
# closed after a power loss or kill -9 gets) at most every PROGRESS_PERSIST_S when a sample comes: 5 s on a
# charger (its meter is read at 2 Hz). The fleet's meters push a sample a minute, so each was one UPDATE
# committed with an fsync per station-minute (~0.2 CPU-ms and 2-4 ms of the loop blocked on this disk). In
# the fleet a session closed after kill -9 gets the energy of at most this long ago (its MeterValues and its
# live meter are unaffected; a session whose EV is still plugged resumes and ends with the live value).
SESSION_PROGRESS_S = 300.0
# 2.0.1: the external-limits loop looks every second whether a transaction's charging rate changed (a site
# limit or a CSMS profile: TransactionEvent ChargingRateChanged, NotifyChargingLimit), building every EVSE's
# view each time. In the fleet such a change is reported at most this much later.
EXTERNAL_LIMITS_POLL_S = 10.0

# While the ramp builds the stations, every GC_FREEZE_EVERY of them the objects alive so far are moved out of
# the collector's generations (gc.freeze): a station's objects live as long as the fleet, and without it each
# full collection walks every station built so far again (N = 400: 6 of them, 1.3 s of a 9 s boot). Young
# garbage is still collected; a cycle already garbage at a freeze is kept (the boot makes few).
GC_FREEZE_EVERY = 50


def tune_agent_periods(*, with_201: bool = True) -> None:
    """Lengthen the periods above (never shorten: a test may have set a longer one). ``with_201=False`` (a
    fleet that speaks only 1.6, whose stations never build a 2.0.1 service) leaves the 2.0.1 modules
    unimported: importing them loads the 2.0.1 library, ~0.5 s of CPU inside the fleet's boot time."""
    import agent.connector as connector
    import agent.ocpp.v16.security as sec16
    import agent.ocpp.v16.smart_charging as sc16

    connector.PROGRESS_PERSIST_S = max(connector.PROGRESS_PERSIST_S, SESSION_PROGRESS_S)
    sc16.MAX_WAIT_S = max(sc16.MAX_WAIT_S, SMART_CHARGING_MAX_WAIT_S)
    sec16.WATCH_STEADY_S = max(sec16.WATCH_STEADY_S, SECURITY_WATCH_S)
    if not with_201:
        return
    import agent.ocpp.v201.external_limits as ext201
    import agent.ocpp.v201.security as sec201
    import agent.ocpp.v201.smart_charging as sc201

    sc201.MAX_WAIT_S = max(sc201.MAX_WAIT_S, SMART_CHARGING_MAX_WAIT_S)
    sec201.WATCH_STEADY_S = max(sec201.WATCH_STEADY_S, SECURITY_WATCH_S)
    ext201.POLL_S = max(ext201.POLL_S, EXTERNAL_LIMITS_POLL_S)
