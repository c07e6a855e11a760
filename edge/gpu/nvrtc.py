"""CUDA C++ source -> cubin through NVRTC (ctypes on libnvrtc; no pycuda, no nvcc), cached on disk.

NVRTC is the runtime compiler library of the CUDA toolkit (libnvrtc.so.12 or .13; docs/gpu.md section 6
says which JetPack ships which). It is searched on the loader path, then under $CUDA_HOME, $CUDA_PATH and
/usr/local/cuda. A cubin is compiled for the exact SM of the device, so nothing is JIT-compiled by the
driver, and it is kept in the cache directory ($EDGE_CACHE/kernels, default ~/.cache/edge/kernels) under a
key of (source, options, SM): the library is needed only the first time a kernel is built on a board; later
starts read the cubin and need neither NVRTC nor nvcc. A newer driver loads an older cubin; one the driver
refuses (a downgraded driver, a damaged file) is compiled again. The cache directory is made 0700 and used
only while it is this user's and no one else can write to it (edge.files.check_private_dir): whoever can
put a cubin there chooses the code edge runs on the GPU. A cached file is read only as a regular file, not
through a link, of at most MAX_CUBIN_BYTES; anything else there is compiled again and replaced. A cache
directory that cannot be made, or that is not private, costs a compile per process, with a warning.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import os
import stat
import threading
from collections.abc import Sequence
from pathlib import Path

from edge import files
from edge.errors import EngineError
from edge.log import get_logger

log = get_logger("nvrtc")
_LIBRARY_NAMES = ("libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12")
MAX_CUBIN_BYTES = 1 << 20       # the letterbox cubin is 47 to 79 kB (docs/gpu.md section 3): more is not one
_compile_lock = threading.Lock()


def default_kernel_cache() -> Path:
    """$EDGE_CACHE/kernels (default ~/.cache/edge/kernels)."""
    return files.default_cache_dir() / "kernels"


def _candidates() -> list[str]:
    found = ctypes.util.find_library("nvrtc")
    names = [found] if found else []
    names += list(_LIBRARY_NAMES)
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    for root in filter(None, roots):
        for lib in ("lib64", "lib"):
            names += [str(Path(root, lib, name)) for name in _LIBRARY_NAMES]
    return names


@functools.cache
def library() -> ctypes.CDLL:
    """libnvrtc, loaded once; EngineError naming every place tried when it is not there."""
    tried = _candidates()
    for name in tried:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        _declare(lib)
        return lib
    raise EngineError("the GPU preprocessing kernel must be compiled but NVRTC (libnvrtc) was not found",
                      note=f"tried {', '.join(tried)}",
                      hint="install the CUDA runtime compiler library (JetPack 6: apt install cuda-nvrtc-12-6;"
                           " it is part of nvidia-jetpack), or set CUDA_HOME to the CUDA toolkit")


def _declare(lib: ctypes.CDLL) -> None:
    ptr, size, cstr = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p
    signatures = {
        "nvrtcVersion": [ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)],
        "nvrtcCreateProgram": [ctypes.POINTER(ptr), cstr, cstr, ctypes.c_int, ctypes.POINTER(cstr),
                               ctypes.POINTER(cstr)],
        "nvrtcCompileProgram": [ptr, ctypes.c_int, ctypes.POINTER(cstr)],
        "nvrtcGetProgramLogSize": [ptr, ctypes.POINTER(size)],
        "nvrtcGetProgramLog": [ptr, ctypes.c_char_p],
        "nvrtcGetCUBINSize": [ptr, ctypes.POINTER(size)],
        "nvrtcGetCUBIN": [ptr, ctypes.c_char_p],
        "nvrtcDestroyProgram": [ctypes.POINTER(ptr)],
    }
    for name, args in signatures.items():
        getattr(lib, name).argtypes = args
        getattr(lib, name).restype = ctypes.c_int
    lib.nvrtcGetErrorString.argtypes = [ctypes.c_int]
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p


def version() -> str:
    """NVRTC's version, e.g. '12.6'."""
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(library().nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    return f"{major.value}.{minor.value}"


_COMPILE_HINT = ("'invalid value for --gpu-architecture' means this NVRTC is older than the GPU: use the CUDA"
                 " toolkit that matches the driver; any other error is in the kernel source")


def _check(status: int, call: str, log_text: str = "", hint: str | None = None) -> None:
    if status != 0:
        what = library().nvrtcGetErrorString(status).decode(errors="replace")
        raise EngineError(f"{call} failed: {what}", note=log_text.strip()[-2000:] or None, hint=hint)


def cache_key(source: str, options: Sequence[str], arch: str) -> str:
    """sha256 of what the cubin is made from (the compiler's version aside: see the module doc)."""
    digest = hashlib.sha256()
    for part in (source, "\0".join(options), arch):
        digest.update(part.encode())
        digest.update(b"\x1f")
    return digest.hexdigest()


def cubin(source: str, name: str, *, arch: str, options: Sequence[str] = (), cache_dir: Path | None = None,
          refresh: bool = False) -> bytes:
    """The cubin of `source` for `arch` ('sm_87'), from the cache or compiled (then cached).

    `refresh` compiles even when cached (a cached file that the driver refused)."""
    cache_dir = default_kernel_cache() if cache_dir is None else cache_dir
    with _compile_lock:
        path = cache_dir / f"{name}-{cache_key(source, options, arch)[:24]}.cubin"
        usable = _usable_cache(cache_dir)
        cached = _read_cached(path) if usable and not refresh else None
        if cached is not None:
            return cached
        binary = compile_cubin(source, name, [f"--gpu-architecture={arch}", *options])
        if usable:
            _store(path, binary)
        return binary


def _usable_cache(cache_dir: Path) -> bool:
    """Make the cache directory (0700) where it is missing; False, with a warning, where it cannot be made or
    another user could change it: then its cubins are neither read nor written."""
    try:
        cache_dir.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass                            # a directory, or something check_private_dir refuses below
    except OSError as exc:
        log.warning("kernel cache %s not writable (%s): the kernel is compiled again by the next process",
                    cache_dir, exc)
        return False
    try:
        files.check_private_dir(cache_dir, "kernel cache directory", owners=(os.geteuid(),))
    except (OSError, files.NotPrivate) as exc:
        what = exc.what if isinstance(exc, files.NotPrivate) else f"kernel cache directory {cache_dir}: {exc}"
        log.warning("%s", EngineError(
            f"{what}; its cubins are not used, so the kernel is compiled by every process (NVRTC needed each time)",
            note=_owner_and_mode(cache_dir),
            hint=f"make it a plain directory of this user's alone (chown {os.geteuid()} {cache_dir} && chmod 700"
                 f" {cache_dir}), or set EDGE_CACHE to a directory of this user's (kernels go to $EDGE_CACHE/kernels)"
        ).render())
        return False
    return True


def _owner_and_mode(path: Path) -> str | None:
    try:
        info = path.lstat()
    except OSError:
        return None
    return f"owner uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o}"


def _read_cached(path: Path) -> bytes | None:
    """The cached cubin; None where there is none, or what is there is not one (a link, a FIFO, a file over
    MAX_CUBIN_BYTES): that is compiled again and replaced, with a warning."""
    try:
        return files.read_regular(path, MAX_CUBIN_BYTES, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except files.FileTooLarge as exc:
        problem = f"is larger than {MAX_CUBIN_BYTES} bytes ({exc})"
    except files.NotRegularFile as exc:
        problem = str(exc)
    except OSError as exc:
        problem = f"cannot be read ({exc.strerror})"
    log.warning("cached kernel %s %s: it is compiled again and replaced", path, problem)
    return None


def compile_cubin(source: str, name: str, options: Sequence[str]) -> bytes:
    """Compile with NVRTC now; EngineError with the compiler log on failure."""
    lib = library()
    program = ctypes.c_void_p()
    _check(lib.nvrtcCreateProgram(ctypes.byref(program), source.encode(), f"{name}.cu".encode(), 0, None, None),
           "nvrtcCreateProgram")
    try:
        args = (ctypes.c_char_p * len(options))(*(o.encode() for o in options))
        status = lib.nvrtcCompileProgram(program, len(options), args)
        _check(status, f"NVRTC compile of {name} ({' '.join(options)})", _program_log(lib, program), _COMPILE_HINT)
        size = ctypes.c_size_t()
        _check(lib.nvrtcGetCUBINSize(program, ctypes.byref(size)), "nvrtcGetCUBINSize")
        buffer = ctypes.create_string_buffer(size.value)
        _check(lib.nvrtcGetCUBIN(program, buffer), "nvrtcGetCUBIN")
        return buffer.raw
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(program))


def _program_log(lib: ctypes.CDLL, program: ctypes.c_void_p) -> str:
    size = ctypes.c_size_t()
    if lib.nvrtcGetProgramLogSize(program, ctypes.byref(size)) != 0 or size.value <= 1:
        return ""
    buffer = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(program, buffer)
    return buffer.value.decode(errors="replace")


def _store(path: Path, binary: bytes) -> None:
    """Write atomically (edge.files.atomic_path), so a reader never sees half a cubin."""
    try:
        with files.atomic_path(path) as tmp:
            tmp.write_bytes(binary)
    except OSError as exc:
        log.warning("kernel cache %s not writable (%s): the kernel is compiled again by the next process",
                    path.parent, exc)
