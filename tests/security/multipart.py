"""Multipart bodies built by hand, byte for byte: client libraries refuse the hostile ones."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Part:
    name: str | None
    data: bytes
    filename: str | None = None
    content_type: str | None = None


def _quoted(text: str) -> bytes:
    # What browsers do: percent-encode the quote and line breaks; anything else goes as UTF-8.
    return text.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A").encode("utf-8", "surrogatepass")


def encode(parts: list[Part], boundary: str = "hostile-boundary") -> tuple[bytes, str]:
    """(body, Content-Type header) of a multipart/form-data request holding ``parts``."""
    out = bytearray()
    for part in parts:
        out += b"--" + boundary.encode() + b"\r\n"
        disposition = b"Content-Disposition: form-data"
        if part.name is not None:
            disposition += b'; name="' + _quoted(part.name) + b'"'
        if part.filename is not None:
            disposition += b'; filename="' + _quoted(part.filename) + b'"'
        out += disposition + b"\r\n"
        if part.content_type is not None:
            out += b"Content-Type: " + part.content_type.encode("latin-1", "replace") + b"\r\n"
        out += b"\r\n" + part.data + b"\r\n"
    out += b"--" + boundary.encode() + b"--\r\n"
    return bytes(out), f"multipart/form-data; boundary={boundary}"
