"""A consumer of a BPF ring buffer map that reads records straight from its mmap.

Owns the ring buffer protocol on the user side: the consumer position page (read-write), the
producer position page and the data area (read-only, mapped twice by the kernel so a record
that wraps is contiguous). Reading here costs a struct unpack per record instead of bcc's
ctypes callback per record (several times dearer: bench/README.md), which is what lets one
core keep up with the kernel. It hands out (buffer, offset, length) triples and never
interprets a record.

The two positions are u64 words the kernel reads and writes with single loads and stores, so
they are accessed here through ``memoryview.cast("Q")`` (one aligned 8-byte access), never
``struct``: ``struct.pack_into("<Q")`` writes byte by byte, and a kernel that read the
consumer position half-written could see a ring that looks full and drop a record.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable

# Each record starts with an 8-byte header: u32 length, whose bit 31 says "busy" (reserved,
# not yet committed) and bit 30 "discarded", then a u32 page offset. Records are 8-aligned.


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
        self._cons_pos = memoryview(self._cons).cast("Q")  # [0]: consumer position
        self._prod_pos = memoryview(self._prod).cast("Q")  # [0]: producer position
        self._words = memoryview(self._prod).cast("I")  # record headers, by offset // 4

    @property
    def buffer(self) -> mmap.mmap:
        return self._prod

    def drain(self, handle: Callable[[mmap.mmap, int, int], None], limit: int = 4096) -> int:
        """Pass up to ``limit`` committed records to ``handle(buf, offset, length)``.

        The consumer position moves past them only after all were handled, so a record is
        never overwritten while it is being read. Returns the number of records seen.
        """
        prod_map = self._prod
        words = self._words
        cons = self._cons_pos[0]
        prod = self._prod_pos[0]
        n = 0
        mask, data = self._mask, self._data
        # Literals, not named constants: this loop runs 150,000 times a second.
        while cons < prod and n < limit:
            off = data + (cons & mask)
            hlen = words[off >> 2]
            if hlen & 0x80000000:  # busy
                break  # reserved but not yet committed: stop here, keep order
            length = hlen & 0x3FFFFFFF
            if not hlen & 0x40000000:  # not discarded
                handle(prod_map, off + 8, length)  # the record after its 8-byte header
                n += 1
            cons += (length + 8 + 7) & ~7
        self._cons_pos[0] = cons
        return n

    def close(self) -> None:
        self._cons_pos.release()
        self._prod_pos.release()
        self._words.release()
        self._cons.close()
        self._prod.close()
