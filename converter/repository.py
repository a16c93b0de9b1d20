"""Write step: a verified ONNX model becomes a repository entry in Triton's layout.

``<repository>/<name>/config.pbtxt`` and ``<repository>/<name>/<version>/model.onnx``.
Writes are atomic: everything is written into a hidden temporary folder inside
the repository (same file system) and moved into place with one ``os.rename``,
so a server scanning the repository, or a crash, never sees half a model. An
existing version is never overwritten, and an existing config.pbtxt is never
replaced: a new version must have the same inputs and outputs as the config
declares, or the conversion fails before anything is written.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf import text_format

from onnxserve.converter.errors import RepositoryError
from onnxserve.converter.external import StagedModel
from onnxserve.layout import (
    BACKEND,
    CHECKSUMS_FILENAME,
    CONFIG_FILENAME,
    CUSTOM_OPS_EXTENSIONS,
    CUSTOM_OPS_PARAMETER,
    INPUT_RANGE_PREFIX,
    MODEL_FILENAME,
    MODEL_NAME_RULE,
    PLATFORM,
    format_input_range,
    input_range_key,
    is_valid_model_name,
    version_folders,
)
from onnxserve.protocol import model_config_pb2 as mc
from onnxserve.protocol.datatypes import ort_to_protocol, protocol_to_config
from onnxserve.sessions import needs_extensions

__all__ = [
    "WrittenEntry",
    "build_config",
    "check_target",
    "existing_versions",
    "staging_folder",
    "validate_name",
    "write_entry",
]

InputRanges = Mapping[str, tuple[int | None, int | None]]


def _config_type(elem_type: int) -> int | None:
    """ONNX element type -> config.pbtxt TYPE_*, through onnxruntime's type names."""
    name = onnx.TensorProto.DataType.Name(elem_type).lower()  # FLOAT -> 'float'
    protocol = ort_to_protocol(f"tensor({name})")
    return None if protocol is None else protocol_to_config(protocol)


@dataclass(frozen=True)
class WrittenEntry:
    """Where the model went."""

    name: str
    version: int
    model_path: Path
    config_path: Path
    config_written: bool
    size_bytes: int


def validate_name(name: str) -> None:
    """The server's model-name rule; checked before any work so a typo fails fast."""
    if not is_valid_model_name(name):
        raise RepositoryError(f"model name {name!r} is not valid: {MODEL_NAME_RULE}")


def existing_versions(folder: Path) -> list[int]:
    """The version numbers present in a model folder (numeric subfolders), sorted."""
    return sorted(version_folders(folder))


def check_target(repository: Path, name: str, version: int | None) -> None:
    """Fail early (before converting) when the requested version already exists."""
    validate_name(name)
    if repository.exists() and not repository.is_dir():
        raise RepositoryError(f"repository {repository} exists and is not a directory")
    if version is not None:
        if version < 1:
            raise RepositoryError(f"version must be 1 or more, got {version}")
        if version in existing_versions(repository / name):
            raise RepositoryError(
                f"{repository / name / str(version)} already exists; versions are never "
                "overwritten (leave out --version to add the next one)"
            )


def _tensor_configs(
    values: list[onnx.ValueInfoProto], max_batch_size: int
) -> list[tuple[str, int, list[int]]]:
    tensors = []
    for value in values:
        tensor_type = value.type.tensor_type
        data_type = _config_type(tensor_type.elem_type)
        if data_type is None:
            raise RepositoryError(
                f"tensor {value.name!r} has ONNX type "
                f"{onnx.TensorProto.DataType.Name(tensor_type.elem_type)}, which the protocol lacks"
            )
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
        if max_batch_size > 0:
            dims = dims[1:]
        tensors.append((value.name, data_type, dims))
    return tensors


