/**
 * Label maps on the wire, as platform/annotation/masks.py reads them:
 *
 * - full: `{"labelmap": base64(gzip(uint8 voxels in NIfTI order))}`;
 * - delta against the parent version: `{"delta": [[start, length, value], ...]}`, runs sorted by start,
 *   not overlapping: voxels `start .. start + length - 1` take `value`.
 *
 * and the class mask that the interactive endpoint answers with (see api.ts, `InteractiveResult`).
 */

import { gunzipSync, gzipSync } from "fflate";

import { type Orientation, type Vec3 } from "./orientation";

export type Run = [start: number, length: number, value: number];

export type MaskPayload = { labelmap: string } | { delta: Run[] };

/** The runs that turn `parent` into `current` (both native order). */
export function deltaRuns(parent: Uint8Array, current: Uint8Array): Run[] {
  if (parent.length !== current.length) {
    throw new RangeError(`Cannot diff label maps of ${parent.length} and ${current.length} voxels.`);
  }
  const runs: Run[] = [];
  const n = current.length;
  let v = 0;
  while (v < n) {
    if (parent[v] === current[v]) {
      v++;
      continue;
    }
    const start = v;
    const value = current[v];
    v++;
    while (v < n && current[v] === value && parent[v] !== value) v++;
    runs.push([start, v - start, value]);
  }
  return runs;
}

/** `base` with `runs` written over it (a new array). */
export function applyRuns(base: Uint8Array, runs: readonly Run[]): Uint8Array {
  const out = base.slice();
  for (const [start, length, value] of runs) {
    if (start < 0 || length < 1 || start + length > out.length) {
      throw new RangeError(`Run [${start}, ${length}] lies outside the ${out.length} voxels.`);
    }
    out.fill(value, start, start + length);
  }
  return out;
}

export function bytesToBase64(bytes: Uint8Array): string {
  let binary = "";
  const chunk = 0x8000;
  for (let i = 0; i < bytes.length; i += chunk) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + chunk) as unknown as number[]);
  }
  return btoa(binary);
}

export function base64ToBytes(text: string): Uint8Array {
  const binary = atob(text);
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
}

/** base64(gzip(voxels)): the `labelmap` field. */
export function encodeLabelmap(native: Uint8Array): string {
  return bytesToBase64(gzipSync(native, { level: 6, mtime: 0 }));
}

export function decodeLabelmap(text: string, size: number): Uint8Array {
  const raw = gunzipSync(base64ToBytes(text));
  if (raw.length !== size) throw new RangeError(`The label map has ${raw.length} voxels, expected ${size}.`);
  return raw;
}

export interface PayloadChoice {
  payload: MaskPayload;
  /** Bytes of the JSON field that would be sent (the chosen one). */
  bytes: number;
  /** Bytes the other encoding would have taken (null when it was not possible). */
  otherBytes: number | null;
}

/**
 * The smaller of the full label map and the delta against `parent` (always the full map when there is no
 * parent version). The delta is tried first; the full map is only compressed when the delta is not tiny.
 */
export function choosePayload(parent: Uint8Array | null, current: Uint8Array): PayloadChoice {
  if (parent === null) {
    const labelmap = encodeLabelmap(current);
    return { payload: { labelmap }, bytes: labelmap.length, otherBytes: null };
  }
  const delta = deltaRuns(parent, current);
  const deltaBytes = JSON.stringify(delta).length;
  // a gzip stream of the full map never goes below ~1/1000 of the voxels; below that the delta wins
  if (deltaBytes < Math.max(256, current.length / 1200)) {
    return { payload: { delta }, bytes: deltaBytes, otherBytes: null };
  }
  const labelmap = encodeLabelmap(current);
  return deltaBytes <= labelmap.length
    ? { payload: { delta }, bytes: deltaBytes, otherBytes: labelmap.length }
    : { payload: { labelmap }, bytes: labelmap.length, otherBytes: deltaBytes };
}

/** A class mask from the model: non-zero voxels (native order, whole volume) are the class. */
export interface ClassMask {
  label: number;
  mask: Uint8Array;
}

export function classMaskFrom(o: Orientation, label: number, encoded: string): ClassMask {
  return { label, mask: decodeLabelmap(encoded, o.size) };
}

/**
 * Replace class `label` in the drawing (RAS order) with `cm`: the class is cleared everywhere, then set
 * where the mask is non-zero and the voxel is background (other classes stay). Returns the class's voxel
 * count afterwards.
 */
export function replaceClass(o: Orientation, draw: Uint8Array, cm: ClassMask): number {
  const { label, mask } = cm;
  for (let v = 0; v < draw.length; v++) if (draw[v] === label) draw[v] = 0;
  let voxels = 0;
  const [I, J, K] = o.dims;
  const [xl, yl, zl] = o.luts;
  let src = 0;
  for (let k = 0; k < K; k++) {
    for (let j = 0; j < J; j++) {
      const base = yl[j] + zl[k];
      for (let i = 0; i < I; i++) {
        if (mask[src++] !== 0) {
          const d = xl[i] + base;
          if (draw[d] === 0) {
            draw[d] = label;
            voxels++;
          }
        }
      }
    }
  }
  return voxels;
}

/** The bounding box of `label` in a native-order map, or null when the map has none of it. */
export function labelBox(o: Orientation, native: Uint8Array, label: number): { lo: Vec3; hi: Vec3 } | null {
  const [I, J, K] = o.dims;
  const lo: Vec3 = [I, J, K];
  const hi: Vec3 = [-1, -1, -1];
  let v = 0;
  for (let k = 0; k < K; k++) {
    for (let j = 0; j < J; j++) {
      for (let i = 0; i < I; i++, v++) {
        if (native[v] !== label) continue;
        if (i < lo[0]) lo[0] = i;
        if (i > hi[0]) hi[0] = i;
        if (j < lo[1]) lo[1] = j;
        if (j > hi[1]) hi[1] = j;
        if (k < lo[2]) lo[2] = k;
        if (k > hi[2]) hi[2] = k;
      }
    }
  }
  return hi[0] < 0 ? null : { lo, hi };
}

/** Voxel count per label value (index = value). */
export function labelCounts(map: Uint8Array): Uint32Array {
  const counts = new Uint32Array(256);
  for (let v = 0; v < map.length; v++) counts[map[v]]++;
  return counts;
}
