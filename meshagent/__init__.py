"""meshagent: the trio agent that runs on every V2G charger.

``meshagent`` is the I/O shell: sockets, clocks, files, processes. The protocol logic lives
in ``protocol`` (pure, sans-IO) and device access in ``hardware``.
"""

__version__ = "0.1.0"
