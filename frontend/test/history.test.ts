import assert from "node:assert/strict";
import { test } from "node:test";

import { DrawHistory } from "../src/history";

test("undo and redo walk the committed edits; a new edit drops the redo branch", () => {
  const h = new DrawHistory();
  const bitmap = new Uint8Array(10);
  h.reset(bitmap);
  assert.equal(h.commit(bitmap), false);
  bitmap.fill(1, 2, 5);
  assert.equal(h.commit(bitmap), true);
  bitmap.fill(2, 4, 8);
  h.commit(bitmap);
  const second = bitmap.slice();
  assert.ok(h.undo(bitmap));
  assert.deepEqual([...bitmap], [0, 0, 1, 1, 1, 0, 0, 0, 0, 0]);
  assert.ok(h.undo(bitmap));
  assert.deepEqual([...bitmap], new Array(10).fill(0));
  assert.equal(h.undo(bitmap), false);
  assert.ok(h.redo(bitmap));
  assert.ok(h.redo(bitmap));
  assert.deepEqual(bitmap, second);
  assert.equal(h.redo(bitmap), false);
  h.undo(bitmap);
  bitmap[9] = 3;
  h.commit(bitmap);
  assert.equal(h.canRedo, false);
});

test("uncommitted changes are committed before an undo, so undo takes back exactly them", () => {
  const h = new DrawHistory();
  const bitmap = new Uint8Array(4);
  h.reset(bitmap);
  bitmap[0] = 1;
  h.commit(bitmap);
  bitmap[1] = 1; // e.g. a model result not committed yet
  h.undo(bitmap);
  assert.deepEqual([...bitmap], [1, 0, 0, 0]);
});

test("the undo depth is bounded", () => {
  const h = new DrawHistory(3);
  const bitmap = new Uint8Array(8);
  h.reset(bitmap);
  for (let i = 0; i < 6; i++) {
    bitmap[i] = 1;
    h.commit(bitmap);
  }
  let n = 0;
  while (h.undo(bitmap)) n++;
  assert.equal(n, 3);
  assert.deepEqual([...bitmap], [1, 1, 1, 0, 0, 0, 0, 0]);
});

test("the top step names the newest edit: undo uncovers the one before, a no-op commit keeps it", () => {
  const h = new DrawHistory();
  const bitmap = new Uint8Array(4);
  h.reset(bitmap);
  assert.equal(h.top, 0);
  bitmap[0] = 1;
  h.commit(bitmap);
  const first = h.top;
  bitmap[1] = 2;
  h.commit(bitmap);
  const second = h.top;
  assert.ok(first > 0 && second !== first);
  assert.equal(h.commit(bitmap), false);
  assert.equal(h.top, second);
  h.undo(bitmap);
  assert.equal(h.top, first);
  h.redo(bitmap);
  assert.equal(h.top, second);
  h.reset(bitmap);
  assert.equal(h.top, 0);
});
