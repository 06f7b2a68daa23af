"""Crafted hostile inputs for the fuzz/fault tests: torch files whose pickles act, zip bombs, image bombs.

Everything is built here in code (no binary fixtures): pickle opcodes are written out byte by byte, zip
archives are assembled from local headers and a central directory.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
RELEASED_CONFIG = {"model": {"params": {"use_color": True, "do_upsample": True, "do_cross": True}}}


def unicode_op(text: str) -> bytes:
    """Pickle BINUNICODE: push ``text``."""
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def global_op(module: str, name: str) -> bytes:
    """Pickle GLOBAL: push ``module.name`` (resolved by the unpickler's find_class)."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def set_attributes_op(attributes: dict[str, object]) -> bytes:
    """BUILD with state ``(None, attributes)`` on the object on top of the stack: ``setattr`` for each item."""
    ops = b"N}"
    for key, value in attributes.items():
        ops += unicode_op(key) + (b"\x88" if value is True else unicode_op(str(value))) + b"s"
    return ops + b"\x86b"


def _pickle_end(data: bytes, start: int) -> int:
    """Offset just past the pickle that starts at ``start`` in ``data``."""
    for opcode, _arg, position in pickletools.genops(io.BytesIO(data[start:])):
        if opcode.name == "STOP":
            return start + position + 1
    raise ValueError("no STOP opcode")


def insert_after_proto(pickle_bytes: bytes, ops: bytes) -> bytes:
    """``ops`` run right after the PROTO opcode of ``pickle_bytes`` (they must leave the stack as they found it)."""
    assert pickle_bytes[:1] == b"\x80"
    return pickle_bytes[:2] + ops + pickle_bytes[2:]


def legacy_torch_file(obj: object, main_pickle_ops: bytes = b"") -> bytes:
    """``torch.save(obj)`` in the legacy (non-zip) format, with ``main_pickle_ops`` injected into its main pickle."""
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=False)
    data = buffer.getvalue()
    start = 0
    for _ in range(3):  # magic number, protocol version, sys_info
        start = _pickle_end(data, start)
    return data[:start] + insert_after_proto(data[start:], main_pickle_ops)


def write_zip(entries: list[tuple[str, bytes, int, int, int]]) -> bytes:
    """A zip archive of ``(name, payload, method, crc32, uncompressed_size)`` entries, payloads written as given."""
    out = io.BytesIO()
    central = b""
    for name, payload, method, crc, size in entries:
        offset = out.tell()
        encoded = name.encode()
        out.write(
            struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc, len(payload), size, len(encoded), 0)
        )
        out.write(encoded + payload)
        central += struct.pack(
            "<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0, crc, len(payload), size, len(encoded),
            0, 0, 0, 0, 0, offset,
        ) + encoded  # fmt: skip
    directory_offset = out.tell()
    out.write(central)
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central), directory_offset, 0))
    return out.getvalue()


def stored(name: str, payload: bytes) -> tuple[str, bytes, int, int, int]:
    return (name, payload, zipfile.ZIP_STORED, zlib.crc32(payload), len(payload))


