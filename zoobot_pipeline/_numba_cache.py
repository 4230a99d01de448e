"""numba kernels compiled where the package is installed, and loaded from there by every process, read-only.

:func:`cached_njit` is ``numba.njit(cache=True)`` with two additions. Its file cache reads, after numba's own
locations, the kernels compiled into the installed package; and it lists the kernel with the argument types the package
calls it with. :func:`compile_kernels` (``zoobot-pipeline kernels compile``, run by ``make install`` and the container
build) compiles every listed kernel for those types into ``__pycache__`` beside its module: numba's in-tree cache, for
this machine's CPU.

At run time numba's locations come first, in numba's order, and take whatever is compiled later: ``NUMBA_CACHE_DIR``
when set; else ``__pycache__`` when writable; else the user-wide cache. Then the package's ``__pycache__`` is read,
read-only. So a site-packages owned by root, or a read-only image, loads the kernels without compiling (5-10 s per
module on 2 cores) and without writing; where nothing at all is writable, numba alone would refuse ``cache=True`` at
import, and here the kernels compile for the process instead. numba keys each entry by the module's source, numba's
version and the CPU (``NUMBA_CPU_NAME``: a portable cache): an entry that does not match is ignored.

This rests on numba's caching classes (``numba.core.caching``, numba pinned in the constraints) and on the
dispatcher's cache attribute, which ``cache=True`` sets the same way; ``tests/test_kernels.py`` checks both.
"""

from __future__ import annotations

import errno
import inspect
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from numba import jit, njit
from numba.core.caching import (
    CacheImpl,
    CompileResultCacheImpl,
    FunctionCache,
    IndexDataCacheFile,
    InTreeCacheLocator,
)

__all__ = ["KernelCache", "cached_njit", "compile_kernels", "kernels"]

_KERNELS: list[tuple[Any, tuple[tuple[Any, ...], ...]]] = []


class _ShippedLocator(InTreeCacheLocator):
    """numba's in-tree location, ``__pycache__`` beside the source, taken without numba's write check: for reading."""

    @classmethod
    def from_function(cls, py_func: Callable[..., Any], py_file: str) -> _ShippedLocator:
        return cls(py_func, py_file)


class _RunTimeCacheImpl(CompileResultCacheImpl):
    # numba's writable locations first; where none is writable, the shipped cache, read-only
    _locator_classes = [*CacheImpl._locator_classes, _ShippedLocator]


class _InTreeCacheImpl(CompileResultCacheImpl):
    _locator_classes = [InTreeCacheLocator]


class KernelCache(FunctionCache):
    """numba's file cache (what ``cache=True`` installs) that also loads the shipped cache, read-only."""

    _impl_class = _RunTimeCacheImpl

    def __init__(self, py_func: Callable[..., Any]) -> None:
        super().__init__(py_func)
        shipped = _ShippedLocator(py_func, inspect.getfile(py_func))
        self._shipped = None
        if os.path.normpath(shipped.get_cache_path()) != os.path.normpath(self.cache_path):
            self._shipped = IndexDataCacheFile(shipped.get_cache_path(), self._impl.filename_base,
                                               shipped.get_source_stamp())

    def _load_overload(self, sig: Any, target_context: Any) -> Any:
        data = super()._load_overload(sig, target_context)
        if data is None and self._enabled and self._shipped is not None:
            try:
                data = self._shipped.load(self._index_key(sig, target_context.codegen()))
            except OSError:  # an unreadable shipped cache is no cache
                return None
            if data is not None:
                data = self._impl.rebuild(target_context, data)
        return data

    def _save_overload(self, sig: Any, data: Any) -> None:
        if not isinstance(self._impl.locator, _ShippedLocator):  # nowhere writable: compiled for this process only
            super()._save_overload(sig, data)


class _InTreeCache(FunctionCache):
    """numba's in-tree cache alone: where :func:`compile_kernels` writes."""

    _impl_class = _InTreeCacheImpl


def cached_njit(signatures: Sequence[tuple[Any, ...]], **options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit(cache=True, **options)`` with :class:`KernelCache`; ``signatures`` are the argument types (tuples
    of numba types) the package calls the kernel with: what :func:`compile_kernels` compiles. Other types still
    compile when first called."""

    def decorate(function: Callable[..., Any]) -> Any:
        dispatcher = njit(**options)(function)
        dispatcher._cache = KernelCache(dispatcher.py_func)  # as njit(cache=True) sets numba's FunctionCache
        _KERNELS.append((dispatcher, tuple(signatures)))
        return dispatcher

    return decorate


def kernels() -> list[tuple[Any, tuple[tuple[Any, ...], ...]]]:
    """Every kernel made with :func:`cached_njit` in the modules imported so far, with its signatures."""
    return list(_KERNELS)


def compile_kernels() -> list[tuple[str, str, Path]]:
    """Compile every kernel of :func:`kernels` for its signatures into ``__pycache__`` beside its module, for this
    machine's CPU (an up-to-date entry there is kept). Returns ``(module.kernel, "compiled" or "up to date",
    folder)`` per kernel; ``PermissionError`` names a folder that cannot be written."""
    done = []
    for kernel, signatures in kernels():
        folder = Path(inspect.getfile(kernel.py_func)).with_name("__pycache__")
        folder.mkdir(exist_ok=True)
        fresh = jit(**kernel.targetoptions)(kernel.py_func)  # no overloads yet: each one is loaded or compiled
        try:
            fresh._cache = _InTreeCache(kernel.py_func)
        except RuntimeError:  # numba found no writable locator
            raise PermissionError(errno.EACCES, "cannot write the compiled kernels into this folder; compile them as "
                                  "the user who installed the package", str(folder)) from None
        if Path(fresh.stats.cache_path) != folder:
            raise ValueError(f"NUMBA_CACHE_LOCATOR_CLASSES sends numba's cache to {fresh.stats.cache_path}, not "
                             f"{folder}: unset it to compile the kernels into the package")
        for signature in signatures:
            fresh.compile(signature)
        how = "compiled" if fresh.stats.cache_misses else "up to date"
        done.append((f"{kernel.py_func.__module__}.{kernel.__name__}", how, folder))
    return done
