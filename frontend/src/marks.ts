/**
 * Where things in the volume are drawn on NiiVue's 2D views, and the prompt marks drawn there: the box
 * outline and the +/- click markers, on a 2D canvas laid over NiiVue's (same size, no pointer events).
 *
 * `mmToTile` is NiiVue's own mapping (CoordinateTransform.frac2canvasPosWithTile) for one given view,
 * without its search for a view whose plane holds the point: a box edge lies half a voxel off the slice.
 */

import type { ClickPrompt } from "./api";
import type { SlicePrompts } from "./prompts";

/** A 2D view as NiiVue lays it out (`nv.screenSlices[tile]`), in canvas pixels and millimetres. */
export interface TileLayout {
  axCorSag: number;
  /** [left, top, width, height] in canvas pixels; a negative width is a mirrored (radiological) view. */
  leftTopWidthHeight: number[];
  /** The world (mm) point at the view's left and bottom, and the extent it shows, in screen axes. */
  leftTopMM: number[];
  fovMM: number[];
}

/** A world point (RAS mm) -> canvas pixels on view `tile`. */
export function mmToTile(tile: TileLayout, mm: ArrayLike<number>): [number, number] {
  // the screen's axes: axial x, y; coronal x, z; sagittal y, z
  const [sx, sy] = tile.axCorSag === 1 ? [mm[0], mm[2]] : tile.axCorSag === 2 ? [mm[1], mm[2]] : [mm[0], mm[1]];
  let fx = (sx - tile.leftTopMM[0]) / tile.fovMM[0];
  const fy = (sy - tile.leftTopMM[1]) / tile.fovMM[1];
  let [left, top, width, height] = tile.leftTopWidthHeight;
  if (width < 0) {
    left += width;
    width = -width;
    fx = 1 - fx;
  }
  return [left + fx * width, top + (1 - fy) * height];
}

export const MARK_STYLE = {
  box: "#4fd1ff",
  // discs that stand out from the crosshair (yellow) they sit on, and are neither the red nor the green
  // of a label set's first classes: a marker is not taken for a mask
  positive: "#ffffff",
  negative: "#ff5cf0",
  ink: "#111111",
};

/** Draw a view's prompts: `toCanvas` maps a native voxel coordinate (fractional) to canvas pixels. */
export function drawSlicePrompts(
  ctx: CanvasRenderingContext2D,
  marks: SlicePrompts,
  outline: readonly [number, number, number][] | null,
  toCanvas: (ijk: readonly number[]) => [number, number],
  dpr: number,
): void {
  if (outline) {
    const pts = outline.map(toCanvas);
    ctx.save();
    ctx.lineWidth = 2 * dpr;
    ctx.setLineDash([6 * dpr, 4 * dpr]);
    ctx.strokeStyle = MARK_STYLE.box;
    ctx.beginPath();
    pts.forEach(([x, y], n) => (n === 0 ? ctx.moveTo(x, y) : ctx.lineTo(x, y)));
    ctx.closePath();
    ctx.stroke();
    ctx.restore();
  }
  for (const click of marks.clicks) drawClick(ctx, click, toCanvas(click.ijk), dpr);
}

/** A click: a disc (white positive, magenta negative) ringed in dark, with a dark + or - on it. */
function drawClick(ctx: CanvasRenderingContext2D, click: ClickPrompt, [x, y]: [number, number], dpr: number): void {
  const r = 7 * dpr;
  const arm = 4 * dpr;
  ctx.save();
  ctx.beginPath();
  ctx.arc(x, y, r, 0, 2 * Math.PI);
  ctx.fillStyle = click.positive ? MARK_STYLE.positive : MARK_STYLE.negative;
  ctx.fill();
  ctx.lineWidth = 1.5 * dpr;
  ctx.strokeStyle = MARK_STYLE.ink;
  ctx.stroke();
  ctx.lineWidth = 2 * dpr;
  ctx.lineCap = "round";
  ctx.beginPath();
  ctx.moveTo(x - arm, y);
  ctx.lineTo(x + arm, y);
  if (click.positive) {
    ctx.moveTo(x, y - arm);
    ctx.lineTo(x, y + arm);
  }
  ctx.stroke();
  ctx.restore();
}
