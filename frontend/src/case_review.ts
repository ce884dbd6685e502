/** The reviewer's panel of the case page: approve the head version, or reject it with a comment. */

import { type Api, ApiError } from "./api";
import { $, type Notices } from "./case_ui";
import type { VersionRef } from "./case_versions";

export interface ReviewContext {
  api: Api;
  caseId: number;
  /** The page's case; its status follows the decision. */
  case: { status: string };
  notices: Notices;
  head: () => VersionRef | null;
  failure: (err: unknown, what: string) => void;
}

export type Decision = "approve" | "reject";

export class CaseReview {
  constructor(private readonly ctx: ReviewContext) {}

  async decide(decision: Decision): Promise<void> {
    const { notices } = this.ctx;
    const comment = ($("review-comment") as HTMLTextAreaElement).value.trim();
    const head = this.ctx.head();
    if (!head) {
      notices.status("There is no version to review.", "error");
      return;
    }
    if (decision === "reject" && !comment) {
      notices.status("Say why you reject it: the annotator gets your comment.", "error");
      return;
    }
    try {
      const review = await this.send(decision, head.id, comment);
      const status = decision === "approve" ? "approved" : "rejected";
      notices.badge(status, status);
      this.ctx.case.status = status;
      notices.status("");
      $("review-panel").hidden = true;
      notices.banner(
        decision === "approve"
          ? `Approved version ${head.number}${review.export_status ? ` (export to the PACS: ${review.export_status})` : ""}.`
          : `Rejected: the case went back to its annotator.`,
        "ok",
      );
    } catch (err) {
      this.ctx.failure(err, decision === "approve" ? "Approving" : "Rejecting");
    }
  }

  /** The decision; an admin refused for approving their own work is asked for a reason and it is sent
   * again with it (the server audits it). Without a reason the refusal stands. */
  private async send(decision: Decision, version: number, comment: string) {
    const { api, caseId } = this.ctx;
    try {
      return await api.review(caseId, version, decision, comment);
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 403 || err.extra.can_override !== true) throw err;
      const reason = window.prompt(`${err.message}\n\nWhy do you approve your own work?`)?.trim();
      if (!reason) throw err;
      return await api.review(caseId, version, decision, comment, reason);
    }
  }
}
