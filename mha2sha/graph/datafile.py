"""The output data file: bytes appended through two aligned buffers, written by a thread.

Why not ``copy_file_range`` or plain buffered writes: on Linux a buffered write of many GB
is bound by page-cache work (allocating pages, copying into them, then throttled dirty
writeback), which on the machines we measured is slower than the disk: `cp` of a 4 GB file
takes 4 to 14 s where the same bytes written with ``O_DIRECT`` take 2.5 to 3 s (see
BENCHMARKS.md). So the file is opened with ``O_DIRECT`` where the file system allows it:
the disk's DMA reads our buffers, nothing is left dirty in the page cache, and the final
``fsync`` has only metadata left to do. Where ``O_DIRECT`` is refused (tmpfs, some network
file systems), the same code writes through the page cache.

The caller fills one buffer (reading source files straight into it, or copying arrays into
it) while the thread writes the other; both release the GIL in their system calls.
"""

from __future__ import annotations

import errno
import mmap
import os
import queue
import threading

BUFFER_BYTES = 16 << 20
_ALIGN = 4096  # O_DIRECT needs block-aligned offsets, lengths and memory (512 or 4096)


class DataFile:
    """Append-only output file. ``append(bytes)`` / ``append_from(fd, offset, length)`` return
    the offset the bytes land at; ``close()`` waits for the thread, fsyncs, closes."""

    def __init__(self, path: os.PathLike | str, *, buffer_bytes: int = BUFFER_BYTES, direct: bool = True):
        if buffer_bytes % _ALIGN:
            raise ValueError("buffer_bytes must be a multiple of 4096")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
        self.direct = False
        self.fd = -1
        if direct and hasattr(os, "O_DIRECT"):
            try:
                self.fd = os.open(path, flags | os.O_DIRECT, 0o644)
                self.direct = True
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                    raise
        if self.fd < 0:
            self.fd = os.open(path, flags, 0o644)
        self.position = 0  # bytes appended so far (the file's final size)
        self.written = 0  # bytes the thread has written (progress)
        self._size = buffer_bytes
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        self._full: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(2):
            self._free.put(mmap.mmap(-1, buffer_bytes))  # page-aligned anonymous memory
        self._buffer: mmap.mmap | None = None
        self._filled = 0
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._drain, name="mha2sha-data-writer", daemon=True)
        self._thread.start()

    # -- the caller's side --------------------------------------------------------------
    def append(self, data) -> int:
        """Append a bytes-like object (or a C-contiguous array); returns its offset."""
        start = self.position
        view = memoryview(data).cast("B")
        while view:
            room = self._room()
            n = min(room, len(view))
            self._buffer[self._filled:self._filled + n] = view[:n]
            self._advance(n)
            view = view[n:]
        return start

    def append_from(self, fd: int, offset: int, length: int) -> int:
        """Append ``length`` bytes of file ``fd`` from ``offset``, read straight into the buffer."""
        start = self.position
        while length:
            room = self._room()
            n = min(room, length)
            target = memoryview(self._buffer)[self._filled:self._filled + n]
            got = 0
            while got < n:
                k = os.preadv(fd, [target[got:]], offset + got)
                if k <= 0:
                    raise OSError(errno.EIO, f"source file ended {length - got} bytes early")
                got += k
            target.release()
            self._advance(n)
            offset += n
            length -= n
        return start

    def close(self) -> None:
        """Write what is left, set the exact size, fsync. Raises the thread's error if any."""
        if self._closed:
            return
        try:
            if self._buffer is not None and self._filled:
                self._hand_over(self._buffer, self._filled)
                self._buffer = None
        finally:
            self._stop_thread()
        try:
            self._raise_if_failed()
            os.ftruncate(self.fd, self.position)  # a direct write padded the last block
            os.fsync(self.fd)
        finally:
            os.close(self.fd)

    def abort(self) -> None:
        """Stop without finishing (the caller discards the file)."""
        if self._closed:
            return
        self._stop_thread()
        os.close(self.fd)

    def _stop_thread(self) -> None:
        self._closed = True
        self._full.put(None)
        self._thread.join()
        self._buffer = None

    def __enter__(self) -> DataFile:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _room(self) -> int:
        if self._buffer is None:
            self._raise_if_failed()
            self._buffer = self._free.get()
            self._filled = 0
        return self._size - self._filled

    def _advance(self, n: int) -> None:
        self._filled += n
        self.position += n
        if self._filled == self._size:
            self._hand_over(self._buffer, self._filled)
            self._buffer = None

    def _hand_over(self, buffer: mmap.mmap, n: int) -> None:
        self._raise_if_failed()
        self._full.put((buffer, n))

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    # -- the thread's side --------------------------------------------------------------
    def _drain(self) -> None:
        while True:
            item = self._full.get()
            if item is None:
                return
            buffer, n = item
            try:
                if self._error is None:
                    self._write(buffer, n)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                self._error = exc
            finally:
                self._free.put(buffer)  # the caller never waits forever, even after an error

    def _write(self, buffer: mmap.mmap, n: int) -> None:
        length = n
        if self.direct and n % _ALIGN:
            length = n + (_ALIGN - n % _ALIGN)  # the tail block, padded (cut off by close)
            buffer[n:length] = bytes(length - n)
        view = memoryview(buffer)[:length]
        try:
            while view:
                try:
                    k = os.write(self.fd, view)
                except OSError as exc:
                    if not (self.direct and exc.errno == errno.EINVAL and self.written == 0):
                        raise
                    self._stop_direct()  # accepted at open, refused at write: write buffered
                    continue
                self.written += k
                view = view[k:]
                if view and self.direct and k % _ALIGN:
                    self._stop_direct()  # a short, unaligned write: the rest cannot be direct
        finally:
            view.release()

    def _stop_direct(self) -> None:
        import fcntl

        fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
        self.direct = False
