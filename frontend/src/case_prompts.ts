/**
 * Model prompts of the case page and the calls they make: per class, one box and the clicks since
 * (see prompts.ts), sent to the interactive model one request at a time; prompts given while a request
 * runs go together in the next one. The answer replaces the class's voxels (one undo step); the viewer
 * draws the current class's prompts, and the tools say which model (and version) answered.
 *
 * Taking back the last click (Backspace) restores the mask from before its answer when that answer is
 * still the newest edit, and otherwise asks the model again with the prompts that remain.
 *
 * On a volume the model is still preparing, the answer covers the slices encoded so far: the page says
 * how far that is and asks again by itself until it is complete; a request no worker answered is retried
 * by itself. Effort counts a prompt and its model call only once answered (see case_readiness.ts).
 */

import type { Api, ClickPrompt } from "./api";
import type { CaseLock } from "./case_lock";
import { UnansweredPrompts, afterAnswer, afterError, readinessText } from "./case_readiness";
import { $, type Notices, type PageMetrics, fmtBytes } from "./case_ui";
import type { EffortCounter } from "./effort";
import { classMaskFrom, labelBox } from "./labelmap";
import { type DrawnBox, type PromptSession, answeredBy, describeBox, mergeBox, padBox } from "./prompts";
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

/** A model answer of a class: after how many clicks, the undo step it made (0 when it changed nothing). */
interface Answer {
  clicks: number;
  step: number;
  /** The drawing's newest undo step right after the answer. */
  top: number;
}

