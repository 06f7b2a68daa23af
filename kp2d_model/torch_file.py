"""Read ``torch.save`` files (zip and legacy formats) without torch's loader: a strict pickle grammar.

Nothing in the file can act while it is read. The pickle is run by a pure-Python unpickler whose opcodes
are restricted, not just its names:

* globals: only ``collections.OrderedDict``, ``builtins.set``/``frozenset``, ``yacs.config.CfgNode`` (read as a
  plain dict, :class:`ConfigNode`), ``torch._utils._rebuild_tensor_v2``/``_rebuild_parameter`` and the
  ``torch.<Type>Storage`` names. Each resolves to an object of this module, never to torch's own function,
  so nothing of torch can be renamed or patched by the file;
* REDUCE only calls those rebuild functions, ``OrderedDict``, ``set`` and ``frozenset``; NEWOBJ only creates
  ``OrderedDict`` / ``ConfigNode``; BUILD only on an ``OrderedDict`` or ``ConfigNode`` with a dict state (kept as
  data, never applied as attributes); SETITEM(S) only on dicts, APPEND(S) only on lists, ADDITEMS only on sets;
  INST, OBJ, NEWOBJ_EX and the extension-registry opcodes are refused;
* persistent ids: only ``('storage', <StorageType>, key, location, numel)`` (legacy: plus ``view_metadata``
  ``None``); the storage bytes are read by this module and checked against the declared element count;
* sizes are checked before anything is allocated: the file, the pickle and each storage are bounded, zip
  entries must be stored uncompressed (``torch.save`` never compresses) and lie inside the file.

Every failure raises :class:`TorchFileError` (a ``ValueError``) with the reason; callers add the path.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from typing import Any

import torch

__all__ = [
    "MAX_FILE_BYTES",
    "MAX_PICKLE_BYTES",
    "MAX_STORAGE_BYTES",
    "ConfigNode",
    "TorchFileError",
    "read_torch_file",
]

# Bounds from what the networks need: the largest network (KeypointResnet) holds 70 MB of weights, its
# largest tensor 9.4 MB; a trainer file holds the network, the IO-net, Adam's two moments of each and small
# RNG/scheduler state: ~215 MB. Anything far beyond that is not a checkpoint of this project.
MAX_FILE_BYTES = 320 * 2**20
MAX_STORAGE_BYTES = 64 * 2**20
MAX_PICKLE_BYTES = 16 * 2**20

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class TorchFileError(ValueError):
    """A torch file refused by the strict reader (the message says why)."""


class ConfigNode(dict):
    """Stand-in for ``yacs.config.CfgNode``: a plain dict; the pickled BUILD state is kept as data, never run."""

    pickled_state: Any = None


class _StorageType:
    """What a ``torch.<Type>Storage`` global resolves to: only its dtype."""

    def __init__(self, name: str, dtype: torch.dtype):
        self.name = name
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"torch.{self.name}"


def _check_shape(name: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(type(item) is int and item >= 0 for item in value):
        raise TorchFileError(f"tensor {name} must be a tuple of non-negative ints, got {value!r}"[:300])
    return value


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2`` for this reader: a bounds-checked strided view of ``storage``."""
    if not isinstance(storage, torch.Tensor) or storage.dim() != 1:
        raise TorchFileError(f"tensor storage must come from a 'storage' persistent id, got {type(storage).__name__}")
    if type(storage_offset) is not int or storage_offset < 0:
        raise TorchFileError(f"tensor storage offset must be a non-negative int, got {storage_offset!r}"[:300])
    size = _check_shape("size", size)
    stride = _check_shape("stride", stride)
    if len(size) != len(stride):
        raise TorchFileError(f"tensor size {size} and stride {stride} differ in length")
    if type(requires_grad) is not bool:
        raise TorchFileError(f"tensor requires_grad must be a bool, got {type(requires_grad).__name__}")
    if backward_hooks is not None and (type(backward_hooks) is not collections.OrderedDict or backward_hooks):
        raise TorchFileError("tensor backward_hooks must be an empty OrderedDict")
    if metadata is not None and (type(metadata) is not dict or metadata):
        raise TorchFileError("tensor python metadata must be empty")
    if any(extent == 0 for extent in size):
        too_far = storage_offset > storage.numel()
    else:
        last = storage_offset + sum((extent - 1) * step for extent, step in zip(size, stride, strict=True))
        too_far = last >= storage.numel()
    if too_far:
        raise TorchFileError(
            f"tensor of size {size}, stride {stride}, offset {storage_offset} reaches past its storage "
            f"of {storage.numel()} elements"[:300]
        )
    return storage.as_strided(size, stride, storage_offset)


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any) -> torch.Tensor:
    """``torch._utils._rebuild_parameter`` for this reader: the tensor itself (weights only)."""
    if not isinstance(data, torch.Tensor):
        raise TorchFileError(f"a parameter must wrap a tensor, got {type(data).__name__}")
    if type(requires_grad) is not bool:
        raise TorchFileError(f"parameter requires_grad must be a bool, got {type(requires_grad).__name__}")
    if backward_hooks is not None and (type(backward_hooks) is not collections.OrderedDict or backward_hooks):
        raise TorchFileError("parameter backward_hooks must be an empty OrderedDict")
    return data


