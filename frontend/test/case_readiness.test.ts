import assert from "node:assert/strict";
import { test } from "node:test";

import { ApiError } from "../src/api";
import { RETRY_MS, UnansweredPrompts, afterAnswer, afterError, readinessText } from "../src/case_readiness";

test("readiness says how many slices of the structure are ready while the mask still grows", () => {
  assert.equal(readinessText({ slices_ready: 12, slices_total: 34, pending: true }), "preparing the model: 12 of 34 slices");
  assert.equal(readinessText({ slices_ready: 34, slices_total: 34, pending: false }), "");
  assert.deepEqual(afterAnswer({ slices_ready: 1, slices_total: 34, pending: true }).kind, "poll");
  assert.deepEqual(afterAnswer({ slices_ready: 34, slices_total: 34, pending: false }), { kind: "done" });
});

test("no answer in time is retried by itself, with growing waits, then reported", () => {
  const timeout = new ApiError(504, "No model worker answered within 30 s");
  assert.deepEqual(afterError(timeout, 0), { kind: "retry", afterMs: RETRY_MS[0] });
  assert.deepEqual(afterError(new ApiError(0, "cannot be reached"), 1), { kind: "retry", afterMs: RETRY_MS[1] });
  assert.deepEqual(afterError(timeout, RETRY_MS.length), { kind: "fail" });
  assert.deepEqual(afterError(new ApiError(400, "click outside the volume"), 0), { kind: "fail" });
  assert.deepEqual(afterError(new ApiError(423, "someone else holds this case"), 0), { kind: "fail" });
});

test("prompts count as clicks and a model call only once answered; follow-ups count nothing", () => {
  const u = new UnansweredPrompts();
  u.prompt(1); // the box
  const boxRequest = u.sent(1);
  u.prompt(2);
  assert.deepEqual(u.answered(1, boxRequest), { clicks: 1, modelCall: true });
  assert.deepEqual(u.answered(1, u.sent(1)), { clicks: 0, modelCall: false }); // asking again as slices arrive
  u.forget(2); // its request failed for good: never counted
  assert.deepEqual(u.answered(2, u.sent(2)), { clicks: 0, modelCall: false });
});

test("a prompt given while a request runs counts with the request that carries it", () => {
  const u = new UnansweredPrompts();
  u.prompt(1); // a box on one slice
  const first = u.sent(1);
  u.prompt(1); // the same structure on another view, while the first request runs
  assert.deepEqual(u.answered(1, first), { clicks: 1, modelCall: true });
  const second = u.sent(1); // the queued request: the merged box
  assert.deepEqual(u.answered(1, second), { clicks: 1, modelCall: true });
  const poll = u.sent(1); // asking again while slices arrive...
  u.prompt(1); // ... and a click meanwhile
  assert.deepEqual(u.answered(1, poll), { clicks: 0, modelCall: false });
  assert.deepEqual(u.answered(1, u.sent(1)), { clicks: 1, modelCall: true });
});

test("a retried request counts its prompts once, with its answer", () => {
  const u = new UnansweredPrompts();
  u.prompt(1);
  u.sent(1); // no worker answered in time: retried by itself
  u.prompt(1); // a click before the retry goes
  assert.deepEqual(u.answered(1, u.sent(1)), { clicks: 2, modelCall: true });
  u.prompt(1);
  const dropped = u.sent(1);
  u.forget(1); // Esc while it ran
  assert.deepEqual(u.answered(1, dropped), { clicks: 0, modelCall: false });
});