export class CasePrompts {
  private sessions = new Map<number, PromptSession>();
  private busy = false;
  private queued: number | null = null;
  private answers = new Map<number, Answer[]>();
  private unanswered = new UnansweredPrompts();
  /** A follow-up request waiting to go (slices still arriving, or a retry), per class. */
  private followUps = new Map<number, ReturnType<typeof setTimeout>>();

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
    const label = this.ctx.viewer.penValue;
    this.unanswered.prompt(label);
    const previous = this.sessions.get(label)?.box ?? null;
    this.sessions.set(label, { box: mergeBox(previous, drawn), clicks: [] });
    this.answers.delete(label);
    this.show();
    void this.call(label);
  }

  /** Clicks refine the class's interaction; without a box yet, the box around the class's voxels is used. */
  click(click: ClickPrompt): void {
    const { viewer, notices, labelName } = this.ctx;
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
    this.unanswered.prompt(label);
    s.clicks.push(click);
    this.show();
    void this.call(label);
  }

  /**
   * Take back the current class's last click: its answer is undone when it is still the drawing's newest
   * step (no call needed), else the model answers the prompts that remain.
   */
  undoClick(): void {
    const { viewer, notices, labelName } = this.ctx;
    const label = viewer.penValue;
    const s = this.sessions.get(label);
    const click = s?.clicks.pop();
    if (!s || !click) {
      notices.status(`No click of ${labelName(label)} to take back.`);
      return;
    }
    this.show();
    const answers = this.answers.get(label) ?? [];
    const last = answers.at(-1);
    const history = viewer.history;
    if (!this.busy && last && last.clicks === s.clicks.length + 1 && last.top === history.top) {
      answers.pop();
      if (last.step !== 0) viewer.undo();
      notices.status(`Took back the last ${click.positive ? "positive" : "negative"} click of ${labelName(label)}.`, "ok");
      return;
    }
    this.answers.delete(label);
    void this.call(label);
  }

  /** Forget the current class's prompts (Esc). */
  clear(): void {
    const label = this.ctx.viewer.penValue;
    this.sessions.delete(label);
    this.answers.delete(label);
    this.unanswered.forget(label);
    this.cancelFollowUp(label);
    this.show();
  }

  /** Forget every class's prompts (another version became the head). */
  clearAll(): void {
    this.sessions.clear();
    this.answers.clear();
    this.unanswered.forget();
    for (const label of [...this.followUps.keys()]) this.cancelFollowUp(label);
    this.show();
  }

  private cancelFollowUp(label: number): void {
    clearTimeout(this.followUps.get(label));
    this.followUps.delete(label);
    this.showReadiness("");
  }

  /** Ask again for `label` after `ms` (a new prompt of the class sends its own request meanwhile). */
  private followUp(label: number, ms: number, attempt: number): void {
    clearTimeout(this.followUps.get(label));
    this.followUps.set(
      label,
      setTimeout(() => {
        this.followUps.delete(label);
        if (this.sessions.get(label)?.box) void this.call(label, attempt);
      }, ms),
    );
  }

  /** "preparing the model: 12 of 34 slices" beside the tools ("" hides it). */
  private showReadiness(text: string): void {
    const el = document.getElementById("model-readiness");
    if (!el) return;
    el.textContent = text;
    el.hidden = !text;
  }

  /** Say what the current class's prompts are. */
  show(): void {
    const { viewer, labelName } = this.ctx;
    const s = this.sessions.get(viewer.penValue);
    const name = labelName(viewer.penValue);
    viewer.showPrompts(s ?? null);
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

  /**
   * One request at a time; prompts given meanwhile are sent together once it returns. `attempt`: retries
   * of this request so far (a follow-up while slices arrive starts again at 0).
   */
  private async call(label: number, attempt = 0): Promise<void> {
    if (this.busy) {
      this.queued = label;
      return;
    }
    clearTimeout(this.followUps.get(label));
    this.followUps.delete(label);
    const { api, caseId, viewer, effort, lock, notices, metrics, labelName } = this.ctx;
    const s = this.session(label);
    const box = s.box;
    if (!box) return;
    this.busy = true;
    document.body.classList.add("model-busy");
    const t0 = performance.now();
    if (attempt === 0) notices.status(`Asking the model for ${labelName(label)}…`);
    try {
      const clicks = [...s.clicks];
      const carried = this.unanswered.sent(label);
      const { result, bytesSent } = await lock.withLock(() => api.interactive(caseId, { label, box, clicks }));
      const cm = classMaskFrom(viewer.o, result.label ?? label, result.mask);
      const before = viewer.history.top;
      const voxels = viewer.applyClassMask(cm);
      const counted = this.unanswered.answered(label, carried);
      for (let i = 0; i < counted.clicks; i++) effort.click();
      if (counted.modelCall) effort.modelCall();
      const top = viewer.history.top;
      const answers = this.answers.get(label) ?? [];
      answers.push({ clicks: clicks.length, step: top === before ? 0 : top, top });
      this.answers.set(label, answers);
      this.showAnswer(result.model, result.model_version);
      const ms = performance.now() - t0;
      metrics.modelCalls.push({ ms, bytesSent, voxels, label });
      const preparing = readinessText(result);
      this.showReadiness(preparing);
      notices.status(
        `Model: ${voxels} voxels of ${labelName(label)} in ${Math.round(ms)} ms ` +
          `(model ${Math.round((result.seconds ?? 0) * 1000)} ms, sent ${fmtBytes(bytesSent)})` +
          (preparing ? `; ${preparing}, the mask grows as they arrive.` : "."),
        "ok",
      );
      const next = afterAnswer(result);
      if (next.kind === "poll") this.followUp(label, next.afterMs, 0);
    } catch (err) {
      const next = afterError(err, attempt);
      if (next.kind === "retry") {
        notices.status(`The model has not answered yet for ${labelName(label)}: asking again…`, "warn");
        this.followUp(label, next.afterMs, attempt + 1);
      } else {
        this.answers.delete(label);
        this.unanswered.forget(label);
        this.showReadiness("");
        this.ctx.failure(err, MODEL_CALL);
      }
    } finally {
      this.busy = false;
      document.body.classList.remove("model-busy");
      const queued = this.queued;
      this.queued = null;
      if (queued !== null) void this.call(queued);
    }
  }

  /** "answered by <model> v<version>" beside the tools. */
  private showAnswer(model: string | undefined, version: number | string | null | undefined): void {
    const el = document.getElementById("model-answer");
    if (!el) return;
    el.textContent = answeredBy(model, version);
    el.hidden = !el.textContent;
  }
}
