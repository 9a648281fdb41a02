"""meshagent's pure protocol cores.

Everything in this package is synchronous and sans-IO: it takes bytes or events plus the
current time supplied by the caller, and returns bytes, events and wake-up times. It never
imports trio, opens a socket or reads a clock, so the same code runs in real time over UDP
and in virtual time in a simulation of thousands of nodes.
"""
