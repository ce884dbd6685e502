import assert from "node:assert/strict";
import { test } from "node:test";

import {
  drawToNative,
  nativeAxisOfView,
  nativeToDraw,
  nativeToRas,
  orientationFrom,
  rasToNative,
  OrientationError,
} from "../src/orientation";

/** NiiVue's own loadDrawing transform (calculateLoadDrawingTransform + transformBitmap), as reference. */
function niivueLoadDrawing(permRAS: number[], dims: number[], input: Uint8Array): Uint8Array {
  const d = [3, ...dims];
  const layout = [0, 0, 0];
  for (let i = 0; i < 3; i++) {
    for (let j = 0; j < 3; j++) {
      if (Math.abs(permRAS[i]) - 1 !== j) continue;
      layout[j] = i * Math.sign(permRAS[i]);
    }
  }
  let stride = 1;
  const instride = [1, 1, 1];
  const inflip = [false, false, false];
  for (let i = 0; i < 3; i++) {
    for (let j = 0; j < 3; j++) {
      if (Math.abs(layout[j]) !== i) continue;
      instride[j] = stride;
      if (layout[j] < 0 || Object.is(layout[j], -0)) inflip[j] = true;
      stride *= d[j + 1];
    }
  }
  const lut = (size: number, s: number, flip: boolean) =>
    Array.from({ length: size }, (_, i) => (flip ? size - 1 - i : i) * s);
  const [xl, yl, zl] = [0, 1, 2].map((n) => lut(d[n + 1], instride[n], inflip[n]));
  const out = new Uint8Array(input.length);
  let j = 0;
  for (let z = 0; z < d[3]; z++) for (let y = 0; y < d[2]; y++) for (let x = 0; x < d[1]; x++) out[xl[x] + yl[y] + zl[z]] = input[j++];
  return out;
}

const PERMS = [
  [1, 2, 3],
  [-1, 2, 3],
  [1, -2, 3],
  [-1, -2, -3],
  [2, 3, 1],
  [-3, 1, -2],
  [3, -1, 2],
];

for (const perm of PERMS) {
  test(`native <-> drawing order matches NiiVue for permRAS [${perm}]`, () => {
    const dims = [3, 4, 5];
    const o = orientationFrom(perm, dims);
    const native = Uint8Array.from({ length: 60 }, (_, i) => i);
    const draw = nativeToDraw(o, native);
    assert.deepEqual(draw, niivueLoadDrawing(perm, dims, native));
    assert.deepEqual(drawToNative(o, draw), native);
    // a voxel's RAS coordinates index the drawing where its value went
    for (const ijk of [[0, 0, 0], [2, 3, 4], [1, 2, 3], [2, 0, 1]] as [number, number, number][]) {
      const ras = nativeToRas(o, ijk);
      const d = ras[0] + o.dimsRAS[0] * (ras[1] + o.dimsRAS[1] * ras[2]);
      assert.equal(draw[d], native[ijk[0] + 3 * (ijk[1] + 4 * ijk[2])]);
      assert.deepEqual(rasToNative(o, ras), ijk);
    }
  });
}

test("the native axis a view looks along follows the permutation", () => {
  const o = orientationFrom([2, 3, 1], [3, 4, 5]); // RAS x is native j, y is k, z is i
  assert.equal(nativeAxisOfView(o, 0), 0); // axial: along RAS z = native i
  assert.equal(nativeAxisOfView(o, 1), 2); // coronal: along RAS y = native k
  assert.equal(nativeAxisOfView(o, 2), 1); // sagittal: along RAS x = native j
});

test("bad permutations and sizes are refused with a message", () => {
  assert.throws(() => orientationFrom([1, 1, 3], [2, 2, 2]), OrientationError);
  assert.throws(() => orientationFrom([1, 2, 3], [2, 0, 2]), /positive integers/);
  const o = orientationFrom([1, 2, 3], [2, 2, 2]);
  assert.throws(() => nativeToDraw(o, new Uint8Array(7)), /7 voxels; the volume has 2x2x2 = 8/);
});

test("rasToNative clamps voxels outside the volume", () => {
  const o = orientationFrom([-1, 2, 3], [4, 4, 4]);
  assert.deepEqual(rasToNative(o, [-2, 9, 1.6]), [3, 3, 2]);
});
