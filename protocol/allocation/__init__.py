"""Consensus-light discharge allocation: the pure plan, PLAN/ACK messages, sans-IO cores."""

from protocol.allocation import messages as messages  # registers PLAN (0x40) and ACK (0x41)
