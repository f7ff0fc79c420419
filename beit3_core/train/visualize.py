"""A PNG of sample images: masked patches shaded, each outlined green (visual token predicted right) or red."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from beit3_core.mdm import BEiT3ForMDM, ImageStream


@torch.no_grad()
def masked_prediction_grid(model: BEiT3ForMDM, stream: ImageStream, path: Path, max_images: int = 8) -> Path:
    """Draw up to `max_images` images of `stream` side by side and save them as a PNG."""
    model.eval()
    n = min(max_images, stream.batch_size)
    image, mask, tokens = stream.image[:n], stream.image_mask[:n], stream.visual_tokens[:n]
    hidden = model.beit3(image=image, image_mask=mask)[:, 1:]  # [n, P, D]
    correct = model.mim_head(hidden).argmax(-1) == tokens  # [n, P]

    config = model.config
    size, patch, grid = config.img_size, config.patch_size, config.grid_size
    pixels = ((image.permute(0, 2, 3, 1).float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu().numpy()
    canvas = Image.new("RGB", (n * (size + 8), size), "white")
    for i in range(n):
        tile = Image.fromarray(np.ascontiguousarray(pixels[i]))
        shade = Image.new("RGBA", tile.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(shade)
        for p in torch.nonzero(mask[i]).flatten().tolist():
            row, col = divmod(p, grid)
            box = (col * patch, row * patch, (col + 1) * patch - 1, (row + 1) * patch - 1)
            color = (0, 200, 0) if correct[i, p] else (220, 0, 0)
            draw.rectangle(box, fill=(0, 0, 0, 90), outline=(*color, 255))
        tile = Image.alpha_composite(tile.convert("RGBA"), shade).convert("RGB")
        canvas.paste(tile, (i * (size + 8), 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
