/**
 * The case's lock as the page holds it: taken on open when the user may edit, renewed by a heartbeat,
 * taken again once when our lease ran out and nobody else took the case, and lost (read-only) when
 * someone else holds it.
 */

import { type Api, ApiError, type Lock } from "./api";
import type { Notices } from "./case_ui";

const EDITABLE = new Set(["new", "in_progress", "rejected"]);

export interface LockRequest {
  status: string;
  canAnnotate: boolean;
  canReview: boolean;
}

export class CaseLock {
  /** This page holds the case and may edit it. */
  held = false;
  /** Someone else took the case while this page held it. */
  lost = false;
  private heartbeatTimer = 0;

  constructor(
    private readonly api: Api,
    private readonly caseId: number,
    private readonly notices: Notices,
    /** Called once the lock is lost, after `held` turned false and the banner says why. */
    private readonly onLost: (err: ApiError) => void,
  ) {}

  /** Take the case when this user may edit it; false means read-only, with the banner saying why. */
  async acquire(req: LockRequest): Promise<boolean> {
    const { status } = req;
    if (!req.canAnnotate) {
      this.notices.banner(status === "submitted" && req.canReview ? "Submitted: review it below." : "Read only.", "info");
      return false;
    }
    if (!EDITABLE.has(status)) {
      const why =
        status === "submitted"
          ? "Submitted: it waits for review and cannot be edited."
          : status === "approved"
            ? "Approved: its mask is frozen."
            : `This case is ${status}; it cannot be edited.`;
      this.notices.banner(why, "info");
      return false;
    }
    try {
      const lock = await this.api.take(this.caseId);
      this.show(lock);
      this.notices.badge("in_progress", "in progress");
      this.held = true;
      return true;
    } catch (err) {
      this.error(err, "taking the case");
      return false;
    }
  }

  private show(lock: Lock): void {
    const until = new Date(lock.expires_at);
    this.notices.banner(
      `You hold this case (lease renewed while the page is open; until ${until.toLocaleTimeString()}).`,
      "ok",
    );
  }

  private error(err: unknown, doing: string): void {
    if (err instanceof ApiError && (err.status === 423 || err.holder)) {
      const who = err.holder ? `${err.holder} holds this case` : err.message;
      this.notices.banner(`Read only: ${who}. Your view is not saved.`, "error");
      return;
    }
    this.notices.banner(`Read only: ${doing} failed: ${(err as Error).message}`, "error");
  }

  /**
   * Run a call that needs the lock; when it answers 423 and nobody else holds the case (our lease ran
   * out, or a release from a page we left crossed this page's take), take the case again and retry once.
   */
  async withLock<T>(call: () => Promise<T>): Promise<T> {
    try {
      return await call();
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 423 && !err.holder)) throw err;
      this.show(await this.api.take(this.caseId));
      return await call();
    }
  }

  /** Renew the lease every `seconds` while the case is held. */
  keepAlive(seconds: number): void {
    window.clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = window.setInterval(() => void this.heartbeat(), seconds * 1000);
  }

  private async heartbeat(): Promise<void> {
    if (!this.held || this.lost) return;
    try {
      this.show(await this.withLock(() => this.api.heartbeat(this.caseId)));
    } catch (err) {
      if (err instanceof ApiError && err.status === 423) this.lose(err);
      else this.notices.status(`The lock could not be renewed (${(err as Error).message}); retrying.`, "warn");
    }
  }

  /** Someone else holds the case now (a 423 from any call). */
  lose(err: ApiError): void {
    this.lost = true;
    this.held = false;
    const who = err.holder ? `${err.holder} holds this case now` : err.message;
    this.notices.banner(`You lost this case: ${who}. Your unsaved edits are kept in this browser.`, "error");
    this.onLost(err);
  }

  /** The case went to review: the server dropped the lock; stop renewing it. */
  handOver(): void {
    this.held = false;
    window.clearInterval(this.heartbeatTimer);
  }

  /** Free the case (leaving the page); errors are ignored, the lease runs out anyway. */
  release(keepalive = false): Promise<void> {
    return this.api.release(this.caseId, keepalive).then(
      () => undefined,
      () => undefined,
    );
  }
}