def build_config(
    model: onnx.ModelProto,
    name: str,
    max_batch_size: int,
    input_ranges: InputRanges | None = None,
) -> mc.ModelConfig:
    """config.pbtxt content: dims without the batch dim (-1 where dynamic), dynamic batching.

    ``input_ranges`` (input name -> inclusive bounds, from
    :mod:`onnxserve.converter.analysis`) become one model-level parameter per
    input, ``onnxserve.input_range.<input>`` = ``"<min>,<max>"``
    (:mod:`onnxserve.layout`): Triton's syntax, so Triton loads the config and
    ignores them, while onnxserve can refuse values the model cannot handle. A
    model using onnxruntime-extensions' operators gets ``onnxserve.custom_ops``.
    """
    known = {value.name for value in model.graph.input}
    for input_name in input_ranges or {}:
        if input_name not in known:
            raise RepositoryError(f"a range is given for {input_name!r}, which is no input")
    config = mc.ModelConfig(
        name=name,
        platform=PLATFORM,
        backend=BACKEND,
        max_batch_size=max_batch_size,
    )
    for tensor_name, data_type, dims in _tensor_configs(list(model.graph.input), max_batch_size):
        config.input.add(name=tensor_name, data_type=data_type, dims=dims)
    for tensor_name, data_type, dims in _tensor_configs(list(model.graph.output), max_batch_size):
        config.output.add(name=tensor_name, data_type=data_type, dims=dims)
    if max_batch_size > 0:
        config.dynamic_batching.SetInParent()
    for input_name, (low, high) in sorted((input_ranges or {}).items()):
        if low is None and high is None:
            continue
        config.parameters[input_range_key(input_name)].string_value = format_input_range(low, high)
    if needs_extensions(entry.domain for entry in model.opset_import):
        config.parameters[CUSTOM_OPS_PARAMETER].string_value = CUSTOM_OPS_EXTENSIONS
    return config


def _ranges(config: mc.ModelConfig) -> dict[str, str]:
    return {
        key: value.string_value
        for key, value in config.parameters.items()
        if key.startswith(INPUT_RANGE_PREFIX)
    }


def _signature(config: mc.ModelConfig) -> tuple[object, ...]:
    def tensors(items: object) -> list[tuple[str, int, tuple[int, ...]]]:
        return sorted((t.name, t.data_type, tuple(t.dims)) for t in items)  # type: ignore[attr-defined]

    return config.max_batch_size, tensors(config.input), tensors(config.output)


def _check_existing_config(path: Path, new: mc.ModelConfig) -> None:
    """An existing config.pbtxt must declare what the new version has (or nothing)."""
    try:
        old = text_format.Parse(path.read_text(), mc.ModelConfig())
    except (OSError, text_format.ParseError) as exc:
        raise RepositoryError(f"cannot read the existing {path}: {exc}") from exc
    if not old.input and not old.output:
        if old.max_batch_size and old.max_batch_size != new.max_batch_size:
            raise RepositoryError(
                f"{path} declares max_batch_size {old.max_batch_size}, the new version "
                f"{new.max_batch_size}; use the same --max-batch-size or a new model name"
            )
        return
    # Input ranges are part of the contract too, where the existing config declares them
    # (a config written before ranges existed declares none, and stays valid).
    if _signature(old) != _signature(new) or (_ranges(old) and _ranges(old) != _ranges(new)):
        raise RepositoryError(
            f"{path} declares other inputs/outputs (or max_batch_size, or input ranges) than "
            "the new model has; all versions of a model share one config.pbtxt, so convert to "
            "a new model name. "
            f"Existing: {text_format.MessageToString(old, as_one_line=True)[:400]}; new: "
            f"{text_format.MessageToString(new, as_one_line=True)[:400]}"
        )


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _VersionFiles:
    """What goes into a version folder: model.onnx (and its data file) plus ``sha256sums``.

    From an in-memory model: its bytes, serialized once. From a
    :class:`StagedModel` (written inside the repository before verification):
    its files, hard-linked in (the same file system, so no copy; copied where
    the file system has no hard links), with the digests taken while writing.
    """

    def __init__(self, model: onnx.ModelProto | StagedModel) -> None:
        self.staged = model if isinstance(model, StagedModel) else None
        self.data = b"" if self.staged is not None else model.SerializeToString()
        if self.staged is not None:
            self.digests = dict(self.staged.files)
            self.size = self.staged.size_bytes
        else:
            self.digests = {MODEL_FILENAME: hashlib.sha256(self.data).hexdigest()}
            self.size = len(self.data)

    def write(self, folder: Path) -> None:
        if self.staged is None:
            _write_file(folder / MODEL_FILENAME, self.data)
        else:
            for file_name in self.digests:
                source, target = self.staged.folder / file_name, folder / file_name
                try:
                    os.link(source, target)
                except OSError:
                    shutil.copyfile(source, target)
        listing = "".join(f"{digest}  {file}\n" for file, digest in sorted(self.digests.items()))
        _write_file(folder / CHECKSUMS_FILENAME, listing.encode())


