"""What the fleet level draws instead of simulating packets: latencies and message costs.

Theory of operation
-------------------
The fleet runner does not send packets; it draws, per plan and per node, how long the node
takes to apply its share, from figures measured by the packet-level benchmarks of this repo
(BENCHMARKS.md, 2026-11-26). Every report carries ``CALIBRATION`` so a reader sees what stood
in for the network. Sources:

* ``mesh_delivery``: lognormal fitted to ``meshagent bench urgent`` at 10 agents (one signed
  datagram to every member until each has delivered it: p50 2.13 ms, p99 3.73 ms). The
  10-agent row is used because each charger has its own CPU; the 100-agent row (37 ms p50)
  measures 99 receivers sharing one core.
* ``meter_poll_s``: detection waits for the next 10 ms meter sample (uniform 0-10 ms).
* ``inverter_s``: charge-to-discharge transition, uniform 0-100 ms: the design bound of
  docs/control, NOT a measurement (no inverter here).
* ``ocpp_call_s``: one CSMS -> charger call, round-trip bound, 2.6 ms = 1 / 382 events/s
  (``meshagent bench ocpp``); central dispatch sends one SetChargingProfile per charger, one
  after another from the CSMS's single loop, so charger k of a plan waits k calls.
* ``gossip``: steady-state mesh load per node, 2.02 packets/s and 313 B/s (``bench gossip``,
  100 nodes); ``plan_bytes`` / ``ack_bytes``: a PLAN (water levels, one datagram) and its ACK
  with the signed envelope, assumed 200 / 150 B until the allocation issue measures them.
* ``set_profile_bytes``: a SetChargingProfile CALL with one period and its CALLRESULT as JSON
  over WebSocket, about 450 B together (the OCPP 2.0.1 schema's minimal profile).
"""

from __future__ import annotations

import math

URGENT_P50_S = 2.13e-3
URGENT_P99_S = 3.73e-3
_Z99 = 2.326
MESH_DELIVERY_MU = math.log(URGENT_P50_S)
MESH_DELIVERY_SIGMA = (math.log(URGENT_P99_S) - math.log(URGENT_P50_S)) / _Z99
METER_POLL_S = 0.010
INVERTER_MAX_S = 0.100
OCPP_CALL_S = 1 / 382
GOSSIP_PACKETS_PER_NODE_S = 2.02
GOSSIP_BYTES_PER_NODE_S = 313.0
PLAN_BYTES = 200
ACK_BYTES = 150
SET_PROFILE_BYTES = 450

CALIBRATION = {
    "mesh_delivery": {"lognormal_p50_s": URGENT_P50_S, "p99_s": URGENT_P99_S,
                      "source": "meshagent bench urgent, 10 agents, BENCHMARKS.md 2026-11-26"},
    "meter_poll_s": METER_POLL_S,
    "inverter_s": {"uniform_max": INVERTER_MAX_S, "source": "design bound, not measured"},
    "ocpp_call_s": {"value": OCPP_CALL_S, "source": "meshagent bench ocpp events_per_s 382"},
    "gossip": {"packets_per_node_s": GOSSIP_PACKETS_PER_NODE_S, "bytes_per_node_s": GOSSIP_BYTES_PER_NODE_S,
               "source": "meshagent bench gossip load, 100 nodes"},
    "plan_bytes": PLAN_BYTES, "ack_bytes": ACK_BYTES, "set_profile_bytes": SET_PROFILE_BYTES,
    "note": "fleet level: latencies drawn from these figures, packets not simulated",
}
