/**
 * Model prompts of the case page and the calls they make: per class, one box and the clicks since
 * (see prompts.ts), sent to the interactive model one request at a time; prompts given while a request
 * runs go together in the next one. The answer replaces the class's voxels (one undo step).
 */

import type { Api, ClickPrompt } from "./api";
import type { CaseLock } from "./case_lock";
import { $, type Notices, type PageMetrics, fmtBytes } from "./case_ui";
import type { EffortCounter } from "./effort";
import { classMaskFrom, labelBox } from "./labelmap";
import { type DrawnBox, type PromptSession, describeBox, mergeBox, padBox } from "./prompts";
import type { Viewer } from "./viewer";

export interface PromptsContext {
  api: Api;
  caseId: number;
  viewer: Viewer;
  effort: EffortCounter;
  lock: CaseLock;
  notices: Notices;
  metrics: PageMetrics;
  labelName: (value: number) => string;
  /** A failed call: the page says what failed (and handles 409 and 423). */
  failure: (err: unknown, what: string) => void;
}

export const MODEL_CALL = "The model call";

export class CasePrompts {
  private sessions = new Map<number, PromptSession>();
  private busy = false;
  private queued: number | null = null;

  constructor(private readonly ctx: PromptsContext) {}

  private session(label: number): PromptSession {
    let s = this.sessions.get(label);
    if (!s) {
      s = { box: null, clicks: [] };
      this.sessions.set(label, s);
    }
    return s;
  }

  /** A new box starts a new interaction for the class; its extents merge with the previous box's. */
  box(drawn: DrawnBox): void {
    this.ctx.effort.click();
    const label = this.ctx.viewer.penValue;
    const previous = this.sessions.get(label)?.box ?? null;
    this.sessions.set(label, { box: mergeBox(previous, drawn), clicks: [] });
    this.show();
    void this.call(label);
  }

  /** Clicks refine the class's interaction; without a box yet, the box around the class's voxels is used. */
  click(click: ClickPrompt): void {
    const { viewer, effort, notices, labelName } = this.ctx;
    effort.click();
    const label = viewer.penValue;
    const s = this.session(label);
    if (!s.box) {
      const around = labelBox(viewer.o, viewer.nativeMask(), label);
      if (!around) {
        notices.status(`Draw a box around the ${labelName(label)} first (x), then click to correct it.`, "warn");
        return;
      }
      s.box = padBox(around, viewer.o.dims);
    }
    s.clicks.push(click);
    this.show();
    void this.call(label);
  }

  /** Forget the current class's prompts (Esc). */
  clear(): void {
    this.sessions.delete(this.ctx.viewer.penValue);
    this.show();
  }

  /** Forget every class's prompts (another version became the head). */
  clearAll(): void {
    this.sessions.clear();
  }

  /** Say what the current class's prompts are. */
  show(): void {
    const { viewer, labelName } = this.ctx;
    const s = this.sessions.get(viewer.penValue);
    const name = labelName(viewer.penValue);
    if (!s || (!s.box && s.clicks.length === 0)) {
      $("prompt-state").textContent = `No prompts for ${name} yet: draw a box (x) or click (c/v).`;
      return;
    }
    const pos = s.clicks.filter((c) => c.positive).length;
    const neg = s.clicks.length - pos;
    const box = s.box ? `box ${describeBox(s.box)}` : "no box";
    const flat = s.box && s.box.lo[2] === s.box.hi[2] ? " (one slice: draw it on a coronal or sagittal view too)" : "";
    $("prompt-state").textContent =
      `Prompts for ${name}: ${box}${flat}, ${pos} positive and ${neg} negative clicks (Esc forgets them).`;
  }

  /** One request at a time; prompts given meanwhile are sent together once it returns. */
  private async call(label: number): Promise<void> {
    if (this.busy) {
      this.queued = label;
      return;
    }
    const { api, caseId, viewer, effort, lock, notices, metrics, labelName } = this.ctx;
    const s = this.session(label);
    const box = s.box;
    if (!box) return;
    this.busy = true;
    document.body.classList.add("model-busy");
    const t0 = performance.now();
    effort.modelCall();
    notices.status(`Asking the model for ${labelName(label)}…`);
    try {
      const clicks = [...s.clicks];
      const { result, bytesSent } = await lock.withLock(() => api.interactive(caseId, { label, box, clicks }));
      const cm = classMaskFrom(viewer.o, result.label ?? label, result.mask);
      const voxels = viewer.applyClassMask(cm);
      const ms = performance.now() - t0;
      metrics.modelCalls.push({ ms, bytesSent, voxels, label });
      notices.status(
        `Model: ${voxels} voxels of ${labelName(label)} in ${Math.round(ms)} ms ` +
          `(model ${Math.round((result.seconds ?? 0) * 1000)} ms, sent ${fmtBytes(bytesSent)}).`,
        "ok",
      );
    } catch (err) {
      this.ctx.failure(err, MODEL_CALL);
    } finally {
      this.busy = false;
      document.body.classList.remove("model-busy");
      const queued = this.queued;
      this.queued = null;
      if (queued !== null) void this.call(queued);
    }
  }
}