def write_entry(
    repository: Path,
    name: str,
    model: onnx.ModelProto | StagedModel,
    config: mc.ModelConfig,
    version: int | None = None,
) -> WrittenEntry:
    """Write the entry atomically; never overwrite a version or a config.pbtxt.

    ``model`` is an in-memory model, or one already written to a staging folder
    inside ``repository`` (a model with external data). The version folder
    gets ``sha256sums`` listing every file, which the server checks at load.
    Without ``version`` the next free number is taken; if another writer takes
    it at the same moment, the next one after that is tried.
    """
    repository = Path(repository)
    check_target(repository, name, version)
    folder = repository / name
    if folder.is_dir() and (folder / CONFIG_FILENAME).is_file():
        _check_existing_config(folder / CONFIG_FILENAME, config)
    try:
        repository.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RepositoryError(f"cannot create the repository {repository}: {exc}") from exc
    files = _VersionFiles(model)
    config_text = text_format.MessageToString(config).encode()

    staging = Path(tempfile.mkdtemp(prefix=f".{name}.converting-", dir=repository))
    linked_config = False  # config.pbtxt added to an existing folder by this call
    done = False
    try:
        for _attempt in range(100):
            number = (
                version if version is not None else (max(existing_versions(folder), default=0) + 1)
            )
            if not folder.exists():
                # A new model: build the whole folder and move it into place at once.
                entry = staging / "entry"
                (entry / str(number)).mkdir(parents=True)
                files.write(entry / str(number))
                _write_file(entry / CONFIG_FILENAME, config_text)
                try:
                    os.rename(entry, folder)
                except OSError as exc:
                    if exc.errno in (errno.EEXIST, errno.ENOTEMPTY) and folder.exists():
                        shutil.rmtree(entry, ignore_errors=True)
                        continue  # someone created the model meanwhile: add a version instead
                    raise
                _fsync_dir(repository)
                done = True
                return _written(folder, name, number, config_written=True, size=files.size)
            # An existing model: move in a version folder; add config.pbtxt only if absent.
            if (folder / CONFIG_FILENAME).exists():
                # Checked again: another writer may have created the model meanwhile.
                _check_existing_config(folder / CONFIG_FILENAME, config)
            else:
                staged_config = staging / CONFIG_FILENAME
                _write_file(staged_config, config_text)
                try:
                    os.link(staged_config, folder / CONFIG_FILENAME)  # fails if it exists
                    linked_config = True
                except FileExistsError:
                    _check_existing_config(folder / CONFIG_FILENAME, config)
            target = folder / str(number)
            if target.exists():
                if version is not None:
                    raise RepositoryError(
                        f"{target} already exists; versions are never overwritten"
                    )
                continue
            staged_version = staging / str(number)
            staged_version.mkdir()
            files.write(staged_version)
            try:
                os.rename(staged_version, target)
            except OSError as exc:
                shutil.rmtree(staged_version, ignore_errors=True)
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY) and version is None:
                    continue
                raise RepositoryError(f"cannot write {target}: {exc}") from exc
            _fsync_dir(folder)
            done = True
            return _written(folder, name, number, config_written=linked_config, size=files.size)
        raise RepositoryError(f"could not find a free version number in {folder}")
    except OSError as exc:
        raise RepositoryError(f"writing to {repository} failed: {exc}") from exc
    finally:
        if linked_config and not done:
            # Leave the folder as it was: the config was only there for this version.
            (folder / CONFIG_FILENAME).unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)


def staging_folder(repository: Path, name: str) -> Path:
    """A hidden folder inside ``repository`` (same file system) to write a large model into
    before it is verified; the caller removes it (:func:`write_entry` links from it)."""
    repository = Path(repository)
    try:
        repository.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{name}.staging-", dir=repository))
    except OSError as exc:
        raise RepositoryError(f"cannot create a staging folder in {repository}: {exc}") from exc


def _written(
    folder: Path, name: str, version: int, *, config_written: bool, size: int
) -> WrittenEntry:
    return WrittenEntry(
        name=name,
        version=version,
        model_path=folder / str(version) / MODEL_FILENAME,
        config_path=folder / CONFIG_FILENAME,
        config_written=config_written,
        size_bytes=size,
    )
