import assert from "node:assert/strict";
import { test } from "node:test";

import { locationText } from "../src/display";

const LABELS = [
  { value: 1, name: "anterior", colour: "#ff0000" },
  { value: 2, name: "posterior", colour: "#00ff00" },
];

test("the readout names the native voxel, the image value and the structure there", () => {
  assert.equal(locationText([18, 34, 12], 41, 1, LABELS), "voxel 18, 34, 12 · value 41 · anterior");
  assert.equal(locationText([0, 0, 0], -1000, 0, LABELS), "voxel 0, 0, 0 · value -1000 · background");
});

test("fractional values keep four significant digits; a missing value or label says so", () => {
  assert.equal(locationText([1, 2, 3], 0.123456, 2, LABELS), "voxel 1, 2, 3 · value 0.1235 · posterior");
  assert.equal(locationText([1, 2, 3], undefined, 7, LABELS), "voxel 1, 2, 3 · value – · label 7");
  assert.equal(locationText([1, 2, 3], Number.NaN, 0, LABELS), "voxel 1, 2, 3 · value – · background");
});
