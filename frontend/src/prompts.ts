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

/** What a 2D view shows of a class's prompts: the box where its slice crosses it, the clicks on its slice. */
export interface SlicePrompts {
  /** The box's section on the slice, in native voxels (`lo[normal] === hi[normal] === slice`). */
  box: BoxPrompt | null;
  clicks: ClickPrompt[];
}

/** The prompts a view looking along native axis `normal` at slice `slice` shows. */
export function promptsOnSlice(session: PromptSession | null, normal: number, slice: number): SlicePrompts {
  if (!session) return { box: null, clicks: [] };
  const b = session.box;
  let box: BoxPrompt | null = null;
  if (b && b.lo[normal] <= slice && slice <= b.hi[normal]) {
    const lo: Vec3 = [...b.lo];
    const hi: Vec3 = [...b.hi];
    lo[normal] = hi[normal] = slice;
    box = { lo, hi };
  }
  return { box, clicks: session.clicks.filter((c) => c.ijk[normal] === slice) };
}

/**
 * The four corners of a box's section on a slice, on the outer edges of its voxels (native voxel
 * coordinates, half a voxel out from the corner voxels' centres along the two in-plane axes), in order
 * around the outline.
 */
export function outlineCorners(box: BoxPrompt, normal: number): Vec3[] {
  const [a, b] = [0, 1, 2].filter((n) => n !== normal);
  const at = (u: number, v: number): Vec3 => {
    const p: Vec3 = [0, 0, 0];
    p[normal] = box.lo[normal];
    p[a] = u;
    p[b] = v;
    return p;
  };
  const [a0, a1] = [box.lo[a] - 0.5, box.hi[a] + 0.5];
  const [b0, b1] = [box.lo[b] - 0.5, box.hi[b] + 0.5];
  return [at(a0, b0), at(a1, b0), at(a1, b1), at(a0, b1)];
}

const MODEL_NAMES: Record<string, string> = { litemedsam: "LiteMedSAM", native3d: "the project's 3D model" };

/** Which model answered, as the tools show it. The server names a model by family and weights hash
 * ("native3d/3f2a…", for the effort records); a person knows it by name and version: "answered by the
 * project's 3D model v3", "answered by LiteMedSAM v2", and the bundled LiteMedSAM (no version) "answered
 * by LiteMedSAM (bundled)". */
export function answeredBy(model: string | null | undefined, version?: number | string | null): string {
  if (!model) return "";
  const family = model.split("/")[0];
  const name = MODEL_NAMES[family] ?? model;
  if (version === null || version === undefined || version === "") {
    return family === "litemedsam" ? `answered by ${name} (bundled)` : `answered by ${name}`;
  }
  return `answered by ${name} v${version}`;
}
