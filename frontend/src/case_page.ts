/**
 * The case page (platform/templates/annotation/case.html): takes the case's lock and keeps it alive,
 * shows the volume and the head version's mask, edits (brush, eraser, model prompts, undo/redo), saves
 * new versions with their effort (autosave when dirty), and hands the case to review.
 *
 * Its data comes from the `#case-data` JSON block the Django view renders (see `PageData`).
 */

import { Api, ApiError, type BoxPrompt, type ClickPrompt, type Lock } from "./api";
import { WINDOW_PRESETS, defaultPreset, type LabelClass } from "./display";
import { EffortCounter, type Effort } from "./effort";
import {
  type MaskPayload,
  applyRuns,
  choosePayload,
  classMaskFrom,
  decodeLabelmap,
  labelBox,
  labelCounts,
} from "./labelmap";
import { type DrawnBox, describeBox, mergeBox, padBox } from "./prompts";
import { SHORTCUTS, type Tool, actionForKey, isTypingTarget } from "./shortcuts";
import { LAYOUTS, type Layout, Viewer } from "./viewer";

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

/** What browser tests and benchmarks read: model round trips and saves, as they happened. */
export interface PageMetrics {
  ready: boolean;
  firstPaintMs: number | null;
  modelCalls: { ms: number; bytesSent: number; voxels: number; label: number }[];
  saves: { ms: number; bytesSent: number; kind: "delta" | "labelmap"; version: number }[];
  errors: string[];
}

declare global {
  interface Window {
    annotator?: { page: CasePage; metrics: PageMetrics };
  }
}

const EDITABLE = new Set(["new", "in_progress", "rejected"]);
const BACKUP_PREFIX = "annotator:unsaved:";

function $(id: string): HTMLElement {
  const el = document.getElementById(id);
  if (!el) throw new Error(`The page lacks #${id}.`);
  return el;
}

function fmtBytes(n: number): string {
  return n < 1024 ? `${n} B` : n < 1024 * 1024 ? `${(n / 1024).toFixed(1)} kB` : `${(n / 1048576).toFixed(1)} MB`;
}

function fmtSeconds(s: number): string {
  if (s < 60) return `${Math.round(s)} s`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m} min ${Math.round(s % 60)} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

/** Unsaved edits kept in localStorage: the payload a save would send, on top of `parent`. */
type Backup = { parent: number | null; at: string } & MaskPayload;

interface PromptSession {
  box: BoxPrompt | null;
  clicks: ClickPrompt[];
}

export class CasePage {
  readonly api: Api;
  readonly viewer: Viewer;
  readonly effort = new EffortCounter(performance.now(), document.visibilityState === "visible");
  readonly metrics: PageMetrics = { ready: false, firstPaintMs: null, modelCalls: [], saves: [], errors: [] };
  /** The version the edits sit on, and its label map in native order (for deltas and merges). */
  head: { id: number; number: number } | null;
  private headNative: Uint8Array | null = null;
  private editGen = 0;
  private savedGen = 0;
  private saving: Promise<boolean> | null = null;
  private editable = false;
  private lockLost = false;
  private prompts = new Map<number, PromptSession>();
  private modelBusy = false;
  private modelQueued: number | null = null;
  private heartbeatTimer = 0;
  private autosaveTimer = 0;
  private leaving = false;
  private countsTimer = 0;
  private backupTimer = 0;

  constructor(readonly data: PageData) {
    this.api = new Api({ base: data.apiBase, csrfToken: data.csrfToken });
    this.head = data.head;
    const canvas = $("viewer-canvas") as HTMLCanvasElement;
    this.viewer = new Viewer(canvas, data.labels, {
      onStroke: () => this.effort.stroke(),
      onChange: () => this.changed(),
      onBox: (box) => this.boxPrompt(box),
      onClick: (click) => this.clickPrompt(click),
      onLocation: (text) => ($("location").textContent = text),
      onInput: () => this.effort.input(performance.now()),
    });
  }

