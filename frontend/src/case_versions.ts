/**
 * Saving and versions: every save is a new version on the head the edits sit on (a delta or the whole
 * label map, whichever is smaller), with the effort since the last save; autosave when dirty; a 409
 * (someone saved a newer head) offers to reload it or to re-apply the edits on top of it; unsaved edits
 * are kept in this browser until saved and offered back on the next visit.
 */

import type { Api } from "./api";
import { type Backup, UnsavedBackup } from "./case_backup";
import type { CaseLock } from "./case_lock";
import { $, type Notices, type PageMetrics, fmtBytes } from "./case_ui";
import type { Effort, EffortCounter } from "./effort";
import { applyRuns, choosePayload, decodeLabelmap } from "./labelmap";
import type { Viewer } from "./viewer";

export type SaveReason = "manual" | "autosave" | "submit" | "next";

export interface VersionRef {
  id: number;
  number: number;
}

export interface VersionsContext {
  api: Api;
  caseId: number;
  viewer: Viewer;
  effort: EffortCounter;
  lock: CaseLock;
  notices: Notices;
  metrics: PageMetrics;
  /** A failed call: the page says what failed (and handles 409 and 423). */
  failure: (err: unknown, what: string) => void;
  /** Head, dirty state or a save's progress changed. */
  updated: () => void;
  /** Another version became the head (its prompts no longer apply). */
  reloaded: () => void;
}

export class CaseVersions {
  /** The version the edits sit on, and its label map in native order (for deltas and merges). */
  head: VersionRef | null;
  private headNative: Uint8Array | null = null;
  private editGen = 0;
  private savedGen = 0;
  private saving: Promise<boolean> | null = null;
  private autosaveTimer = 0;
  private backupTimer = 0;
  readonly backup: UnsavedBackup;

  constructor(
    private readonly ctx: VersionsContext,
    head: VersionRef | null,
  ) {
    this.head = head;
    this.backup = new UnsavedBackup(ctx.caseId);
  }

  get dirty(): boolean {
    return this.editGen !== this.savedGen;
  }

  /** The viewer shows the head: that is the saved state. */
  loaded(): void {
    this.headNative = this.head ? this.ctx.viewer.nativeMask() : null;
    this.savedGen = this.editGen;
  }

  /** The drawing changed: dirty, and kept in this browser shortly after. */
  changed(): void {
    this.editGen++;
    window.clearTimeout(this.backupTimer);
    this.backupTimer = window.setTimeout(() => this.backupNow(), 2000);
  }

  autosaveEvery(seconds: number): void {
    window.clearInterval(this.autosaveTimer);
    this.autosaveTimer = window.setInterval(() => this.dirty && void this.save("autosave"), seconds * 1000);
  }

  stopAutosave(): void {
    window.clearInterval(this.autosaveTimer);
  }

  /** Save the drawing as a new version on the head; true when it is saved (or nothing needed saving). */
  async save(reason: SaveReason = "manual"): Promise<boolean> {
    if (!this.ctx.lock.held) return false;
    while (this.saving) await this.saving;
    if (!this.dirty && this.head) return true;
    this.saving = this.saveOnce(reason);
    try {
      return await this.saving;
    } finally {
      this.saving = null;
    }
  }

  private async saveOnce(reason: SaveReason): Promise<boolean> {
    const { api, caseId, viewer, effort, lock, notices, metrics } = this.ctx;
    const gen = this.editGen;
    const native = viewer.nativeMask();
    const choice = choosePayload(this.headNative, native);
    const sent: Effort = effort.snapshot(performance.now());
    const t0 = performance.now();
    notices.status(reason === "autosave" ? "Autosaving…" : "Saving…");
    $("save").setAttribute("aria-busy", "true");
    try {
      const { version, bytesSent } = await lock.withLock(() =>
        api.saveVersion(caseId, { parent: this.head?.id ?? null, effort: sent, ...choice.payload }),
      );
      this.head = { id: version.id, number: version.number };
      this.headNative = native;
      this.savedGen = gen;
      effort.consume(sent);
      const kind = "delta" in choice.payload ? "delta" : "labelmap";
      metrics.saves.push({ ms: performance.now() - t0, bytesSent, kind, version: version.number });
      if (!this.dirty) this.backup.clear();
      notices.status(`Saved version ${version.number} (${kind}, ${fmtBytes(bytesSent)}).`, "ok");
      return true;
    } catch (err) {
      this.ctx.failure(err, "Saving");
      return false;
    } finally {
      $("save").removeAttribute("aria-busy");
      this.ctx.updated();
    }
  }

