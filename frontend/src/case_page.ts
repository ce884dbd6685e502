/**
 * The case page (platform/templates/annotation/case.html): takes the case's lock and keeps it alive,
 * shows the volume and the head version's mask, edits (brush, eraser, model prompts, undo/redo), saves
 * new versions with their effort (autosave when dirty), and hands the case to review.
 *
 * The page composes one module per concern: case_lock (the lock), case_versions (saving, versions and
 * the local backup), case_prompts (prompts and model calls), case_review (the reviewer's panel),
 * case_effort (the effort clock), case_controls (buttons and keyboard), case_ui (messages, metrics).
 * Its data comes from the `#case-data` JSON block the Django view renders (see `PageData`).
 */

import { Api, ApiError, type Lock } from "./api";
import { bindControls, crispRemembered, renderControls, type CaseActions } from "./case_controls";
import { showEffortEverySecond, trackEffort } from "./case_effort";
import { CaseLock } from "./case_lock";
import { CasePrompts, MODEL_CALL } from "./case_prompts";
import { CaseReview, type Decision } from "./case_review";
import { $, Notices, type PageMetrics, type StatusKind } from "./case_ui";
import { CaseVersions, type SaveReason, type VersionRef } from "./case_versions";
import { defaultPreset, type LabelClass } from "./display";
import { EffortCounter } from "./effort";
import { labelCounts } from "./labelmap";
import type { Tool } from "./shortcuts";
import { Viewer } from "./viewer";

export type { PageMetrics } from "./case_ui";

export interface PageData {
  apiBase: string;
  csrfToken?: string | null;
  user: string;
  case: { id: number; status: string; project: number; modality: string };
  imageUrl: string;
  /** The head version's mask, null when the case has no version yet. */
  maskUrl: string | null;
  head: { id: number; number: number } | null;
  labels: LabelClass[];
  lock: Lock | null;
  canAnnotate: boolean;
  canReview: boolean;
  /** A case page's address with "{id}" for the case id, e.g. "/cases/{id}/". */
  caseUrl: string;
  worklistUrl: string;
  heartbeatSeconds?: number;
  autosaveSeconds?: number;
}

declare global {
  interface Window {
    annotator?: { page: CasePage; metrics: PageMetrics };
  }
}

export class CasePage implements CaseActions {
  readonly api: Api;
  readonly viewer: Viewer;
  readonly effort = new EffortCounter(performance.now(), document.visibilityState === "visible");
  readonly metrics: PageMetrics = { ready: false, firstPaintMs: null, modelCalls: [], saves: [], errors: [] };
  readonly notices = new Notices(this.metrics);
  readonly lock: CaseLock;
  readonly versions: CaseVersions;
  readonly prompts: CasePrompts;
  readonly reviewer: CaseReview;
  private leaving = false;
  private countsTimer = 0;

  constructor(readonly data: PageData) {
    this.api = new Api({ base: data.apiBase, csrfToken: data.csrfToken });
    const canvas = $("viewer-canvas") as HTMLCanvasElement;
    this.viewer = new Viewer(canvas, data.labels, {
      onStroke: () => this.effort.stroke(),
      onChange: () => this.changed(),
      onBox: (box) => this.prompts.box(box),
      onClick: (click) => this.prompts.click(click),
      onLocation: (text) => ($("location").textContent = text),
      onInput: () => this.effort.input(performance.now()),
    });
    const failure = (err: unknown, what: string) => this.apiFailure(err, what);
    this.lock = new CaseLock(this.api, this.caseId, this.notices, () => this.lockLost());
    const shared = {
      api: this.api,
      caseId: this.caseId,
      viewer: this.viewer,
      effort: this.effort,
      lock: this.lock,
      notices: this.notices,
      metrics: this.metrics,
      failure,
    };
    this.versions = new CaseVersions(
      { ...shared, updated: () => this.updateUi(), reloaded: () => this.prompts.clearAll() },
      data.head,
    );
    this.prompts = new CasePrompts({ ...shared, labelName: (value) => this.labelName(value) });
    this.reviewer = new CaseReview({
      api: this.api,
      caseId: this.caseId,
      case: data.case,
      notices: this.notices,
      head: () => this.versions.head,
      failure,
    });
  }

  get caseId(): number {
    return this.data.case.id;
  }

  get labels(): readonly LabelClass[] {
    return this.data.labels;
  }

  /** This page holds the case and may edit it. */
  get editable(): boolean {
    return this.lock.held;
  }