  get dirty(): boolean {
    return this.editGen !== this.savedGen;
  }

  get caseId(): number {
    return this.data.case.id;
  }

  async start(): Promise<void> {
    const t0 = performance.now();
    this.renderStatic();
    this.bindControls();
    this.editable = await this.acquire();
    this.viewer.editable = this.editable;
    document.body.classList.toggle("read-only", !this.editable);
    try {
      await this.viewer.open({
        imageUrl: this.data.imageUrl,
        imageName: `case-${this.caseId}.nii.gz`,
        maskUrl: this.data.maskUrl,
        preset: defaultPreset(this.data.case.modality),
      });
    } catch (err) {
      this.fail(`The volume could not be shown: ${(err as Error).message}`);
      throw err;
    }
    this.headNative = this.head ? this.viewer.nativeMask() : null;
    this.savedGen = this.editGen;
    ($("window-preset") as HTMLSelectElement).value = this.viewer.preset.key;
    ($("layout") as HTMLSelectElement).value = this.viewer.layout;
    if (this.viewer.softwareGL) {
      this.status("WebGL runs in software here: the 3D view is off by default (Layout brings it back).", "warn");
    }
    this.pickClass(this.data.labels[0]?.value ?? 1);
    this.metrics.firstPaintMs = performance.now() - t0;
    this.offerBackup();
    this.refreshCounts();
    this.updateUi();
    if (this.editable) {
      const hb = (this.data.heartbeatSeconds ?? 60) * 1000;
      const auto = (this.data.autosaveSeconds ?? 30) * 1000;
      this.heartbeatTimer = window.setInterval(() => void this.heartbeat(), hb);
      this.autosaveTimer = window.setInterval(() => this.dirty && void this.save("autosave"), auto);
    }
    window.setInterval(() => this.showEffort(), 1000);
    this.metrics.ready = true;
    document.body.dataset.viewerReady = "1";
  }

  // ---- lock -------------------------------------------------------------------------------------------

  /** Take the case when this user may edit it; false means read-only, with the banner saying why. */
  private async acquire(): Promise<boolean> {
    const { status } = this.data.case;
    if (!this.data.canAnnotate) {
      this.banner(status === "submitted" && this.data.canReview ? "Submitted: review it below." : "Read only.", "info");
      return false;
    }
    if (!EDITABLE.has(status)) {
      const why =
        status === "submitted"
          ? "Submitted: it waits for review and cannot be edited."
          : status === "approved"
            ? "Approved: its mask is frozen."
            : `This case is ${status}; it cannot be edited.`;
      this.banner(why, "info");
      return false;
    }
    try {
      const lock = await this.api.take(this.caseId);
      this.showLock(lock);
      this.setStatusBadge("in_progress", "in progress");
      return true;
    } catch (err) {
      this.lockError(err, "taking the case");
      return false;
    }
  }

  private showLock(lock: Lock): void {
    const until = new Date(lock.expires_at);
    this.banner(
      `You hold this case (lease renewed while the page is open; until ${until.toLocaleTimeString()}).`,
      "ok",
    );
  }

  private lockError(err: unknown, doing: string): void {
    if (err instanceof ApiError && (err.status === 423 || err.holder)) {
      const who = err.holder ? `${err.holder} holds this case` : err.message;
      this.banner(`Read only: ${who}. Your view is not saved.`, "error");
      return;
    }
    this.banner(`Read only: ${doing} failed: ${(err as Error).message}`, "error");
  }

