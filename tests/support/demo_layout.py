"""A miniature copy of the demo corpus's layout (`beit3 demo-data`) for `evaluation.miniature` in tests.

Tux Paint tars (stamp + caption), emoji images with names, Fashion-MNIST-style class folders; flat-colour
images so that everything is generated in milliseconds.
"""

import io
import json
import tarfile
from pathlib import Path

from PIL import Image

NOUNS = ["frog", "ostrich", "hen", "heron", "lark", "duck", "crow", "apple", "tree", "boat", "kite", "cake"]
CLASSES = ["bag", "coat", "dress", "sandal", "shirt", "trouser"]


def _png(color, mode="RGB", size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_demo_layout(root: Path) -> Path:
    """Tux Paint tars (stamp + caption), emoji with names and Fashion-MNIST-style class folders."""
    (root / "tuxpaint").mkdir(parents=True)
    with tarfile.open(root / "tuxpaint" / "00000.tar", "w") as tar:
        for index in range(30):
            noun = NOUNS[index % len(NOUNS)]
            key = f"{index:05d}"
            meta = {"key": key, "caption": f"A {noun}.", "stamp": f"animals/{noun}-{index}"}
            _add(tar, f"{key}.json", json.dumps(meta).encode())
            _add(tar, f"{key}.png", _png((index * 8, 20 * (index % 12), 200 - index * 5, 255), mode="RGBA"))
    (root / "emoji" / "images").mkdir(parents=True)
    rows = []
    for i in range(24):
        name = f"images/{0x1F300 + i:05x}.png"
        (root / "emoji" / name).write_bytes(_png((i * 10, 250 - i * 10, 90)))
        rows.append({"image": name, "caption": f"symbol {NOUNS[i % len(NOUNS)]}"})
    (root / "emoji" / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for c, name in enumerate(CLASSES):
        (root / "fashion_mnist" / name).mkdir(parents=True)
        for k in range(6):
            path = root / "fashion_mnist" / name / f"train_{c * 100 + k:05d}.png"
            path.write_bytes(_png((c * 40, 255 - c * 40, k * 10)))
    return root
