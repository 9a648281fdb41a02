"""A SunSpec unit over a Modbus link: model discovery, point reads and writes by name.

Theory of operation
-------------------
On first use the unit reads the ``SunS`` marker at 40000 and walks the model chain
(``ID``, ``L``, skip ``L``) to learn which models the device has and where: addresses are
never assumed, so a real device with other models in between works too. Scale factors
(``*_SF`` points) are read once per connection and cached; the chain and the cache are
forgotten when the link reconnects.

``read_block(model, first, last)`` reads the registers from point ``first`` to the end of
``last`` in one request and returns a ``Block`` that decodes any point inside it. A unit
that lacks a model raises ``DeviceFault(NOT_SUPPORTED)`` naming it.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from hardware.interfaces import DeviceFault, FaultKind
from hardware.modbus.link import ModbusLink
from hardware.modbus.registers import (
    MAX_READ_REGS,
    MODELS,
    SUNS_MARKER,
    SUNSPEC_BASE,
    Point,
    RegisterError,
    decode,
    encode,
)

MAX_MODELS = 64  # a chain longer than this is garbage, not a device


@attrs.frozen
class Block:
    """Registers read from one model, from the point at ``first_offset`` on."""

    model_id: int
    first_offset: int
    regs: tuple[int, ...]
    scale: dict[str, int]

    def get(self, name: str) -> float | int | str | None:
        p = MODELS[self.model_id].point(name)
        i = p.offset - self.first_offset
        if i < 0 or i + p.size > len(self.regs):
            raise KeyError(f"point {name} outside the block read")
        sf = self.scale.get(p.sf, 0) if p.sf else 0
        return decode(p, self.regs[i:i + p.size], sf)


@attrs.define(eq=False)
class SunSpecUnit:
    link: ModbusLink
    unit_id: int | None = None  # None: the link URL's unit; else another unit on the same line
    _models: dict[int, int] | None = attrs.field(init=False, default=None)  # id -> address of ID
    _scale: dict[int, dict[str, int]] = attrs.field(init=False, factory=dict)
    _connects_seen: int = attrs.field(init=False, default=-1)

    @property
    def url(self) -> str:
        if self.unit_id is None or self.unit_id == self.link.url.unit:
            return str(self.link.url)
        return f"{self.link.url} (unit {self.unit_id})"

    async def _read(self, address: int, count: int) -> list[int]:
        return await self.link.read_registers(address, count, self.unit_id)

    def _bad(self, message: str) -> DeviceFault:
        return DeviceFault(FaultKind.BAD_FRAME, message, self.url)

    async def models(self) -> dict[int, int]:
        """Model id -> address of its ID register (discovered once per connection)."""
        if self._models is not None and self._connects_seen == self.link.statistics().connects:
            return self._models
        marker = await self._read(SUNSPEC_BASE, 2)
        if tuple(marker) != SUNS_MARKER:
            raise DeviceFault(FaultKind.NOT_SUPPORTED, f"no SunSpec marker at {SUNSPEC_BASE} (read {marker})", self.url)
        found: dict[int, int] = {}
        addr = SUNSPEC_BASE + 2
        for _ in range(MAX_MODELS):
            mid, length = await self._read(addr, 2)
            if mid == 0xFFFF:
                break
            if mid in MODELS and MODELS[mid].length != length:
                raise self._bad(f"model {mid} at {addr} has length {length}, expected {MODELS[mid].length}")
            found[mid] = addr
            addr += 2 + length
        else:
            raise self._bad("SunSpec model chain does not end")
        self._models, self._scale = found, {}
        self._connects_seen = self.link.statistics().connects
        return found

    async def require(self, model_id: int, what: str) -> int:
        models = await self.models()
        if model_id not in models:
            have = ", ".join(str(m) for m in models) or "none"
            raise DeviceFault(FaultKind.NOT_SUPPORTED, f"unit has no SunSpec model {model_id} ({what}); models: {have}",
                              self.url)
        return models[model_id]

    async def scale_factors(self, model_id: int) -> dict[str, int]:
        if model_id in self._scale:
            return self._scale[model_id]
        model = MODELS[model_id]
        sfs = [p for p in model.points if p.type == "sunssf"]
        out: dict[str, int] = {}
        if sfs:
            start = await self.require(model_id, model.label)
            first, last = sfs[0].offset, sfs[-1].offset
            regs = await self._read(start + first, last - first + 1)
            for p in sfs:
                v = decode(p, regs[p.offset - first:p.offset - first + 1])
                if v is None:
                    continue  # not implemented: so are the points it scales
                if not -10 <= int(v) <= 10:
                    raise DeviceFault(FaultKind.OUT_OF_RANGE, f"model {model_id} scale factor {p.name} = {v}", self.url)
                out[p.name] = int(v)
        self._scale[model_id] = out
        return out

    async def read_block(self, model_id: int, first: str, last: str) -> Block:
        model = MODELS[model_id]
        start = await self.require(model_id, model.label)
        p0, p1 = model.point(first), model.point(last)
        count = p1.offset + p1.size - p0.offset
        if not 0 < count <= MAX_READ_REGS:
            raise ValueError(f"{first}..{last} is {count} registers")
        needs_sf = any(p.sf for p in model.points[model.points.index(p0):model.points.index(p1) + 1])
        scale = await self.scale_factors(model_id) if needs_sf else {}
        regs = await self._read(start + p0.offset, count)
        return Block(model_id, p0.offset, tuple(regs), scale)

    async def read_model(self, model_id: int) -> dict[str, float | int | str | None]:
        """Every point of a model (for ``meshagent read``), scaled, in as few reads as needed."""
        points = await self.read_model_points(model_id)
        return {name: value for name, (_, _, value) in points.items()}  # type: ignore[misc]

    async def read_model_points(self, model_id: int) -> dict[str, tuple[Point, object, object]]:
        """Every point of a model: (point, raw value as on the wire, scaled value).

        The raw value is the register's integer (or string) before its scale factor, None
        when SunSpec's not-implemented; a point that does not decode has its error as text.
        """
        model = MODELS[model_id]
        start = await self.require(model_id, model.label)
        scale = await self.scale_factors(model_id)
        total = model.length + 2
        regs: list[int] = []
        while len(regs) < total:
            regs += await self._read(start + len(regs), min(MAX_READ_REGS, total - len(regs)))
        out: dict[str, tuple[Point, object, object]] = {}
        for p in model.points:
            if p.type == "pad":
                continue
            chunk = regs[p.offset:p.offset + p.size]
            try:
                raw = decode(p, chunk)
                value = decode(p, chunk, scale.get(p.sf, 0) if p.sf else 0)
            except RegisterError as exc:
                out[p.name] = (p, None, f"<{exc}>")
                continue
            out[p.name] = (p, raw, value)
        return out

    async def write_point(self, model_id: int, name: str, value: object) -> None:
        model = MODELS[model_id]
        start = await self.require(model_id, model.label)
        p = model.point(name)
        sf = (await self.scale_factors(model_id)).get(p.sf, 0) if p.sf else 0
        try:
            regs = encode(p, value, sf)
        except RegisterError as exc:
            raise DeviceFault(FaultKind.OUT_OF_RANGE, str(exc), self.url) from None
        await self.link.write_registers(start + p.offset, regs, self.unit_id)

    async def write_run(self, model_id: int, values: Sequence[tuple[str, object]]) -> None:
        """Write adjacent points in one request, in order (a command and its trigger arrive
        together, so the device never sees one without the other)."""
        model = MODELS[model_id]
        start = await self.require(model_id, model.label)
        first = model.point(values[0][0]).offset
        scale = await self.scale_factors(model_id) if any(model.point(n).sf for n, _ in values) else {}
        regs: list[int] = []
        for name, value in values:
            p = model.point(name)
            if p.offset != first + len(regs):
                raise ValueError(f"model {model_id}: point {name} does not follow the one before it")
            try:
                regs += encode(p, value, scale.get(p.sf, 0) if p.sf else 0)
            except RegisterError as exc:
                raise DeviceFault(FaultKind.OUT_OF_RANGE, str(exc), self.url) from None
        await self.link.write_registers(start + first, regs, self.unit_id)

    async def write_points(self, model_id: int, values: Sequence[tuple[str, object]]) -> None:
        for name, value in values:
            await self.write_point(model_id, name, value)
