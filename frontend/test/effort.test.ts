import assert from "node:assert/strict";
import { test } from "node:test";

import { EffortCounter } from "../src/effort";

test("time counts while visible and in use, not while hidden or idle", () => {
  const e = new EffortCounter(0, true, 60);
  e.input(10_000);
  assert.equal(e.snapshot(30_000).seconds, 30);
  e.setVisible(false, 30_000);
  assert.equal(e.snapshot(500_000).seconds, 30); // hidden tab
  e.setVisible(true, 500_000);
  // no input after coming back: at most the idle allowance counts
  assert.equal(e.snapshot(1_000_000).seconds, 90);
  e.input(1_000_000);
  assert.equal(e.snapshot(1_005_000).seconds, 95);
});

test("counters sent with a save are consumed; what came in meanwhile stays", () => {
  const e = new EffortCounter(0);
  e.click();
  e.click();
  e.stroke();
  e.modelCall();
  const sent = e.snapshot(4_000);
  assert.deepEqual(sent, { seconds: 4, clicks: 2, strokes: 1, model_calls: 1 });
  e.stroke();
  e.consume(sent);
  assert.deepEqual(e.snapshot(5_000), { seconds: 1, clicks: 0, strokes: 1, model_calls: 0 });
});
