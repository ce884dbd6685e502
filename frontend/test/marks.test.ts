import assert from "node:assert/strict";
import { test } from "node:test";

import { mmToTile } from "../src/marks";

// an axial view 200 px wide at (10, 20), showing x -50..50 mm and y -100..100 mm
const axial = { axCorSag: 0, leftTopWidthHeight: [10, 20, 200, 400], leftTopMM: [-50, -100], fovMM: [100, 200] };

test("a world point lands where NiiVue draws it on an axial view (y up on the screen)", () => {
  assert.deepEqual(mmToTile(axial, [-50, -100, 7]), [10, 420]); // left, bottom
  assert.deepEqual(mmToTile(axial, [50, 100, 7]), [210, 20]); // right, top
  assert.deepEqual(mmToTile(axial, [0, 0, 0]), [110, 220]);
});

test("coronal views show x and z, sagittal views y and z", () => {
  const coronal = { ...axial, axCorSag: 1 };
  assert.deepEqual(mmToTile(coronal, [50, 999, 100]), [210, 20]);
  const sagittal = { ...axial, axCorSag: 2 };
  assert.deepEqual(mmToTile(sagittal, [999, -50, -100]), [10, 420]);
});

test("a mirrored (radiological) view puts +x on the left", () => {
  const mirrored = { ...axial, leftTopWidthHeight: [210, 20, -200, 400] };
  assert.deepEqual(mmToTile(mirrored, [50, 0, 0]), [10, 220]);
  assert.deepEqual(mmToTile(mirrored, [-50, 0, 0]), [210, 220]);
});
