"""The allocation's trio shell (see ``meshagent.allocation.service``)."""