  get dirty(): boolean {
    return this.versions.dirty;
  }

  get head(): VersionRef | null {
    return this.versions.head;
  }

  async start(): Promise<void> {
    const t0 = performance.now();
    renderControls();
    bindControls(this);
    trackEffort(this.effort);
    this.bindLifecycle();
    const { canAnnotate, canReview } = this.data;
    const editable = await this.lock.acquire({ status: this.data.case.status, canAnnotate, canReview });
    this.viewer.editable = editable;
    document.body.classList.toggle("read-only", !editable);
    try {
      await this.viewer.open({
        imageUrl: this.data.imageUrl,
        imageName: `case-${this.caseId}.nii.gz`,
        maskUrl: this.data.maskUrl,
        preset: defaultPreset(this.data.case.modality),
      });
    } catch (err) {
      this.notices.fail(`The volume could not be shown: ${(err as Error).message}`);
      throw err;
    }
    this.versions.loaded();
    if (crispRemembered()) {
      this.viewer.setCrisp(true);
      const crisp = document.getElementById("crisp") as HTMLInputElement | null;
      if (crisp) crisp.checked = true;
    }
    ($("window-preset") as HTMLSelectElement).value = this.viewer.preset.key;
    ($("layout") as HTMLSelectElement).value = this.viewer.layout;
    if (this.viewer.softwareGL) {
      this.status("WebGL runs in software here: the 3D view is off by default (Layout brings it back).", "warn");
    }
    this.pickClass(this.data.labels[0]?.value ?? 1);
    this.metrics.firstPaintMs = performance.now() - t0;
    this.versions.offerBackup(editable);
    this.refreshCounts();
    this.updateUi();
    if (editable) {
      this.lock.keepAlive(this.data.heartbeatSeconds ?? 60);
      this.versions.autosaveEvery(this.data.autosaveSeconds ?? 30);
    }
    showEffortEverySecond(this.effort);
    this.metrics.ready = true;
    document.body.dataset.viewerReady = "1";
  }

