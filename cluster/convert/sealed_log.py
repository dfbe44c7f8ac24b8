"""The usage log's on-disk format: append-only segments sealed to one X25519 public key.

Why sealed: the router (which writes the log) must never be able to read it back; only the conversion loop, which
holds the private key, can. Each segment gets a fresh data key from an ephemeral X25519 key agreement with the
recipient's public key (HKDF-SHA256 -> AES-256-GCM); the ephemeral private key and the data key live only in the
writer's memory while the segment is open, so a closed segment is unreadable to anyone without the private key.

A segment is ``MAGIC | u32 header length | header JSON | frames``; a frame is ``u32 length | AES-GCM ciphertext``
of JSON lines (one batch of records), its nonce the frame's index and its associated data the header's digest
plus that index, so frames cannot be reordered, moved between segments or altered unnoticed. A writer that dies
mid-frame leaves a short tail, which a reader reports and skips; every whole frame before it still reads.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"SLMFLOG1"
ALGORITHM = "x25519-hkdf-sha256-aes256gcm"
KEY_PREFIX = "x25519:"
SEGMENT_SUFFIX = ".slog"
_LENGTH = struct.Struct(">I")


class SealedLogError(ValueError):
    """A segment or key that cannot be used, with the file it concerns."""


def public_key_text(key: X25519PublicKey) -> str:
    """The one-line form a spec carries: ``x25519:`` and the raw key in base64."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KEY_PREFIX + base64.b64encode(raw).decode()


def parse_public_key(text: str) -> X25519PublicKey:
    """The key of :func:`public_key_text` (``cluster.spec`` checks its shape without this library)."""
    if not text.startswith(KEY_PREFIX):
        raise SealedLogError(f"a usage-log public key starts with '{KEY_PREFIX}'")
    return X25519PublicKey.from_public_bytes(base64.b64decode(text[len(KEY_PREFIX) :]))


def key_id(key: X25519PublicKey) -> str:
    """A short fingerprint that names the recipient in each segment's header (which key opens it)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_key_pair(folder: Path) -> tuple[Path, str]:
    """A new private key in ``folder/usage-log.key`` (mode 0600, PEM) and its public key's spec text (also
    written to ``usage-log.pub``). Refuses to overwrite a key: a lost private key is a lost log."""
    folder.mkdir(parents=True, exist_ok=True)
    private_path = folder / "usage-log.key"
    if private_path.exists():
        raise SealedLogError(f"{private_path} exists; move it away first (segments sealed to it need it to be read)")
    private = X25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(pem)
    public = public_key_text(private.public_key())
    (folder / "usage-log.pub").write_text(public + "\n")
    return private_path, public


def load_private_key(path: Path) -> X25519PrivateKey:
    """The loop's private key from :func:`generate_key_pair`'s PEM file."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise SealedLogError(f"{path}: not a readable private key ({exc})") from None
    if not isinstance(key, X25519PrivateKey):
        raise SealedLogError(f"{path}: not an X25519 private key (make one with 'slmfleet convert keygen')")
    return key


def _data_key(shared_secret: bytes, header_digest: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=header_digest, info=ALGORITHM.encode()).derive(shared_secret)


def _nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


def _aad(header_digest: bytes, index: int) -> bytes:
    return header_digest + index.to_bytes(8, "big")