def torch_zip_with_pickle_ops(obj: object, ops: bytes) -> bytes:
    """``torch.save(obj)`` (zip format) with ``ops`` injected after the PROTO of its ``data.pkl``; stored entries."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    archive = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    entries = []
    for info in archive.infolist():
        payload = archive.read(info)
        if info.filename.endswith("/data.pkl"):
            payload = insert_after_proto(payload, ops)
        entries.append(stored(info.filename, payload))
    return write_zip(entries)


class _DeclaredStorage:
    def __init__(self, key: str, numel: int):
        self.key, self.numel = key, numel


class _DeclaredTensor:
    """Pickles as a float32 tensor of ``numel`` elements whose bytes live in zip entry ``data/<key>``."""

    def __init__(self, key: str, numel: int):
        self.storage = _DeclaredStorage(key, numel)

    def __reduce__(self):
        args = (self.storage, 0, (self.storage.numel,), (1,), False, collections.OrderedDict())
        return (torch._utils._rebuild_tensor_v2, args)


class _TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _DeclaredStorage):
            return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
        return None


def zip_bomb_checkpoint(declared_bytes: int) -> bytes:
    """A released-layout checkpoint whose one weight is a deflated run of zeros declaring ``declared_bytes``."""
    chunk_size = 16 << 20
    assert declared_bytes % chunk_size == 0
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = compressor.compress(bytes(chunk_size)) + compressor.flush(zlib.Z_FULL_FLUSH)  # history reset
    repeats = declared_bytes // chunk_size
    deflated = chunk * repeats + zlib.compressobj(9, zlib.DEFLATED, -15).flush()  # + an empty final block
    crc = 0
    zeros = bytes(chunk_size)
    for _ in range(repeats):
        crc = zlib.crc32(zeros, crc)
    buffer = io.BytesIO()
    obj = {"state_dict": {"weight": _DeclaredTensor("0", declared_bytes // 4)}, "config": RELEASED_CONFIG}
    _TorchPickler(buffer, protocol=2).dump(obj)
    return write_zip(
        [
            stored("bomb/data.pkl", buffer.getvalue()),
            stored("bomb/byteorder", b"little"),
            ("bomb/data/0", deflated, zipfile.ZIP_DEFLATED, crc, declared_bytes),
            stored("bomb/version", b"3\n"),
        ]
    )


def declared_storage_checkpoint(numel: int, entry_bytes: int) -> bytes:
    """A released-layout checkpoint whose weight declares ``numel`` float32 elements in a ``entry_bytes`` entry."""
    buffer = io.BytesIO()
    obj = {"state_dict": {"weight": _DeclaredTensor("0", numel)}, "config": RELEASED_CONFIG}
    _TorchPickler(buffer, protocol=2).dump(obj)
    return write_zip(
        [
            stored("x/data.pkl", buffer.getvalue()),
            stored("x/byteorder", b"little"),
            stored("x/data/0", bytes(entry_bytes)),
        ]
    )


def nested_lists_pickle(depth: int, state_dict_ops: bytes = b"}") -> bytes:
    """A protocol-2 pickle of ``{"state_dict": {}, "config": [[[...]]]}`` nested ``depth`` deep (no recursion)."""
    nested = b"]" * depth + b"a" * (depth - 1)
    return b"\x80\x02}" + unicode_op("state_dict") + state_dict_ops + b"s" + unicode_op("config") + nested + b"s."


def torch_zip_from_pickle(pickle_bytes: bytes) -> bytes:
    return write_zip(
        [stored("x/data.pkl", pickle_bytes), stored("x/byteorder", b"little"), stored("x/version", b"3\n")]
    )


def jpeg_bomb(width: int, height: int) -> bytes:
    """A few hundred bytes of JPEG whose SOF header claims ``width x height`` pixels."""
    ok, encoded = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))
    assert ok
    data = bytearray(encoded.tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


# A Python expression: the address space this process has mapped, in bytes (Linux).
MAPPED_BYTES = "next(int(line.split()[1]) * 1024 for line in open('/proc/self/status') if line.startswith('VmSize'))"


def peak_memory_growth(setup: str, attack: str, limit_gb: float = 8.0, timeout: float = 300) -> dict:
    """Run ``setup`` then ``attack`` in a fresh Python; peak RSS growth (MB) across ``attack`` and its outcome.

    After ``setup`` the child's address space is capped at what it has mapped plus ``limit_gb``, so a bomb that
    is not refused fails there, not here (relative to the mapped size: a CUDA build of torch maps several GB
    more at import than the CPU build, and an absolute cap fails it before the attack).
    """
    script = "\n".join(
        [
            "import json, resource",
            textwrap.dedent(setup),
            f"cap = {MAPPED_BYTES} + {int(limit_gb * 2**30)}",
            "resource.setrlimit(resource.RLIMIT_AS, (cap, cap))",
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss",
            "try:",
            textwrap.indent(textwrap.dedent(attack), "    "),
            "    outcome = 'accepted'",
            "except BaseException as error:",
            "    outcome = f'{type(error).__name__}: {error}'",
            "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss",
            "print('RESULT ' + json.dumps({'growth_mb': (after - before) / 1024, 'outcome': outcome}))",
        ]
    )

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT, env=env
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"child failed (rc {completed.returncode}):\n{completed.stdout[-2000:]}\n{completed.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT ") :])