  /** 409: the case has a newer head. Reload it (drop edits) or re-apply the edits on top of it. */
  staleDialog(head: VersionRef, message: string): void {
    const dialog = $("stale-dialog") as HTMLDialogElement;
    $("stale-text").textContent = `${message} Version ${head.number} is the newest.`;
    this.ctx.notices.status(`Not saved: version ${head.number} was saved elsewhere since you loaded this case.`, "error");
    dialog.onclose = () => {
      if (dialog.returnValue === "reload") void this.reloadHead(head, false);
      else if (dialog.returnValue === "merge") void this.reloadHead(head, true);
    };
    if (!dialog.open) dialog.showModal();
  }

  async reloadHead(head: VersionRef, keepEdits: boolean): Promise<void> {
    const { api, viewer, notices } = this.ctx;
    try {
      const headNative = await viewer.fetchNativeMask(api.maskUrl(head.id));
      let shown = headNative;
      if (keepEdits) {
        const mine = viewer.nativeMask();
        const base = this.headNative;
        shown = headNative.slice();
        for (let v = 0; v < mine.length; v++) if (base === null || mine[v] !== base[v]) shown[v] = mine[v];
      }
      this.head = head;
      this.headNative = headNative;
      this.ctx.reloaded();
      viewer.setNativeMask(shown, !keepEdits);
      if (!keepEdits) this.savedGen = this.editGen;
      notices.status(
        keepEdits
          ? `Your edits now sit on version ${head.number}; saving…`
          : `Loaded version ${head.number}; your edits were dropped.`,
        "ok",
      );
      if (keepEdits) await this.save("manual");
    } catch (err) {
      this.ctx.failure(err, "Loading the newest version");
    }
  }

  // ---- local backup (a crash or a lost lock loses nothing) ----------------------------------------

  backupNow(): void {
    const { viewer } = this.ctx;
    if (!this.dirty || !viewer.orientation) return;
    try {
      const choice = choosePayload(this.headNative, viewer.nativeMask());
      this.backup.write({ parent: this.head?.id ?? null, at: new Date().toISOString(), ...choice.payload });
    } catch {
      // no drawing to keep
    }
  }

  /** Offer this browser's unsaved edits when they sit on the head this page shows. */
  offerBackup(editable: boolean): void {
    const entry: Backup | null = this.backup.read();
    if (!entry) return;
    if (!editable || entry.parent !== (this.head?.id ?? null)) {
      if (editable) this.backup.clear();
      return;
    }
    const { viewer, notices } = this.ctx;
    $("restore-text").textContent = `This browser kept edits from ${new Date(entry.at).toLocaleString()} that were not saved.`;
    $("restore-banner").hidden = false;
    $("restore-yes").onclick = () => {
      const size = viewer.o.size;
      const native =
        "labelmap" in entry
          ? decodeLabelmap(entry.labelmap, size)
          : applyRuns(this.headNative ?? new Uint8Array(size), entry.delta);
      viewer.setNativeMask(native, false);
      $("restore-banner").hidden = true;
      notices.status("Restored the unsaved edits; save to keep them.", "ok");
    };
    $("restore-no").onclick = () => {
      this.backup.clear();
      $("restore-banner").hidden = true;
    };
  }
}
