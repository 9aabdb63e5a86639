"""Bookkeeping of the paged KV cache: which token slots and table rows are free.

Page size is one token (as in SGLang): a slot is one position in every layer's K and V
buffers. The tensors themselves live in the model runner (`runner/kv_pool.py`); this module
only hands out integers, so the scheduler can be tested without torch.
"""

from __future__ import annotations

from dataclasses import dataclass


class OutOfSlots(RuntimeError):
    """Raised when more slots are asked for than are free; callers check first."""


@dataclass(slots=True)
class KVUsage:
    num_total: int
    num_free: int
    num_used: int

    @property
    def usage(self) -> float:
        return self.num_used / self.num_total if self.num_total else 0.0


class KVCacheManager:
    """Free lists of token slots and of request rows.

    Invariant (checked by `check_integrity`): every slot is either free or owned by exactly
    one live request; the same holds for rows.
    """

    def __init__(self, num_slots: int, num_rows: int) -> None:
        if num_slots < 2 or num_rows < 1:
            raise ValueError(f"KV cache too small: {num_slots} slots, {num_rows} rows")
        self.num_slots = num_slots
        self.num_rows = num_rows
        # Popping from the end hands out low slot numbers first, which keeps tests readable.
        self._free_slots: list[int] = list(range(num_slots - 1, -1, -1))
        self._free_rows: list[int] = list(range(num_rows - 1, -1, -1))

    @property
    def num_free_slots(self) -> int:
        return len(self._free_slots)

    @property
    def num_free_rows(self) -> int:
        return len(self._free_rows)

    def usage(self) -> KVUsage:
        free = len(self._free_slots)
        return KVUsage(self.num_slots, free, self.num_slots - free)

    def alloc_slots(self, n: int) -> list[int]:
        if n > len(self._free_slots):
            raise OutOfSlots(f"asked for {n} slots, {len(self._free_slots)} free")
        if n == 0:
            return []
        taken = self._free_slots[-n:]
        del self._free_slots[-n:]
        taken.reverse()
        return taken

    def free_slots(self, slots: list[int]) -> None:
        self._free_slots.extend(reversed(slots))

    def alloc_row(self) -> int:
        if not self._free_rows:
            raise OutOfSlots("no free request rows")
        return self._free_rows.pop()

    def free_row(self, row: int) -> None:
        self._free_rows.append(row)

    def check_integrity(self, live_slots: list[list[int]], live_rows: list[int]) -> None:
        """Assert free + in use == total, with no slot or row counted twice."""
        seen = set(self._free_slots)
        if len(seen) != len(self._free_slots):
            raise AssertionError("a slot is on the free list twice")
        for slots in live_slots:
            for slot in slots:
                if slot in seen:
                    raise AssertionError(f"slot {slot} is both free and in use (or used twice)")
                seen.add(slot)
        if seen != set(range(self.num_slots)):
            missing = self.num_slots - len(seen)
            raise AssertionError(f"{missing} slots leaked: neither free nor owned")
        rows = set(self._free_rows)
        if len(rows) != len(self._free_rows) or rows & set(live_rows):
            raise AssertionError("a request row is free and in use at once")
        if len(rows) + len(live_rows) != self.num_rows:
            raise AssertionError("request rows leaked")
