import assert from "node:assert/strict";
import { test } from "node:test";
import { gunzipSync } from "fflate";

import {
  applyRuns,
  base64ToBytes,
  choosePayload,
  classMaskFrom,
  decodeLabelmap,
  deltaRuns,
  encodeLabelmap,
  labelBox,
  labelCounts,
  replaceClass,
} from "../src/labelmap";
import { nativeToDraw, drawToNative, orientationFrom } from "../src/orientation";

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (s * 1664525 + 1013904223) >>> 0) / 2 ** 32);
}

test("delta runs turn the parent into the current map, sorted and not overlapping", () => {
  const r = rng(7);
  for (let trial = 0; trial < 20; trial++) {
    const parent = Uint8Array.from({ length: 500 }, () => (r() < 0.2 ? 1 + Math.floor(r() * 3) : 0));
    const current = parent.slice();
    for (let k = 0; k < 40; k++) current.fill(Math.floor(r() * 4), Math.floor(r() * 490), Math.floor(r() * 500));
    const runs = deltaRuns(parent, current);
    assert.deepEqual(applyRuns(parent, runs), current);
    for (let i = 1; i < runs.length; i++) assert.ok(runs[i][0] >= runs[i - 1][0] + runs[i - 1][1]);
    for (const [, length, value] of runs) assert.ok(length >= 1 && value >= 0 && value <= 255);
  }
});

test("a painted block is one run per row of the same value", () => {
  const parent = new Uint8Array(100);
  const current = parent.slice();
  current.fill(2, 10, 30);
  current.fill(1, 30, 35);
  assert.deepEqual(deltaRuns(parent, current), [
    [10, 20, 2],
    [30, 5, 1],
  ]);
  assert.deepEqual(deltaRuns(current, current), []);
});

test("the full label map is base64 of gzip of the voxels", () => {
  const map = Uint8Array.from({ length: 1000 }, (_, i) => i % 3);
  const text = encodeLabelmap(map);
  assert.deepEqual(gunzipSync(base64ToBytes(text)), map);
  assert.deepEqual(decodeLabelmap(text, 1000), map);
  assert.throws(() => decodeLabelmap(text, 999), /1000 voxels, expected 999/);
});

test("the smaller payload is chosen: full without a parent, delta for a small edit", () => {
  const size = 64 * 64 * 32;
  const parent = new Uint8Array(size);
  const small = parent.slice();
  small.fill(1, 5000, 5040);
  assert.ok("labelmap" in choosePayload(null, small).payload);
  const edit = choosePayload(parent, small);
  assert.deepEqual(edit.payload, { delta: [[5000, 40, 1]] });
  // scattered noise everywhere: many runs, the compressed full map is smaller
  const r = rng(3);
  const noisy = Uint8Array.from({ length: size }, () => (r() < 0.5 ? 1 : 0));
  const choice = choosePayload(parent, noisy);
  assert.ok("labelmap" in choice.payload);
  assert.ok(choice.otherBytes !== null && choice.bytes < choice.otherBytes);
});

test("a model mask replaces its class only: the class is cleared elsewhere, other classes stay", () => {
  const dims = [4, 3, 2];
  const o = orientationFrom([-1, 3, 2], dims);
  const idx = (i: number, j: number, k: number) => i + 4 * (j + 3 * k);
  const native = new Uint8Array(24);
  native[0] = 1; // class 1 where the model says no: cleared
  native[idx(1, 1, 1)] = 2; // class 2 where the model says yes: kept
  const draw = nativeToDraw(o, native);
  const mask = new Uint8Array(24);
  for (const [i, j] of [[1, 1], [2, 1], [1, 2], [2, 2]]) mask[idx(i, j, 1)] = 1;
  const voxels = replaceClass(o, draw, classMaskFrom(o, 1, encodeLabelmap(mask)));
  const after = drawToNative(o, draw);
  assert.equal(after[0], 0);
  assert.equal(after[idx(1, 1, 1)], 2);
  for (const [i, j] of [[2, 1], [1, 2], [2, 2]]) assert.equal(after[idx(i, j, 1)], 1);
  assert.equal(voxels, 3);
  assert.equal(labelCounts(after)[1], 3);
});

test("a model mask of the wrong size is refused", () => {
  const o = orientationFrom([1, 2, 3], [4, 3, 2]);
  assert.throws(() => classMaskFrom(o, 1, encodeLabelmap(new Uint8Array(8))), /8 voxels, expected 24/);
});

test("the bounding box of a class, in native voxels", () => {
  const o = orientationFrom([1, 2, 3], [4, 3, 2]);
  const native = new Uint8Array(24);
  native[1 + 4 * (2 + 3 * 0)] = 2;
  native[3 + 4 * (0 + 3 * 1)] = 2;
  native[0] = 1;
  assert.deepEqual(labelBox(o, native, 2), { lo: [1, 0, 0], hi: [3, 2, 1] });
  assert.equal(labelBox(o, native, 3), null);
});