  /**
   * Run a call that needs the lock; when it answers 423 and nobody else holds the case (our lease ran
   * out, or a release from a page we left crossed this page's take), take the case again and retry once.
   */
  private async withLock<T>(call: () => Promise<T>): Promise<T> {
    try {
      return await call();
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 423 && !err.holder)) throw err;
      this.showLock(await this.api.take(this.caseId));
      return await call();
    }
  }

  private async heartbeat(): Promise<void> {
    if (!this.editable || this.lockLost) return;
    try {
      this.showLock(await this.withLock(() => this.api.heartbeat(this.caseId)));
    } catch (err) {
      if (err instanceof ApiError && err.status === 423) this.loseLock(err);
      else this.status(`The lock could not be renewed (${(err as Error).message}); retrying.`, "warn");
    }
  }

  private loseLock(err: ApiError): void {
    this.lockLost = true;
    this.editable = false;
    this.viewer.editable = false;
    this.viewer.setTool("navigate");
    this.backupNow();
    const who = err.holder ? `${err.holder} holds this case now` : err.message;
    this.banner(`You lost this case: ${who}. Your unsaved edits are kept in this browser.`, "error");
    document.body.classList.add("read-only");
    this.updateUi();
  }

  // ---- edits ------------------------------------------------------------------------------------------

  private changed(): void {
    this.editGen++;
    this.updateUi();
    window.clearTimeout(this.countsTimer);
    this.countsTimer = window.setTimeout(() => this.refreshCounts(), 250);
    window.clearTimeout(this.backupTimer);
    this.backupTimer = window.setTimeout(() => this.backupNow(), 2000);
  }

  pickClass(value: number): void {
    this.viewer.setPenValue(value);
    for (const b of document.querySelectorAll<HTMLButtonElement>(".class-pick")) {
      b.setAttribute("aria-pressed", String(Number(b.dataset.value) === value));
    }
    this.showPrompts();
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

  private setBrushSize(size: number): void {
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

  // ---- model prompts ----------------------------------------------------------------------------------

  private session(label: number): PromptSession {
    let s = this.prompts.get(label);
    if (!s) {
      s = { box: null, clicks: [] };
      this.prompts.set(label, s);
    }
    return s;
  }

  /** A new box starts a new interaction for the class; its extents merge with the previous box's. */
  private boxPrompt(drawn: DrawnBox): void {
    this.effort.click();
    const label = this.viewer.penValue;
    const previous = this.prompts.get(label)?.box ?? null;
    this.prompts.set(label, { box: mergeBox(previous, drawn), clicks: [] });
    this.showPrompts();
    void this.callModel(label);
  }

  /** Clicks refine the class's interaction; without a box yet, the box around the class's voxels is used. */
  private clickPrompt(click: ClickPrompt): void {
    this.effort.click();
    const label = this.viewer.penValue;
    const s = this.session(label);
    if (!s.box) {
      const around = labelBox(this.viewer.o, this.viewer.nativeMask(), label);
      if (!around) {
        this.status(`Draw a box around the ${this.labelName(label)} first (x), then click to correct it.`, "warn");
        return;
      }
      s.box = padBox(around, this.viewer.o.dims);
    }
    s.clicks.push(click);
    this.showPrompts();
    void this.callModel(label);
  }

  clearPrompts(): void {
    this.prompts.delete(this.viewer.penValue);
    this.showPrompts();
  }

  private showPrompts(): void {
    const s = this.prompts.get(this.viewer.penValue);
    const name = this.labelName(this.viewer.penValue);
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
  private async callModel(label: number): Promise<void> {
    if (this.modelBusy) {
      this.modelQueued = label;
      return;
    }
    const s = this.session(label);
    const box = s.box;
    if (!box) return;
    this.modelBusy = true;
    document.body.classList.add("model-busy");
    const t0 = performance.now();
    this.effort.modelCall();
    this.status(`Asking the model for ${this.labelName(label)}…`);
    try {
      const clicks = [...s.clicks];
      const { result, bytesSent } = await this.withLock(() =>
        this.api.interactive(this.caseId, { label, box, clicks }),
      );
      const cm = classMaskFrom(this.viewer.o, result.label ?? label, result.mask);
      const voxels = this.viewer.applyClassMask(cm);
      const ms = performance.now() - t0;
      this.metrics.modelCalls.push({ ms, bytesSent, voxels, label });
      this.status(
        `Model: ${voxels} voxels of ${this.labelName(label)} in ${Math.round(ms)} ms ` +
          `(model ${Math.round((result.seconds ?? 0) * 1000)} ms, sent ${fmtBytes(bytesSent)}).`,
        "ok",
      );
    } catch (err) {
      this.apiFailure(err, "The model call");
    } finally {
      this.modelBusy = false;
      document.body.classList.remove("model-busy");
      const queued = this.modelQueued;
      this.modelQueued = null;
      if (queued !== null) void this.callModel(queued);
    }
  }

  // ---- saving -----------------------------------------------------------------------------------------

  /** Save the drawing as a new version on the head; true when it is saved (or nothing needed saving). */
  async save(reason: "manual" | "autosave" | "submit" | "next" = "manual"): Promise<boolean> {
    if (!this.editable) return false;
    while (this.saving) await this.saving;
    if (!this.dirty && this.head) return true;
    this.saving = this.saveOnce(reason);
    try {
      return await this.saving;
    } finally {
      this.saving = null;
    }
  }

  private async saveOnce(reason: string): Promise<boolean> {
    const gen = this.editGen;
    const native = this.viewer.nativeMask();
    const choice = choosePayload(this.headNative, native);
    const effort: Effort = this.effort.snapshot(performance.now());
    const t0 = performance.now();
    this.status(reason === "autosave" ? "Autosaving…" : "Saving…");
    $("save").setAttribute("aria-busy", "true");
    try {
      const { version, bytesSent } = await this.withLock(() =>
        this.api.saveVersion(this.caseId, { parent: this.head?.id ?? null, effort, ...choice.payload }),
      );
      this.head = { id: version.id, number: version.number };
      this.headNative = native;
      this.savedGen = gen;
      this.effort.consume(effort);
      const kind = "delta" in choice.payload ? "delta" : "labelmap";
      this.metrics.saves.push({ ms: performance.now() - t0, bytesSent, kind, version: version.number });
      if (!this.dirty) this.clearBackup();
      this.status(`Saved version ${version.number} (${kind}, ${fmtBytes(bytesSent)}).`, "ok");
      return true;
    } catch (err) {
      this.apiFailure(err, "Saving");
      return false;
    } finally {
      $("save").removeAttribute("aria-busy");
      this.updateUi();
    }
  }

  async submit(): Promise<void> {
    if (!this.editable) return;
    if (!(await this.save("submit"))) return;
    if (!this.head) return;
    try {
      const head = this.head.id;
      await this.withLock(() => this.api.submit(this.caseId, head));
    } catch (err) {
      this.apiFailure(err, "Submitting");
      return;
    }
    this.editable = false;
    this.viewer.editable = false;
    this.setTool("navigate");
    this.stopEditTimers();
    this.clearBackup();
    document.body.classList.add("read-only");
    this.setStatusBadge("submitted", "submitted");
    this.banner(`Submitted version ${this.head.number} for review. Space or "Next case" opens the next one.`, "ok");
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
      if (this.editable) await this.api.release(this.caseId).catch(() => undefined);
      window.location.assign(this.data.caseUrl.replace("{id}", String(next.id)));
    } catch (err) {
      this.apiFailure(err, "Taking the next case");
    }
  }

  async review(decision: "approve" | "reject"): Promise<void> {
    const comment = ($("review-comment") as HTMLTextAreaElement).value.trim();
    if (!this.head) {
      this.status("There is no version to review.", "error");
      return;
    }
    if (decision === "reject" && !comment) {
      this.status("Say why you reject it: the annotator gets your comment.", "error");
      return;
    }
    try {
      const review = await this.api.review(this.caseId, this.head.id, decision, comment);
      this.setStatusBadge(decision === "approve" ? "approved" : "rejected", decision === "approve" ? "approved" : "rejected");
      this.data.case.status = decision === "approve" ? "approved" : "rejected";
      this.status("");
      $("review-panel").hidden = true;
      this.banner(
        decision === "approve"
          ? `Approved version ${this.head.number}${review.export_status ? ` (export to the PACS: ${review.export_status})` : ""}.`
          : `Rejected: the case went back to its annotator.`,
        "ok",
      );
    } catch (err) {
      this.apiFailure(err, decision === "approve" ? "Approving" : "Rejecting");
    }
  }

  private apiFailure(err: unknown, what: string): void {
    if (err instanceof ApiError) {
      const head = err.staleHead;
      if (head) {
        this.staleDialog(head, err.message);
        return;
      }
      if (err.status === 423) {
        this.loseLock(err);
        return;
      }
      if (err.status === 404 && what === "The model call") {
        this.fail(`${what} failed: the interactive model is not available on this server (404).`);
        return;
      }
      this.fail(`${what} failed: ${err.message}`);
      return;
    }
    this.fail(`${what} failed: ${(err as Error).message}`);
  }

  /** 409: the case has a newer head. Reload it (drop edits) or re-apply the edits on top of it. */
  private staleDialog(head: { id: number; number: number }, message: string): void {
    const dialog = $("stale-dialog") as HTMLDialogElement;
    $("stale-text").textContent = `${message} Version ${head.number} is the newest.`;
    this.status(`Not saved: version ${head.number} was saved elsewhere since you loaded this case.`, "error");
    dialog.onclose = () => {
      if (dialog.returnValue === "reload") void this.reloadHead(head, false);
      else if (dialog.returnValue === "merge") void this.reloadHead(head, true);
    };
    if (!dialog.open) dialog.showModal();
  }

  async reloadHead(head: { id: number; number: number }, keepEdits: boolean): Promise<void> {
    try {
      const headNative = await this.viewer.fetchNativeMask(this.api.maskUrl(head.id));
      let shown = headNative;
      if (keepEdits) {
        const mine = this.viewer.nativeMask();
        const base = this.headNative;
        shown = headNative.slice();
        for (let v = 0; v < mine.length; v++) if (base === null || mine[v] !== base[v]) shown[v] = mine[v];
      }
      this.head = head;
      this.headNative = headNative;
      this.prompts.clear();
      this.viewer.setNativeMask(shown, !keepEdits);
      if (!keepEdits) this.savedGen = this.editGen;
      this.status(
        keepEdits
          ? `Your edits now sit on version ${head.number}; saving…`
          : `Loaded version ${head.number}; your edits were dropped.`,
        "ok",
      );
      if (keepEdits) await this.save("manual");
    } catch (err) {
      this.apiFailure(err, "Loading the newest version");
    }
  }

  // ---- local backup (a crash or a lost lock loses nothing) ----------------------------------------

  private backupKey(): string {
    return `${BACKUP_PREFIX}${this.caseId}`;
  }

  private backupNow(): void {
    if (!this.dirty || !this.viewer.orientation) return;
    try {
      const choice = choosePayload(this.headNative, this.viewer.nativeMask());
      const entry: Backup = { parent: this.head?.id ?? null, at: new Date().toISOString(), ...choice.payload };
      localStorage.setItem(this.backupKey(), JSON.stringify(entry));
    } catch {
      // storage full or disabled: the server copy (autosave) is what counts
    }
  }

  private clearBackup(): void {
    try {
      localStorage.removeItem(this.backupKey());
    } catch {
      /* nothing kept */
    }
  }

  private offerBackup(): void {
    let entry: Backup | null = null;
    try {
      entry = JSON.parse(localStorage.getItem(this.backupKey()) ?? "null") as Backup | null;
    } catch {
      entry = null;
    }
    if (!entry) return;
    if (!this.editable || entry.parent !== (this.head?.id ?? null)) {
      if (this.editable) this.clearBackup();
      return;
    }
    const saved = entry;
    $("restore-text").textContent = `This browser kept edits from ${new Date(saved.at).toLocaleString()} that were not saved.`;
    $("restore-banner").hidden = false;
    $("restore-yes").onclick = () => {
      const size = this.viewer.o.size;
      const native =
        "labelmap" in saved
          ? decodeLabelmap(saved.labelmap, size)
          : applyRuns(this.headNative ?? new Uint8Array(size), saved.delta);
      this.viewer.setNativeMask(native, false);
      $("restore-banner").hidden = true;
      this.status("Restored the unsaved edits; save to keep them.", "ok");
    };
    $("restore-no").onclick = () => {
      this.clearBackup();
      $("restore-banner").hidden = true;
    };
  }

  // ---- UI ---------------------------------------------------------------------------------------------

  private labelName(value: number): string {
    return this.data.labels.find((l) => l.value === value)?.name ?? `label ${value}`;
  }

  private renderStatic(): void {
    const table = $("shortcut-table");
    table.replaceChildren(
      ...SHORTCUTS.map(([keys, what]) => {
        const tr = document.createElement("tr");
        const th = document.createElement("th");
        const kbd = document.createElement("kbd");
        kbd.textContent = keys;
        th.appendChild(kbd);
        const td = document.createElement("td");
        td.textContent = what;
        tr.append(th, td);
        return tr;
      }),
    );
    const select = $("window-preset") as HTMLSelectElement;
    select.replaceChildren(...WINDOW_PRESETS.map((p) => new Option(p.name, p.key)));
  }

  private bindControls(): void {
    for (const b of document.querySelectorAll<HTMLButtonElement>(".tool")) {
      b.addEventListener("click", () => this.setTool(b.dataset.tool as Tool));
    }
    for (const b of document.querySelectorAll<HTMLButtonElement>(".class-pick")) {
      b.addEventListener("click", () => this.pickClass(Number(b.dataset.value)));
    }
    for (const c of document.querySelectorAll<HTMLInputElement>(".class-visible")) {
      c.addEventListener("change", () => this.viewer.setClassVisible(Number(c.dataset.value), c.checked));
    }
    const size = $("brush-size") as HTMLInputElement;
    size.addEventListener("input", () => this.setBrushSize(Number(size.value)));
    const opacity = $("opacity") as HTMLInputElement;
    opacity.addEventListener("input", () => this.viewer.setOpacity(Number(opacity.value)));
    const preset = $("window-preset") as HTMLSelectElement;
    preset.addEventListener("change", () => {
      const p = WINDOW_PRESETS.find((w) => w.key === preset.value);
      if (p) this.viewer.setWindow(p);
    });
    const layout = $("layout") as HTMLSelectElement;
    layout.addEventListener("change", () => this.viewer.setLayout(layout.value as Layout));
    $("undo").addEventListener("click", () => this.undo());
    $("redo").addEventListener("click", () => this.redo());
    $("save").addEventListener("click", () => void this.save("manual"));
    $("submit").addEventListener("click", () => void this.submit());
    $("next-case").addEventListener("click", () => void this.nextCase());
    $("approve").addEventListener("click", () => void this.review("approve"));
    $("reject").addEventListener("click", () => void this.review("reject"));
    document.addEventListener("keydown", (e) => this.onKey(e));
    for (const type of ["keydown", "mousemove", "wheel", "pointerdown"]) {
      document.addEventListener(type, () => this.effort.input(performance.now()), { passive: true });
    }
    document.addEventListener("visibilitychange", () => {
      this.effort.setVisible(document.visibilityState === "visible", performance.now());
      if (document.visibilityState === "hidden") this.backupNow();
    });
    // a page left with nothing unsaved frees the case now rather than when its lease runs out
    window.addEventListener("pagehide", () => {
      if (this.editable && !this.dirty && !this.leaving && !this.lockLost) {
        void this.api.release(this.caseId, true).catch(() => undefined);
      }
    });
    window.addEventListener("beforeunload", (e) => {
      if (this.editable && this.dirty && !this.leaving) {
        this.backupNow();
        e.preventDefault();
        e.returnValue = "";
      }
    });
  }

  private onKey(e: KeyboardEvent): void {
    if (isTypingTarget(e.target) || ($("stale-dialog") as HTMLDialogElement).open) return;
    const action = actionForKey(e);
    if (!action) return;
    e.preventDefault();
    switch (action.kind) {
      case "class": {
        const label = this.data.labels[action.index];
        if (label) this.pickClass(label.value);
        break;
      }
      case "tool":
        this.setTool(action.tool);
        break;
      case "brush-size":
        this.setBrushSize(this.viewer.penSize + action.delta * (this.viewer.penSize >= 9 ? 2 : 1));
        break;
      case "undo":
        this.undo();
        break;
      case "redo":
        this.redo();
        break;
      case "save":
        void this.save("manual");
        break;
      case "next-case":
        void this.nextCase();
        break;
      case "toggle-class": {
        const value = this.viewer.penValue;
        const visible = this.viewer.hidden.has(value);
        this.viewer.setClassVisible(value, visible);
        const box = document.querySelector<HTMLInputElement>(`.class-visible[data-value="${value}"]`);
        if (box) box.checked = visible;
        break;
      }
      case "toggle-overlay":
        this.status(this.viewer.toggleOverlay() ? "Mask shown." : "Mask hidden (o shows it).");
        break;
      case "cycle-window": {
        const i = WINDOW_PRESETS.findIndex((p) => p.key === this.viewer.preset.key);
        const next = WINDOW_PRESETS[(i + 1) % WINDOW_PRESETS.length];
        this.viewer.setWindow(next);
        ($("window-preset") as HTMLSelectElement).value = next.key;
        this.status(`Window: ${next.name}`);
        break;
      }
      case "cycle-layout": {
        const next = LAYOUTS[(LAYOUTS.indexOf(this.viewer.layout) + 1) % LAYOUTS.length];
        this.viewer.setLayout(next);
        ($("layout") as HTMLSelectElement).value = next;
        break;
      }
      case "clear-prompts":
        this.clearPrompts();
        break;
      case "help":
        $("help").classList.toggle("collapsed");
        break;
    }
  }

  private refreshCounts(): void {
    if (!this.viewer.orientation) return;
    const counts = labelCounts(this.viewer.drawing);
    for (const el of document.querySelectorAll<HTMLElement>("[data-count-for]")) {
      const n = counts[Number(el.dataset.countFor)];
      el.textContent = n ? `${n.toLocaleString()} vx` : "";
    }
  }

  private showEffort(): void {
    const e = this.effort.snapshot(performance.now());
    $("effort-seconds").textContent = fmtSeconds(e.seconds);
    $("effort-clicks").textContent = String(e.clicks);
    $("effort-strokes").textContent = String(e.strokes);
    $("effort-model-calls").textContent = String(e.model_calls);
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

  private setStatusBadge(status: string, text: string): void {
    const el = $("case-status");
    el.textContent = text;
    el.className = `badge ${status}`;
  }

  private banner(text: string, kind: "ok" | "info" | "error"): void {
    const el = $("lock-banner");
    el.textContent = text;
    el.className = `banner ${kind}`;
  }

  status(text: string, kind: "ok" | "warn" | "error" | "" = ""): void {
    const el = $("status");
    el.textContent = text;
    el.className = `status ${kind}`;
    el.setAttribute("role", kind === "error" ? "alert" : "status");
  }

  private fail(text: string): void {
    this.metrics.errors.push(text);
    this.status(text, "error");
  }

  private stopEditTimers(): void {
    window.clearInterval(this.heartbeatTimer);
    window.clearInterval(this.autosaveTimer);
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