_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("yacs.config", "CfgNode"): ConfigNode,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    **{("torch", name): _StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()},
}
_CALLABLE_BY_REDUCE = (_rebuild_tensor_v2, _rebuild_parameter, collections.OrderedDict, set, frozenset)
_CREATABLE_BY_NEWOBJ = (collections.OrderedDict, ConfigNode)


def _describe(value: Any) -> str:
    return getattr(value, "__qualname__", None) or type(value).__name__


class _StrictUnpickler(pickle._Unpickler):  # the pure-Python unpickler: its opcodes can be restricted
    """Unpickles the grammar described in the module docstring; ``storage_reader(dtype, key, numel)``."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: io.BytesIO, storage_reader: Any, *, legacy: bool = False):
        super().__init__(file, encoding="utf-8")
        self._storage_reader = storage_reader
        self._legacy = legacy
        self._storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise TorchFileError(
                f"refused to load: the pickle references {module}.{name}"[:200]
                + ", which is not on the allow-list (tensors, plain containers, yacs CfgNode); "
                "nothing from the file was executed"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        expected = 6 if self._legacy else 5
        if not isinstance(pid, tuple) or len(pid) != expected or pid[0] not in ("storage", b"storage"):
            kind = pid[0] if isinstance(pid, tuple) and pid else type(pid).__name__
            raise TorchFileError(f"persistent id {kind!r} refused: only 'storage' ids are allowed"[:300])
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise TorchFileError(f"storage type must be a torch.<Type>Storage, got {_describe(storage_type)}")
        if type(numel) is not int or numel < 0:
            raise TorchFileError(f"storage element count must be a non-negative int, got {numel!r}"[:300])
        if self._legacy and pid[5] is not None:
            raise TorchFileError("legacy storage views are not supported")
        if not isinstance(key, str | int):
            raise TorchFileError(f"storage key must be a str, got {type(key).__name__}")
        key = str(key)
        if key in self._storages:
            storage = self._storages[key]
            if storage.dtype != storage_type.dtype or storage.numel() != numel:
                raise TorchFileError(f"storage {key!r} is declared twice with different types or sizes")
            return storage
        if numel * torch.empty((), dtype=storage_type.dtype).element_size() > MAX_STORAGE_BYTES:
            raise TorchFileError(f"storage {key!r} declares {numel} elements, over the {MAX_STORAGE_BYTES} byte bound")
        storage = self._storage_reader(storage_type.dtype, key, numel)
        self._storages[key] = storage
        return storage

    def _load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        if not any(func is allowed for allowed in _CALLABLE_BY_REDUCE):
            raise TorchFileError(f"REDUCE refused: {_describe(func)} may not be called")
        if not isinstance(args, tuple):
            raise TorchFileError("REDUCE refused: arguments are not a tuple")
        self.stack[-1] = func(*args)

    def _load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        if not any(cls is allowed for allowed in _CREATABLE_BY_NEWOBJ) or args != ():
            raise TorchFileError(f"NEWOBJ refused: {_describe(cls)} may not be created")
        self.append(cls())

    def _load_build(self) -> None:
        state = self.stack.pop()
        target = self.stack[-1]
        if type(target) not in (collections.OrderedDict, ConfigNode) or type(state) is not dict:
            raise TorchFileError(
                f"BUILD refused on {_describe(target)}: only an OrderedDict or yacs config node with a dict state"
            )
        if type(target) is ConfigNode:
            target.pickled_state = state  # kept as data; OrderedDict state (state_dict _metadata) is dropped

    def _load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._set_items(self.stack[-1], [key, value])

    def _load_setitems(self) -> None:
        items = self.pop_mark()
        self._set_items(self.stack[-1], items)

    @staticmethod
    def _set_items(target: Any, items: list[Any]) -> None:
        if type(target) not in (dict, collections.OrderedDict, ConfigNode):
            raise TorchFileError(f"SETITEM refused on {_describe(target)}: only dicts")
        for index in range(0, len(items), 2):
            target[items[index]] = items[index + 1]

    def _load_append(self) -> None:
        value = self.stack.pop()
        self._append_items(self.stack[-1], [value])

    def _load_appends(self) -> None:
        items = self.pop_mark()
        self._append_items(self.stack[-1], items)

    @staticmethod
    def _append_items(target: Any, items: list[Any]) -> None:
        if type(target) is not list:
            raise TorchFileError(f"APPEND refused on {_describe(target)}: only lists")
        target.extend(items)

    def _load_additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is not set:
            raise TorchFileError(f"ADDITEMS refused on {_describe(target)}: only sets")
        target.update(items)

    def _refuse(self) -> None:
        raise TorchFileError("pickle opcode refused (INST/OBJ/NEWOBJ_EX/EXT: object creation outside the grammar)")

    dispatch[pickle.REDUCE[0]] = _load_reduce
    dispatch[pickle.NEWOBJ[0]] = _load_newobj
    dispatch[pickle.BUILD[0]] = _load_build
    dispatch[pickle.SETITEM[0]] = _load_setitem
    dispatch[pickle.SETITEMS[0]] = _load_setitems
    dispatch[pickle.APPEND[0]] = _load_append
    dispatch[pickle.APPENDS[0]] = _load_appends
    dispatch[pickle.ADDITEMS[0]] = _load_additems
    for _opcode in (pickle.INST, pickle.OBJ, pickle.NEWOBJ_EX, pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_opcode[0]] = _refuse
    del _opcode


def _tensor_from_bytes(raw: bytes, dtype: torch.dtype, big_endian: bool) -> torch.Tensor:
    """A 1-D CPU tensor of ``dtype`` owning a copy of ``raw`` (little- or big-endian)."""
    flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
    itemsize = torch.empty((), dtype=dtype).element_size()
    if big_endian and itemsize > 1:
        flat = flat.view(-1, itemsize).flip(1).reshape(-1).contiguous()
    return flat.view(dtype)


def _read_zip(data: bytes) -> Any:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError, struct.error) as error:
        raise TorchFileError(f"corrupt or truncated torch file (zip: {error})") from None
    entries = {}
    total = 0
    for info in archive.infolist():
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
            raise TorchFileError(
                f"zip entry {info.filename!r} is compressed (declares {info.file_size} bytes from "
                f"{info.compress_size}); torch.save never compresses: refused before inflating"
            )
        if info.header_offset + info.compress_size > len(data):
            raise TorchFileError(f"zip entry {info.filename!r} declares {info.file_size} bytes past the end of file")
        total += info.file_size
        entries[info.filename] = info
    if total > MAX_FILE_BYTES:
        raise TorchFileError(f"zip entries declare {total} bytes in all, over the {MAX_FILE_BYTES} byte bound")
    pickles = [name for name in entries if name.endswith("/data.pkl") and name.count("/") == 1]
    if len(pickles) != 1:
        raise TorchFileError(f"expected one <name>/data.pkl in the zip, found {len(pickles)}")
    prefix = pickles[0][: -len("data.pkl")]
    if entries[pickles[0]].file_size > MAX_PICKLE_BYTES:
        raise TorchFileError(f"data.pkl declares {entries[pickles[0]].file_size} bytes, over {MAX_PICKLE_BYTES}")
    byteorder = "little"
    if prefix + "byteorder" in entries:
        byteorder = archive.read(prefix + "byteorder").decode("ascii", "replace")
    if byteorder not in ("little", "big"):
        raise TorchFileError(f"byteorder entry {byteorder[:20]!r} is neither 'little' nor 'big'")

    def read_storage(dtype: torch.dtype, key: str, numel: int) -> torch.Tensor:
        name = f"{prefix}data/{key}"
        info = entries.get(name)
        if info is None:
            raise TorchFileError(f"storage {key!r} has no zip entry {name!r}")
        itemsize = torch.empty((), dtype=dtype).element_size()
        if info.file_size != numel * itemsize:
            raise TorchFileError(
                f"storage {key!r} declares {numel} x {itemsize} bytes but its zip entry holds {info.file_size}"
            )
        return _tensor_from_bytes(archive.read(name), dtype, byteorder == "big")

    unpickler = _StrictUnpickler(io.BytesIO(archive.read(pickles[0])), read_storage)
    return unpickler.load()


def _read_legacy(data: bytes) -> Any:
    stream = io.BytesIO(data)
    pending: dict[str, tuple[torch.dtype, int]] = {}

    def no_storage(dtype: torch.dtype, key: str, numel: int) -> torch.Tensor:
        raise TorchFileError("a storage in the legacy header")

    def plain() -> Any:
        return _StrictUnpickler(stream, no_storage, legacy=True).load()

    if plain() != LEGACY_MAGIC_NUMBER:
        raise TorchFileError("not a torch file (legacy magic number missing)")
    if plain() != LEGACY_PROTOCOL_VERSION:
        raise TorchFileError("unsupported legacy torch protocol version")
    sys_info = plain()
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise TorchFileError("legacy torch file not written on a little-endian machine (unsupported)")
    storages: dict[str, torch.Tensor] = {}

    def defer_storage(dtype: torch.dtype, key: str, numel: int) -> torch.Tensor:
        itemsize = torch.empty((), dtype=dtype).element_size()
        if numel * itemsize > len(data):
            raise TorchFileError(f"storage {key!r} declares {numel * itemsize} bytes, more than the whole file")
        storage = torch.empty(numel, dtype=dtype)  # filled below from the bytes after the pickle
        storages[key] = storage
        pending[key] = (dtype, numel)
        return storage

    result = _StrictUnpickler(stream, defer_storage, legacy=True).load()
    keys = plain()
    if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(pending):
        raise TorchFileError("legacy storage key list does not match the storages the pickle names")
    for key in map(str, keys):
        dtype, numel = pending[key]
        header = stream.read(8)
        if len(header) != 8:
            raise TorchFileError(f"truncated legacy file: storage {key!r} missing")
        (declared,) = struct.unpack("<q", header)
        if declared != numel:
            raise TorchFileError(f"legacy storage {key!r} holds {declared} elements, the pickle declares {numel}")
        nbytes = numel * storages[key].element_size()
        raw = stream.read(nbytes)
        if len(raw) != nbytes:
            raise TorchFileError(f"truncated legacy file: storage {key!r} has {len(raw)} of {nbytes} bytes")
        storages[key].copy_(_tensor_from_bytes(raw, dtype, big_endian=False))
    return result


def read_torch_file(data: bytes) -> Any:
    """The object a ``torch.save`` file (zip or legacy format) holds, read under the strict grammar.

    ``data``: the whole file (the caller bounds its size by :data:`MAX_FILE_BYTES`). Tensors come back as
    plain CPU tensors (parameters unwrapped). Raises :class:`TorchFileError`.
    """
    if len(data) > MAX_FILE_BYTES:
        raise TorchFileError(f"file of {len(data)} bytes is over the {MAX_FILE_BYTES} byte bound")
    try:
        if data[:4] == b"PK\x03\x04":
            return _read_zip(data)
        if data[:1] == b"\x80":
            return _read_legacy(data)
    except TorchFileError:
        raise
    except RecursionError:
        raise TorchFileError("pickle nested too deeply") from None
    except MemoryError:
        raise TorchFileError("pickle asks for more memory than is available") from None
    except (
        pickle.UnpicklingError,
        EOFError,
        IndexError,
        KeyError,
        TypeError,
        ValueError,
        AttributeError,
        OverflowError,
        RuntimeError,
        UnicodeDecodeError,
        struct.error,
        zipfile.BadZipFile,
        OSError,
    ) as error:
        raise TorchFileError(f"corrupt or truncated torch file ({type(error).__name__}: {str(error)[:200]})") from None
    raise TorchFileError("not a torch file (neither a zip archive nor a legacy pickle)")
