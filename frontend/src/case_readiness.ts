/**
 * Model readiness on the case page: a first box on a volume the model has not seen yet is answered on
 * its own slice at once, and the mask grows as the rest of the structure's slices are encoded. The page
 * says how far that is ("preparing the model: 12 of 34 slices"), asks again by itself until the answer
 * is complete, and retries by itself when no model worker answered in time.
 *
 * Effort counts real actions only: a box or click counts as a click, and the request that carried it as
 * one model call, once the model has answered it (prompts given while a request runs go with the next
 * one, and count with its answer). Follow-up requests while slices arrive, retries, and requests that
 * were never answered count as nothing.
 */

import { ApiError } from "./api";

/** How long to wait before asking again while slices are still being encoded. */
export const POLL_MS = 700;
/** Waits before each retry of a request no model worker answered (504) or that failed on the way. */
export const RETRY_MS = [1_000, 2_000, 4_000, 8_000, 15_000];

export interface Readiness {
  slices_ready: number;
  slices_total: number;
  pending: boolean;
}

/** "preparing the model: 12 of 34 slices" while pending, "" once every slice of the structure is in. */
export function readinessText(r: Readiness): string {
  if (!r.pending) return "";
  return `preparing the model: ${r.slices_ready} of ${r.slices_total} slices`;
}

export type NextStep =
  | { kind: "done" }
  | { kind: "poll"; afterMs: number }
  | { kind: "retry"; afterMs: number }
  | { kind: "fail" };

/** What to do after an answer: ask again while slices are still arriving, else nothing. */
export function afterAnswer(r: Readiness): NextStep {
  return r.pending ? { kind: "poll", afterMs: POLL_MS } : { kind: "done" };
}

/**
 * What to do after a failed request (`attempt`: retries made so far): retry by itself when no worker
 * answered in time (504), the model was not ready (503) or the network failed; else (a bad prompt, a lost
 * lock) let the page say what failed.
 */
export function afterError(err: unknown, attempt: number): NextStep {
  const transient = err instanceof ApiError && [0, 503, 504].includes(err.status);
  if (!transient || attempt >= RETRY_MS.length) return { kind: "fail" };
  return { kind: "retry", afterMs: RETRY_MS[attempt] };
}

/**
 * Prompts given but not answered yet, per class: counted into effort only once the model answers the
 * request that carried them. A prompt given while a request runs waits for the next request (which
 * carries it), so each request that asked something new is one model call, however the prompts and
 * the requests interleave.
 */
export class UnansweredPrompts {
  private waiting = new Map<number, number>();

  /** A box or click placed for class `label`. */
  prompt(label: number): void {
    this.waiting.set(label, (this.waiting.get(label) ?? 0) + 1);
  }

  /** A request of class `label` goes out: how many prompts it carries (hand it to `answered`). */
  sent(label: number): number {
    return this.waiting.get(label) ?? 0;
  }

  /**
   * The model answered a request of class `label` that carried `carried` prompts: the prompts to count
   * as clicks, and whether the request was a model call (it carried any).
   */
  answered(label: number, carried: number): { clicks: number; modelCall: boolean } {
    const waiting = this.waiting.get(label) ?? 0;
    const clicks = Math.min(carried, waiting); // fewer when Esc dropped them meanwhile
    if (waiting > clicks) this.waiting.set(label, waiting - clicks);
    else this.waiting.delete(label);
    return { clicks, modelCall: clicks > 0 };
  }

  /** The class's prompts were dropped (Esc, a new version) or their request failed for good. */
  forget(label?: number): void {
    if (label === undefined) this.waiting.clear();
    else this.waiting.delete(label);
  }
}
