import assert from "node:assert/strict";
import { test } from "node:test";

import type { Vec3 } from "../src/orientation";
import { answeredBy, describeBox, mergeBox, outlineCorners, padBox, promptsOnSlice } from "../src/prompts";

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

test("a view shows the box where its slice crosses it, and the clicks on its slice only", () => {
  const session = {
    box: { lo: [2, 3, 4] as Vec3, hi: [8, 9, 6] as Vec3 },
    clicks: [
      { ijk: [5, 5, 5] as Vec3, positive: true },
      { ijk: [6, 4, 4] as Vec3, positive: false },
    ],
  };
  // axial-like view along k at k=5: the box's i/j rectangle, the click on k=5
  assert.deepEqual(promptsOnSlice(session, 2, 5), {
    box: { lo: [2, 3, 5], hi: [8, 9, 5] },
    clicks: [session.clicks[0]],
  });
  // along i at i=6: the j/k rectangle on that slice, the negative click there
  assert.deepEqual(promptsOnSlice(session, 0, 6), {
    box: { lo: [6, 3, 4], hi: [6, 9, 6] },
    clicks: [session.clicks[1]],
  });
  // outside the box's k range: no outline; nor a click
  assert.deepEqual(promptsOnSlice(session, 2, 7), { box: null, clicks: [] });
  assert.deepEqual(promptsOnSlice(null, 2, 5), { box: null, clicks: [] });
  // the session is not changed
  assert.deepEqual(session.box, { lo: [2, 3, 4], hi: [8, 9, 6] });
});

test("a box outline runs around the outer edges of its corner voxels, on its slice", () => {
  const corners = outlineCorners({ lo: [2, 3, 5], hi: [8, 9, 5] }, 2);
  assert.deepEqual(corners, [
    [1.5, 2.5, 5],
    [8.5, 2.5, 5],
    [8.5, 9.5, 5],
    [1.5, 9.5, 5],
  ]);
  // a one-voxel section along j is one voxel wide, not a line
  assert.deepEqual(outlineCorners({ lo: [4, 7, 1], hi: [4, 7, 3] }, 1), [
    [3.5, 7, 0.5],
    [4.5, 7, 0.5],
    [4.5, 7, 3.5],
    [3.5, 7, 3.5],
  ]);
});

test("the answering model is named with its version when the answer carries one", () => {
  assert.equal(answeredBy("native3d/3f2a9c01d4e5b6a7", 3), "answered by the project's 3D model v3");
  assert.equal(answeredBy("litemedsam/79d8c9dca6db4d69", null), "answered by LiteMedSAM (bundled)");
  assert.equal(answeredBy("litemedsam/79d8c9dca6db4d69"), "answered by LiteMedSAM (bundled)");
  assert.equal(answeredBy("litemedsam/0123456789abcdef", 2), "answered by LiteMedSAM v2");
  assert.equal(answeredBy("native3d", 0), "answered by the project's 3D model v0");
  assert.equal(answeredBy("someothernet/abc", 1), "answered by someothernet/abc v1");
  assert.equal(answeredBy(undefined, 2), "");
});
