"""A consumer of a BPF ring buffer map that reads records straight from its mmap.

Owns the ring buffer protocol on the user side: the consumer position page (read-write), the
producer position page and the data area (read-only, mapped twice by the kernel so a record
that wraps is contiguous). Reading here costs a struct unpack per record instead of bcc's
ctypes callback per record (about 5 µs each), which is what lets one core keep up with the
kernel. It hands out (buffer, offset, length) triples and never interprets a record.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable

_BUSY = 1 << 31
_DISCARD = 1 << 30
_HDR = 8  # u32 len (with the busy and discard bits), u32 page offset
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


class RingBuffer:
    def __init__(self, map_fd: int, size: int) -> None:
        if size & (size - 1):
            raise ValueError(f"ring buffer size {size} is not a power of two")
        page = mmap.PAGESIZE
        self.size = size
        self._mask = size - 1
        self._data = page  # offset of the data area inside the producer mapping
        self._cons = mmap.mmap(
            map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0
        )
        self._prod = mmap.mmap(
            map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
        )
        self.fd = map_fd

    @property
    def buffer(self) -> mmap.mmap:
        return self._prod

    def pending_bytes(self) -> int:
        return _U64.unpack_from(self._prod, 0)[0] - _U64.unpack_from(self._cons, 0)[0]

    def drain(self, handle: Callable[[mmap.mmap, int, int], None], limit: int = 4096) -> int:
        """Pass up to ``limit`` committed records to ``handle(buf, offset, length)``.

        The consumer position moves past them only after all were handled, so a record is
        never overwritten while it is being read. Returns the number of records seen.
        """
        prod_map = self._prod
        cons = _U64.unpack_from(self._cons, 0)[0]
        prod = _U64.unpack_from(prod_map, 0)[0]
        n = 0
        unpack_u32 = _U32.unpack_from
        mask, data = self._mask, self._data
        while cons < prod and n < limit:
            off = data + (cons & mask)
            hlen = unpack_u32(prod_map, off)[0]
            if hlen & _BUSY:
                break  # reserved but not yet committed: stop here, keep order
            length = hlen & ~(_BUSY | _DISCARD)
            if not hlen & _DISCARD:
                handle(prod_map, off + _HDR, length)
                n += 1
            cons += (length + _HDR + 7) & ~7
        _U64.pack_into(self._cons, 0, cons)
        return n

    def close(self) -> None:
        self._cons.close()
        self._prod.close()
