"""The archive's objects in a store: verified segment files and their manifests, under a prefix.

Key layout (see :mod:`localbroker.archive.manifest`)::

    PREFIX/segments/00000000000000004711.log        the segment file, byte for byte
    PREFIX/manifests/00000000000000004711.json      its manifest, written once the copy is verified
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .errors import ArchiveChecksumError
from .manifest import Manifest, build_manifest, manifest_key
from .store import ObjectStore, file_sha256

__all__ = ["ArchiveObjects"]

#: Manifests read at once when listing the archive.
LIST_THREADS = 8


class ArchiveObjects:
    """The segments and manifests of one archive (``prefix``) in ``store``."""

    def __init__(self, store: ObjectStore, prefix: str) -> None:
        self.store = store
        self.prefix = prefix

    def describe(self) -> str:
        return self.store.describe(self.prefix)

    def check(self) -> None:
        """Check that the store exists and may be used (ArchiveAccessError otherwise)."""
        self.store.check(f"{self.prefix}/")

    def abort_stale_uploads(self) -> int:
        """Remove what interrupted segment uploads left behind."""
        return self.store.abort_incomplete(f"{self.prefix}/segments/")

    # -- manifests --------------------------------------------------------------------------

    def list_manifests(self) -> list[Manifest]:
        """Every manifest under the prefix, by base offset."""
        keys = [k for k in self.store.list_keys(f"{self.prefix}/manifests/") if k.endswith(".json")]
        if not keys:
            return []
        with ThreadPoolExecutor(max_workers=min(LIST_THREADS, len(keys))) as pool:
            manifests = list(pool.map(self.get_manifest, keys))
        return sorted(manifests, key=lambda m: m.base_offset)

    def get_manifest(self, key: str) -> Manifest:
        """Read one manifest."""
        body = self.store.get_bytes(key)
        try:
            return Manifest.model_validate_json(body)
        except ValueError as exc:
            raise ArchiveChecksumError(
                f"manifest {key} in {self.describe()} is invalid: {exc}"
            ) from exc

    # -- segments ---------------------------------------------------------------------------

    def upload_segment(self, path: Path) -> Manifest:
        """Upload a sealed segment file, verified, then write its manifest; return the manifest.

        The segment counts as archived only once this returns. If it fails part way, the store
        holds at most an unverified segment object with no manifest (or a leftover that
        :meth:`abort_stale_uploads` removes), which readers ignore and the next try overwrites.
        """
        manifest = build_manifest(path, self.prefix, file_sha256(path))
        self.store.put_file(manifest.key, path, manifest.sha256)
        manifest = manifest.model_copy(update={"uploaded_at": time.time()})
        self.store.put_bytes(manifest_key(self.prefix, manifest.base_offset), manifest.to_json())
        return manifest

    def download(self, manifest: Manifest, dest: Path | None) -> None:
        """Read a segment, checking its SHA-256 against the manifest; write it to ``dest``
        (if given), where it appears only when the checksum matched."""
        self.store.get_file(manifest.key, dest, manifest.sha256)
