"""`make install` hands pip's package sources to uv (infra/uv_sources.py), read through pip itself."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _uv_flags(tmp_path: Path, config: str, env: dict[str, str]) -> list[str]:
    (tmp_path / "pip.conf").write_text(config)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    clean.update(PIP_CONFIG_FILE=str(tmp_path / "pip.conf"), **env)
    out = subprocess.run(
        [sys.executable, str(ROOT / "infra" / "uv_sources.py")], env=clean, capture_output=True, text=True, check=True
    ).stdout
    return out.split()


def test_indexes_and_wheel_folders_from_file_and_environment_become_uv_flags(tmp_path):
    config = "[global]\nextra-index-url = file:///mirror/a/simple file:///mirror/b/simple\nfind-links = /wheels\n"
    flags = _uv_flags(tmp_path, config, {"PIP_FIND_LINKS": "/more-wheels"})
    pairs = list(zip(flags[::2], flags[1::2], strict=True))
    assert sorted(pairs) == sorted(
        [
            ("--extra-index-url", "file:///mirror/a/simple"),
            ("--extra-index-url", "file:///mirror/b/simple"),
            ("--find-links", "/wheels"),
            ("--find-links", "/more-wheels"),
        ]
    )


def test_no_pip_sources_means_no_flags_and_other_settings_are_ignored(tmp_path):
    assert _uv_flags(tmp_path, "[global]\ntimeout = 60\ncert = /etc/ssl/x.pem\n", {}) == []