  /** Leaving or hiding the page keeps unsaved edits in this browser; a page left clean frees the case. */
  private bindLifecycle(): void {
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "hidden") this.versions.backupNow();
    });
    // a page left with nothing unsaved frees the case now rather than when its lease runs out
    window.addEventListener("pagehide", () => {
      if (this.editable && !this.dirty && !this.leaving && !this.lock.lost) void this.lock.release(true);
    });
    window.addEventListener("beforeunload", (e) => {
      if (this.editable && this.dirty && !this.leaving) {
        this.versions.backupNow();
        e.preventDefault();
        e.returnValue = "";
      }
    });
  }

  /** The lock went to someone else: read-only, the edits kept in this browser. */
  private lockLost(): void {
    this.viewer.editable = false;
    this.viewer.setTool("navigate");
    this.versions.backupNow();
    document.body.classList.add("read-only");
    this.updateUi();
  }

  // ---- edits ------------------------------------------------------------------------------------------

  private changed(): void {
    this.versions.changed();
    this.updateUi();
    window.clearTimeout(this.countsTimer);
    this.countsTimer = window.setTimeout(() => this.refreshCounts(), 250);
  }

  pickClass(value: number): void {
    this.viewer.setPenValue(value);
    for (const b of document.querySelectorAll<HTMLButtonElement>(".class-pick")) {
      b.setAttribute("aria-pressed", String(Number(b.dataset.value) === value));
    }
    this.prompts.show();
  }

  setTool(tool: Tool): void {
    if (!this.editable && tool !== "navigate") {
      this.status("This case is read only here.", "warn");
      return;
    }
    this.viewer.setTool(tool);
    for (const b of document.querySelectorAll<HTMLButtonElement>(".tool")) {
      b.setAttribute("aria-pressed", String(b.dataset.tool === tool));
    }
  }

  setBrushSize(size: number): void {
    const value = this.viewer.setPenSize(size);
    ($("brush-size") as HTMLInputElement).value = String(value);
    $("brush-size-value").textContent = String(value);
  }

  undo(): void {
    if (this.editable && !this.viewer.undo()) this.status("Nothing to undo.");
  }

  redo(): void {
    if (this.editable && !this.viewer.redo()) this.status("Nothing to redo.");
  }

  clearPrompts(): void {
    this.prompts.clear();
  }

  undoClick(): void {
    if (this.editable) this.prompts.undoClick();
  }

  // ---- the case's way: save, submit, next, review -------------------------------------------------

  /** Save the drawing as a new version on the head; true when it is saved (or nothing needed saving). */
  save(reason: SaveReason = "manual"): Promise<boolean> {
    return this.versions.save(reason);
  }

  async submit(): Promise<void> {
    if (!this.editable) return;
    if (!(await this.save("submit"))) return;
    const head = this.head;
    if (!head) return;
    try {
      await this.lock.withLock(() => this.api.submit(this.caseId, head.id));
    } catch (err) {
      this.apiFailure(err, "Submitting");
      return;
    }
    this.lock.handOver();
    this.viewer.editable = false;
    this.setTool("navigate");
    this.versions.stopAutosave();
    this.versions.backup.clear();
    document.body.classList.add("read-only");
    this.notices.badge("submitted", "submitted");
    this.notices.banner(`Submitted version ${head.number} for review. Space or "Next case" opens the next one.`, "ok");
    this.updateUi();
  }

  async nextCase(): Promise<void> {
    if (this.editable && this.dirty && !(await this.save("next"))) return;
    try {
      const next = await this.api.nextCase(this.data.case.project);
      if (!next) {
        this.status("No case is left for you in this worklist.", "ok");
        return;
      }
      if (next.id === this.caseId) {
        this.status("This is the highest-ranked case you can take: submit it first, or pick another in the worklist.", "warn");
        return;
      }
      this.leaving = true;
      if (this.editable) await this.lock.release();
      window.location.assign(this.data.caseUrl.replace("{id}", String(next.id)));
    } catch (err) {
      this.apiFailure(err, "Taking the next case");
    }
  }

  review(decision: Decision): Promise<void> {
    return this.reviewer.decide(decision);
  }

  private apiFailure(err: unknown, what: string): void {
    if (err instanceof ApiError) {
      const head = err.staleHead;
      if (head) {
        this.versions.staleDialog(head, err.message);
        return;
      }
      if (err.status === 423) {
        this.lock.lose(err);
        return;
      }
      if (err.status === 404 && what === MODEL_CALL) {
        this.notices.fail(`${what} failed: the interactive model is not available on this server (404).`);
        return;
      }
      this.notices.fail(`${what} failed: ${err.message}`);
      return;
    }
    this.notices.fail(`${what} failed: ${(err as Error).message}`);
  }

  // ---- UI ---------------------------------------------------------------------------------------------

  private labelName(value: number): string {
    return this.data.labels.find((l) => l.value === value)?.name ?? `label ${value}`;
  }

  private refreshCounts(): void {
    if (!this.viewer.orientation) return;
    const counts = labelCounts(this.viewer.drawing);
    for (const el of document.querySelectorAll<HTMLElement>("[data-count-for]")) {
      const n = counts[Number(el.dataset.countFor)];
      el.textContent = n ? `${n.toLocaleString()} vx` : "";
    }
  }

  private updateUi(): void {
    const edit = this.editable;
    for (const el of document.querySelectorAll<HTMLButtonElement | HTMLInputElement>("button.edit, .edit input")) {
      el.disabled = !edit;
    }
    ($("undo") as HTMLButtonElement).disabled = !edit || !this.viewer.history.canUndo;
    ($("redo") as HTMLButtonElement).disabled = !edit || !this.viewer.history.canRedo;
    ($("save") as HTMLButtonElement).disabled = !edit || (!this.dirty && this.head !== null);
    $("review-panel").hidden = !(this.data.canReview && this.data.case.status === "submitted");
    $("next-case").hidden = !this.data.canAnnotate;
    const head = this.head ? `Version ${this.head.number}` : "No version saved yet";
    $("version-info").textContent = `${head}${this.dirty ? " · unsaved edits" : ""}.`;
    document.body.classList.toggle("dirty", this.dirty);
  }

  status(text: string, kind: StatusKind = ""): void {
    this.notices.status(text, kind);
  }
}

export function readPageData(id = "case-data"): PageData {
  const el = document.getElementById(id);
  if (!el?.textContent) throw new Error(`The page lacks its #${id} JSON block.`);
  return JSON.parse(el.textContent) as PageData;
}

async function main(): Promise<void> {
  const page = new CasePage(readPageData());
  window.annotator = { page, metrics: page.metrics };
  await page.start();
}

if (typeof document !== "undefined" && document.getElementById("case-data")) {
  main().catch((err) => {
    console.error(err);
    const status = document.getElementById("status");
    if (status) {
      status.textContent = `The viewer could not start: ${(err as Error).message}`;
      status.className = "status error";
    }
  });
}