class SegmentWriter:
    """Appends sealed frames to one new segment file; forgets its key on :meth:`close`."""

    def __init__(self, path: Path, recipient: X25519PublicKey, stream: str) -> None:
        ephemeral = X25519PrivateKey.generate()
        ephemeral_raw = ephemeral.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        header = {
            "alg": ALGORITHM,
            "recipient": key_id(recipient),
            "ephemeral": base64.b64encode(ephemeral_raw).decode(),
            "stream": stream,
            "created": time.time(),
        }
        header_bytes = json.dumps(header, sort_keys=True).encode()
        self._digest = hashlib.sha256(header_bytes).digest()
        self._aead: AESGCM | None = AESGCM(_data_key(ephemeral.exchange(recipient), self._digest))
        self.path = path
        self.frames = 0
        self.size = 0
        self.opened_at = time.monotonic()
        self._file: BinaryIO = open(path, "xb")  # noqa: SIM115 - held open across appends until close()
        self._write(MAGIC + _LENGTH.pack(len(header_bytes)) + header_bytes)

    def append(self, records: list[dict[str, Any]]) -> None:
        """Seal a batch of records as one frame and write it through to the file."""
        if self._aead is None:
            raise SealedLogError(f"{self.path} is closed")
        plain = b"".join(json.dumps(r, separators=(",", ":"), default=str).encode() + b"\n" for r in records)
        sealed = self._aead.encrypt(_nonce(self.frames), plain, _aad(self._digest, self.frames))
        self._write(_LENGTH.pack(len(sealed)) + sealed)
        self.frames += 1

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._file.flush()
        self.size += len(data)

    def close(self) -> None:
        """Close the file and drop the data key: from here on only the private key opens the segment."""
        self._aead = None
        self._file.close()


@dataclass
class SegmentSummary:
    """What can be said of a segment without its key."""

    path: Path
    recipient: str
    stream: str
    created: float
    frames: int
    truncated_tail: bool


def _read_header(data: bytes, path: Path) -> tuple[dict[str, Any], bytes, int]:
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + _LENGTH.size:
        raise SealedLogError(f"{path}: not a usage-log segment")
    (length,) = _LENGTH.unpack_from(data, len(MAGIC))
    start = len(MAGIC) + _LENGTH.size
    header_bytes = data[start : start + length]
    try:
        header = json.loads(header_bytes)
    except ValueError:
        raise SealedLogError(f"{path}: damaged segment header") from None
    return header, header_bytes, start + length


def _frames(data: bytes, offset: int) -> tuple[list[bytes], bool]:
    """The whole frames from ``offset`` and whether a partial one ends the file."""
    frames: list[bytes] = []
    while offset + _LENGTH.size <= len(data):
        (length,) = _LENGTH.unpack_from(data, offset)
        end = offset + _LENGTH.size + length
        if end > len(data):
            return frames, True
        frames.append(data[offset + _LENGTH.size : end])
        offset = end
    return frames, offset != len(data)


def summarize_segment(path: Path) -> SegmentSummary:
    """Recipient, stream, age and frame count: readable by anyone, since none of it is the traffic."""
    data = path.read_bytes()
    header, _, offset = _read_header(data, path)
    frames, truncated = _frames(data, offset)
    return SegmentSummary(path, header["recipient"], header["stream"], header["created"], len(frames), truncated)


def read_segment(path: Path, private: X25519PrivateKey) -> Iterator[dict[str, Any]]:
    """Every record of a segment, in order; a frame that fails its seal raises (the log was altered)."""
    data = path.read_bytes()
    header, header_bytes, offset = _read_header(data, path)
    if header.get("alg") != ALGORITHM:
        raise SealedLogError(f"{path}: unknown algorithm {header.get('alg')!r}")
    if header["recipient"] != key_id(private.public_key()):
        raise SealedLogError(f"{path}: sealed to key {header['recipient']}, not to this key")
    digest = hashlib.sha256(header_bytes).digest()
    ephemeral = X25519PublicKey.from_public_bytes(base64.b64decode(header["ephemeral"]))
    aead = AESGCM(_data_key(private.exchange(ephemeral), digest))
    frames, _ = _frames(data, offset)
    for index, sealed in enumerate(frames):
        try:
            plain = aead.decrypt(_nonce(index), sealed, _aad(digest, index))
        except InvalidTag:
            raise SealedLogError(f"{path}: frame {index} fails its seal (altered or damaged)") from None
        for line in plain.splitlines():
            yield json.loads(line)


def segment_paths(folder: Path) -> list[Path]:
    """A local log's segments, oldest first within each stream (names sort by stream, then time)."""
    return sorted(folder.rglob(f"*{SEGMENT_SUFFIX}")) if folder.is_dir() else []
