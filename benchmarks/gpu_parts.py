#!/usr/bin/env python3
"""Split a payload into numbered parts with a SHA-256 manifest, and join them back, checked.

The GPU machine is reached by calls that each carry at most 64 MiB, and it
has no network: benchmarks/gpu_wheelhouse.py packs what the GPU check needs
into one tar file and splits it here into parts of at most 60 MiB; each call
carries one part, benchmarks/gpu_check.sh stashes it outside the working
tree, and once every part is there joins them, checking each part's digest
and the whole payload's against the manifest. Standard library only: it runs
under the GPU machine's own Python, before any environment exists.

    gpu_parts.py split PAYLOAD OUTDIR [--part-mib 60]
    gpu_parts.py stash PARTS_DIR STASH_DIR      # copy and check the parts that are here
    gpu_parts.py join STASH_DIR PAYLOAD          # exit 1 naming missing or damaged parts
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

MANIFEST = "manifest.json"
PART_PREFIX = "part-"
DEFAULT_PART_MIB = 60
_CHUNK = 1 << 20


class PartsError(RuntimeError):
    """A part is missing or damaged, or the manifest is unusable; the message says which."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def part_name(index: int) -> str:
    return f"{PART_PREFIX}{index:02d}"


def split(payload: Path, outdir: Path, part_bytes: int) -> dict[str, object]:
    """Write ``part-01``... and ``manifest.json`` into ``outdir``; returns the manifest."""
    if part_bytes < 1:
        raise PartsError("the part size must be positive")
    outdir.mkdir(parents=True, exist_ok=True)
    for old in outdir.glob(PART_PREFIX + "*"):
        old.unlink()
    parts = []
    whole = hashlib.sha256()
    with payload.open("rb") as source:
        index = 0
        while True:
            index += 1
            digest = hashlib.sha256()
            written = 0
            target = outdir / part_name(index)
            with target.open("wb") as sink:
                while written < part_bytes:
                    block = source.read(min(_CHUNK, part_bytes - written))
                    if not block:
                        break
                    sink.write(block)
                    digest.update(block)
                    whole.update(block)
                    written += len(block)
            if written == 0:
                target.unlink()
                break
            parts.append({"name": target.name, "bytes": written, "sha256": digest.hexdigest()})
            if written < part_bytes:
                break
    manifest: dict[str, object] = {
        "payload": payload.name,
        "bytes": sum(int(p["bytes"]) for p in parts),  # type: ignore[call-overload]
        "sha256": whole.hexdigest(),
        "parts": parts,
    }
    (outdir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(folder: Path) -> dict[str, object]:
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        parts = manifest["parts"]
        assert isinstance(parts, list) and parts
    except (OSError, ValueError, KeyError, AssertionError):
        raise PartsError(f"no usable {MANIFEST} in {folder}") from None
    return manifest


def _check(path: Path, entry: dict[str, object]) -> str | None:
    """None when ``path`` is the part the manifest describes; else what is wrong with it."""
    if not path.is_file():
        return "missing"
    if path.stat().st_size != entry["bytes"]:
        return f"{path.stat().st_size} bytes, not {entry['bytes']}"
    if _sha256(path) != entry["sha256"]:
        return "damaged (SHA-256 differs from the manifest)"
    return None


def stash(parts_dir: Path, stash_dir: Path) -> tuple[list[str], list[str]]:
    """Copy the manifest and every good part found in ``parts_dir`` into ``stash_dir``.

    Returns (parts now in the stash, parts still missing there). A manifest
    that differs from the stash's (a new wheelhouse) empties the stash first.
    """
    manifest = read_manifest(parts_dir)
    stash_dir.mkdir(parents=True, exist_ok=True)
    try:
        if read_manifest(stash_dir) != manifest:
            for old in stash_dir.glob(PART_PREFIX + "*"):
                old.unlink()
    except PartsError:
        pass
    shutil.copyfile(parts_dir / MANIFEST, stash_dir / MANIFEST)
    for entry in manifest["parts"]:  # type: ignore[attr-defined]
        name = str(entry["name"])
        if _check(stash_dir / name, entry) is None or not (parts_dir / name).is_file():
            continue
        problem = _check(parts_dir / name, entry)
        if problem is not None:
            raise PartsError(f"{name} as carried is {problem}; carry it again")
        shutil.copyfile(parts_dir / name, stash_dir / name)
    present, missing = [], []
    for entry in manifest["parts"]:  # type: ignore[attr-defined]
        (present if _check(stash_dir / str(entry["name"]), entry) is None else missing).append(
            str(entry["name"])
        )
    return present, missing


def join(stash_dir: Path, payload: Path) -> None:
    """Check every part, concatenate them into ``payload`` and check the whole."""
    manifest = read_manifest(stash_dir)
    problems = []
    for entry in manifest["parts"]:  # type: ignore[attr-defined]
        problem = _check(stash_dir / str(entry["name"]), entry)
        if problem is not None:
            problems.append(f"{entry['name']} {problem}")
    if problems:
        total = len(manifest["parts"])  # type: ignore[arg-type]
        raise PartsError(
            f"{len(problems)} of {total} parts not usable: {'; '.join(problems)} "
            "(carry each with its own call, see benchmarks/README.md)"
        )
    whole = hashlib.sha256()
    payload.parent.mkdir(parents=True, exist_ok=True)
    with payload.open("wb") as sink:
        for entry in manifest["parts"]:  # type: ignore[attr-defined]
            with (stash_dir / str(entry["name"])).open("rb") as source:
                while block := source.read(_CHUNK):
                    sink.write(block)
                    whole.update(block)
    if whole.hexdigest() != manifest["sha256"]:
        payload.unlink()
        raise PartsError("the joined payload's SHA-256 differs from the manifest")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    split_cmd = commands.add_parser("split", help="payload -> parts + manifest")
    split_cmd.add_argument("payload", type=Path)
    split_cmd.add_argument("outdir", type=Path)
    split_cmd.add_argument("--part-mib", type=int, default=DEFAULT_PART_MIB)
    stash_cmd = commands.add_parser("stash", help="keep the carried parts outside the tree")
    stash_cmd.add_argument("parts_dir", type=Path)
    stash_cmd.add_argument("stash_dir", type=Path)
    join_cmd = commands.add_parser("join", help="checked parts -> payload")
    join_cmd.add_argument("stash_dir", type=Path)
    join_cmd.add_argument("payload", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "split":
            manifest = split(args.payload, args.outdir, args.part_mib << 20)
            print(f"{len(manifest['parts'])} parts of at most {args.part_mib} MiB in {args.outdir}")  # type: ignore[arg-type]
        elif args.command == "stash":
            present, missing = stash(args.parts_dir, args.stash_dir)
            print(f"parts stashed: {', '.join(present) or 'none'}")
            print(f"parts still to carry: {', '.join(missing) or 'none'}")
        else:
            join(args.stash_dir, args.payload)
            print(f"joined and checked: {args.payload}")
    except PartsError as exc:
        print(f"gpu_parts: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
