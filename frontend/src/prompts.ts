/**
 * Model prompts of one class, as the interactive endpoint takes them: one 3D box and the clicks since.
 *
 * The model segments slice by slice along the volume's third axis `k`, within the box's `k` range,
 * starting from its middle slice. A box is drawn on a 2D view, which gives two of its three extents;
 * the third comes from the box drawn before it (so a box on an axial view and one on a coronal or
 * sagittal view make the 3D box), or is the drawn slice alone for a first box.
 */

import type { BoxPrompt, ClickPrompt } from "./api";
import type { Vec3 } from "./orientation";

/** A box dragged on a 2D view: `lo[normal] === hi[normal]` is the slice it was drawn on. */
export interface DrawnBox {
  lo: Vec3;
  hi: Vec3;
  /** The native axis the view looks along. */
  normal: number;
}

/** The prompts of one class: its box and the clicks since, oldest first. */
export interface PromptSession {
  box: BoxPrompt | null;
  clicks: ClickPrompt[];
}

export function mergeBox(previous: BoxPrompt | null, drawn: DrawnBox): BoxPrompt {
  const lo: Vec3 = [...drawn.lo];
  const hi: Vec3 = [...drawn.hi];
  if (previous) {
    const n = drawn.normal;
    lo[n] = Math.min(previous.lo[n], drawn.lo[n]);
    hi[n] = Math.max(previous.hi[n], drawn.hi[n]);
  }
  return { lo, hi };
}

/** A box around a class's current voxels (from a pre-segmentation) for clicks given before any box. */
export function padBox(box: { lo: Vec3; hi: Vec3 }, dims: Vec3, margin = 2): BoxPrompt {
  const lo = box.lo.map((v) => Math.max(0, v - margin)) as Vec3;
  const hi = box.hi.map((v, n) => Math.min(dims[n] - 1, v + margin)) as Vec3;
  return { lo, hi };
}

export function describeBox(box: BoxPrompt): string {
  return ["i", "j", "k"].map((a, n) => `${a} ${box.lo[n]}–${box.hi[n]}`).join(", ");
}
