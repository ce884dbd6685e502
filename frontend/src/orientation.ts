/**
 * Voxel orders of one volume: the server's (NIfTI order of the file, `i` fastest: `flat = i + I*(j + J*k)`,
 * see platform/annotation/masks.py) and NiiVue's drawing bitmap (the same voxels permuted and flipped to
 * RAS order, `x` fastest over `dimsRAS`). NiiVue converts a drawing on load (`loadDrawing`) with the
 * volume's `permRAS`; this module is that mapping in both directions, so label maps leave the browser in
 * the order the server reads.
 *
 * `permRAS[r] = ±(n + 1)`: RAS axis `r` runs along native axis `n`, reversed when negative.
 */

export type Vec3 = [number, number, number];

export interface Orientation {
  /** Native (file) voxel counts `[I, J, K]`. */
  readonly dims: Vec3;
  /** Voxel counts along the RAS axes (what NiiVue calls `dimsRAS[1..3]`). */
  readonly dimsRAS: Vec3;
  /** For native axis n: the RAS axis it becomes. */
  readonly rasAxis: Vec3;
  /** For native axis n: whether it is reversed in RAS order. */
  readonly flip: [boolean, boolean, boolean];
  /** For native axis n: offset into the drawing bitmap of each native coordinate along it. */
  readonly luts: [Int32Array, Int32Array, Int32Array];
  readonly size: number;
}

export class OrientationError extends Error {}

export function orientationFrom(permRAS: ArrayLike<number>, dims: ArrayLike<number>): Orientation {
  const native: Vec3 = [dims[0], dims[1], dims[2]];
  if (native.some((d) => !Number.isInteger(d) || d < 1)) {
    throw new OrientationError(`Volume dimensions must be three positive integers, got [${native}].`);
  }
  const perm = [permRAS[0], permRAS[1], permRAS[2]];
  const used = perm.map((p) => Math.abs(p) - 1).sort();
  if (used.join() !== "0,1,2") {
    throw new OrientationError(`permRAS must permute the axes ±1, ±2, ±3, got [${perm}].`);
  }
  const rasAxis: Vec3 = [0, 0, 0];
  const flip: [boolean, boolean, boolean] = [false, false, false];
  const dimsRAS: Vec3 = [0, 0, 0];
  for (let r = 0; r < 3; r++) {
    const n = Math.abs(perm[r]) - 1;
    rasAxis[n] = r;
    flip[n] = perm[r] < 0;
    dimsRAS[r] = native[n];
  }
  const strideRAS = [1, dimsRAS[0], dimsRAS[0] * dimsRAS[1]];
  const luts = native.map((size, n) => {
    const lut = new Int32Array(size);
    const stride = strideRAS[rasAxis[n]];
    for (let x = 0; x < size; x++) lut[x] = (flip[n] ? size - 1 - x : x) * stride;
    return lut;
  }) as [Int32Array, Int32Array, Int32Array];
  return { dims: native, dimsRAS, rasAxis, flip, luts, size: native[0] * native[1] * native[2] };
}

function checkSize(o: Orientation, array: ArrayLike<number>, what: string): void {
  if (array.length !== o.size) {
    throw new OrientationError(`${what} has ${array.length} voxels; the volume has ${o.dims.join("x")} = ${o.size}.`);
  }
}

/** Native (file) order -> drawing bitmap order. */
export function nativeToDraw(o: Orientation, native: Uint8Array, out: Uint8Array = new Uint8Array(o.size)): Uint8Array {
  checkSize(o, native, "The label map");
  const [I, J, K] = o.dims;
  const [xl, yl, zl] = o.luts;
  let src = 0;
  for (let k = 0; k < K; k++) {
    for (let j = 0; j < J; j++) {
      const base = yl[j] + zl[k];
      for (let i = 0; i < I; i++) out[xl[i] + base] = native[src++];
    }
  }
  return out;
}

/** Drawing bitmap order -> native (file) order, what the server stores. */
export function drawToNative(o: Orientation, draw: Uint8Array, out: Uint8Array = new Uint8Array(o.size)): Uint8Array {
  checkSize(o, draw, "The drawing");
  const [I, J, K] = o.dims;
  const [xl, yl, zl] = o.luts;
  let dst = 0;
  for (let k = 0; k < K; k++) {
    for (let j = 0; j < J; j++) {
      const base = yl[j] + zl[k];
      for (let i = 0; i < I; i++) out[dst++] = draw[xl[i] + base];
    }
  }
  return out;
}

/** A voxel in RAS order (NiiVue's `frac2vox`) -> native `[i, j, k]` (what prompts and the server use). */
export function rasToNative(o: Orientation, ras: ArrayLike<number>): Vec3 {
  const out: Vec3 = [0, 0, 0];
  for (let n = 0; n < 3; n++) {
    const r = Math.min(Math.max(Math.round(ras[o.rasAxis[n]]), 0), o.dims[n] - 1);
    out[n] = o.flip[n] ? o.dims[n] - 1 - r : r;
  }
  return out;
}

/** Native `[i, j, k]` -> the voxel in RAS order. */
export function nativeToRas(o: Orientation, ijk: ArrayLike<number>): Vec3 {
  const out: Vec3 = [0, 0, 0];
  for (let n = 0; n < 3; n++) out[o.rasAxis[n]] = o.flip[n] ? o.dims[n] - 1 - ijk[n] : ijk[n];
  return out;
}

/** The native axis that a NiiVue 2D view (0 axial, 1 coronal, 2 sagittal) looks along. */
export function nativeAxisOfView(o: Orientation, axCorSag: number): number {
  // axial slices are stacked along RAS z (axis 2), coronal along y (1), sagittal along x (0)
  const rasNormal = 2 - axCorSag;
  return o.rasAxis.indexOf(rasNormal);
}
