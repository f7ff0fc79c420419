"""Scoring of a COCO-5k-sized zero-shot evaluation: chunked from the features vs the full score matrix.

5,000 image and 25,010 caption features (random, L2-normalised, D = 192 as the tiny model) with 5 captions per
image; times both paths and the peak resident memory each adds (each path runs in a fresh process).

    python benchmarks/zeroshot_scoring.py
"""

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NUM_IMAGES, NUM_TEXTS, DIM, CHUNK = 5000, 25010, 192, 1024


def _one(path: str) -> dict:
    import torch
    import torch.nn.functional as F

    from evaluation.metrics.retrieval import retrieval_recall, retrieval_recall_from_features

    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(NUM_IMAGES, DIM, generator=generator), dim=-1)
    text = F.normalize(torch.randn(NUM_TEXTS, DIM, generator=generator), dim=-1)
    text_to_image = torch.arange(NUM_TEXTS) % NUM_IMAGES
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if path == "chunked":
        metrics = retrieval_recall_from_features(image, text, text_to_image, chunk_size=CHUNK)
    else:
        metrics = retrieval_recall(image @ text.T, text_to_image, chunk_size=CHUNK)
    seconds = time.perf_counter() - start
    added_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return {
        "path": path,
        "seconds": round(seconds, 2),
        "peak_rss_added_mb": round(added_mb, 1),
        "ir_r10": metrics["ir_r10"],
    }


def main() -> int:
    if len(sys.argv) == 2:
        print(json.dumps(_one(sys.argv[1])))
        return 0
    rows = []
    for path in ("chunked", "full"):
        out = subprocess.run([sys.executable, __file__, path], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout))
    one_chunk_mb = CHUNK * NUM_TEXTS * 4 / 2**20
    print(json.dumps({"rows": rows, "one_chunk_of_scores_mb": round(one_chunk_mb, 1)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
