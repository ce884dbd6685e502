import assert from "node:assert/strict";
import { test } from "node:test";

import { describeBox, mergeBox, padBox } from "../src/prompts";

test("a first box drawn on a view is one slice thick along the view's axis", () => {
  assert.deepEqual(mergeBox(null, { lo: [2, 3, 7], hi: [9, 12, 7], normal: 2 }), { lo: [2, 3, 7], hi: [9, 12, 7] });
});

test("a box on an orthogonal view sets the third extent and keeps the previous one", () => {
  const axial = mergeBox(null, { lo: [2, 3, 7], hi: [9, 12, 7], normal: 2 });
  // drawn on a coronal view (looking along j, at row 8): new i and k extents, j from the axial box
  const box = mergeBox(axial, { lo: [1, 8, 4], hi: [10, 8, 11], normal: 1 });
  assert.deepEqual(box, { lo: [1, 3, 4], hi: [10, 12, 11] });
  assert.equal(describeBox(box), "i 1–10, j 3–12, k 4–11");
});

test("a padded box stays inside the volume", () => {
  assert.deepEqual(padBox({ lo: [0, 5, 1], hi: [3, 9, 4] }, [10, 10, 5]), { lo: [0, 3, 0], hi: [5, 9, 4] });
});
