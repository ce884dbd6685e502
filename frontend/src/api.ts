/**
 * Every HTTP call the browser makes, against the JSON API under `apiBase` (platform/annotation/urls.py).
 * Session cookie auth; unsafe methods carry Django's CSRF token. Errors come back as
 * `{"message": str, "extra": {...}}` and are raised as ApiError with the status.
 */

import type { Effort } from "./effort";
import type { MaskPayload } from "./labelmap";
import type { Vec3 } from "./orientation";

export interface Lock {
  holder: string;
  expires_at: string;
}

export interface Version {
  id: number;
  number: number;
  parent: number | null;
  author: string | null;
  source: string;
  sha256: string;
  created_at: string;
  seconds: number;
  clicks: number;
  strokes: number;
  model_calls: number;
}

export interface CaseSummary {
  id: number;
  project: number;
  status: string;
  assignee: string | null;
  lock: Lock | null;
}

export interface CaseDetail extends CaseSummary {
  versions: Version[];
}

export interface Review {
  id: number;
  version: number;
  decision: string;
  comment: string;
  export_status: string;
}

/** A 3D box on the voxel grid (native `[i, j, k]`), corners inclusive. */
export interface BoxPrompt {
  lo: Vec3;
  hi: Vec3;
}

export interface ClickPrompt {
  ijk: Vec3;
  positive: boolean;
}

/** POST cases/<id>/interactive/: the whole interaction for one class, so any model worker can answer. */
export interface InteractiveRequest {
  label: number;
  box: BoxPrompt;
  /** Every click for this class since its box, in order; the last one is the newest. */
  clicks: ClickPrompt[];
}

export interface InteractiveResult {
  label: number;
  /** base64(gzip(uint8 voxels, non-zero = the class)) over the whole volume, NIfTI order. */
  mask: string;
  /** Model time in the worker. */
  seconds: number;
  /** Only the newest click was decoded (the worker still held this interaction). */
  incremental: boolean;
  model: string;
  /** The project's model version that answered; absent or null for a model without versions. */
  model_version?: number | string | null;
  /** Slices of the structure's slab (the box's extent) the model has encoded so far, of slices_total. */
  slices_ready: number;
  slices_total: number;
  /** The mask grows as more slices are encoded: send the same request again. */
  pending: boolean;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly extra: Record<string, unknown> = {},
  ) {
    super(message);
  }

  /** 409 on a save or submit whose parent is not the head any more: `extra.head = {id, number}`. */
  get staleHead(): { id: number; number: number } | null {
    if (this.status !== 409 || !("head" in this.extra)) return null;
    return (this.extra.head as { id: number; number: number } | null) ?? null;
  }

  /** 423 (or 409): someone else holds the case. */
  get holder(): string | null {
    return typeof this.extra.holder === "string" ? this.extra.holder : null;
  }
}

export function cookie(name: string, source = typeof document === "undefined" ? "" : document.cookie): string | null {
  for (const part of source.split(";")) {
    const [k, ...v] = part.trim().split("=");
    if (k === name) return decodeURIComponent(v.join("="));
  }
  return null;
}

export interface ApiOptions {
  /** e.g. "/api/" */
  base: string;
  /** The token rendered into the page; the csrftoken cookie is read when it is missing. */
  csrfToken?: string | null;
  fetch?: typeof fetch;
}

export class Api {
  readonly base: string;
  private readonly csrf: string | null;
  private readonly fetchImpl: typeof fetch;

  constructor(opts: ApiOptions) {
    this.base = opts.base.endsWith("/") ? opts.base : opts.base + "/";
    this.csrf = opts.csrfToken ?? null;
    this.fetchImpl = opts.fetch ?? ((input, init) => fetch(input, init));
  }

  url(path: string): string {
    return this.base + path.replace(/^\//, "");
  }

  imageUrl(caseId: number): string {
    return this.url(`cases/${caseId}/image/`);
  }

  maskUrl(versionId: number): string {
    return this.url(`versions/${versionId}/mask/`);
  }

  private async request<T>(
    method: "GET" | "POST",
    path: string,
    body?: unknown,
    opts: { timeoutMs?: number; keepalive?: boolean } = {},
  ): Promise<{ status: number; data: T | null; bytesSent: number }> {
    const headers: Record<string, string> = { Accept: "application/json" };
    let payload: string | undefined;
    if (method !== "GET") {
      headers["X-CSRFToken"] = this.csrf ?? cookie("csrftoken") ?? "";
      headers["X-Requested-With"] = "XMLHttpRequest";
      if (body !== undefined) {
        headers["Content-Type"] = "application/json";
        payload = JSON.stringify(body);
      }
    }
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), opts.timeoutMs ?? 60_000);
    let response: Response;
    try {
      response = await this.fetchImpl(this.url(path), {
        method,
        headers,
        body: payload,
        credentials: "same-origin",
        signal: controller.signal,
        keepalive: opts.keepalive,
      });
    } catch (err) {
      const why = controller.signal.aborted ? "the server did not answer in time" : "the server cannot be reached";
      throw new ApiError(0, `${method} ${path}: ${why}. Your edits are kept in this page; try again.`, {
        cause: String(err),
      });
    } finally {
      clearTimeout(timer);
    }
    const text = await response.text();
    let data: unknown = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = null;
      }
    }
    if (!response.ok) {
      const err = (data ?? {}) as { message?: string; extra?: Record<string, unknown>; detail?: string };
      const message =
        err.message ?? err.detail ?? `${method} ${path} failed: ${response.status} ${response.statusText}`.trim();
      throw new ApiError(response.status, message, err.extra ?? {});
    }
    return { status: response.status, data: data as T | null, bytesSent: payload?.length ?? 0 };
  }

  async caseDetail(caseId: number): Promise<CaseDetail> {
    return (await this.request<CaseDetail>("GET", `cases/${caseId}/`)).data!;
  }

  async take(caseId: number): Promise<Lock> {
    return (await this.request<Lock>("POST", `cases/${caseId}/take/`)).data!;
  }

  async heartbeat(caseId: number): Promise<Lock> {
    return (await this.request<Lock>("POST", `cases/${caseId}/heartbeat/`)).data!;
  }

  async release(caseId: number, keepalive = false): Promise<void> {
    await this.request("POST", `cases/${caseId}/release/`, undefined, { keepalive });
  }

  async saveVersion(
    caseId: number,
    body: { parent: number | null; effort: Effort } & MaskPayload,
    opts: { keepalive?: boolean } = {},
  ): Promise<{ version: Version; bytesSent: number }> {
    const r = await this.request<Version>("POST", `cases/${caseId}/versions/create/`, body, {
      timeoutMs: 120_000,
      keepalive: opts.keepalive,
    });
    return { version: r.data!, bytesSent: r.bytesSent };
  }

  async interactive(caseId: number, body: InteractiveRequest): Promise<{ result: InteractiveResult; bytesSent: number }> {
    const r = await this.request<InteractiveResult>("POST", `cases/${caseId}/interactive/`, body, {
      timeoutMs: 120_000,
    });
    return { result: r.data!, bytesSent: r.bytesSent };
  }

  async submit(caseId: number, version: number): Promise<CaseSummary> {
    return (await this.request<CaseSummary>("POST", `cases/${caseId}/submit/`, { version })).data!;
  }

  /** `overrideReason`: an admin approving their own work says why (else 403 with `extra.can_override`). */
  async review(
    caseId: number,
    version: number,
    decision: "approve" | "reject",
    comment: string,
    overrideReason = "",
  ): Promise<Review> {
    const body = { version, decision, comment, ...(overrideReason ? { override_reason: overrideReason } : {}) };
    return (await this.request<Review>("POST", `cases/${caseId}/review/`, body)).data!;
  }

  /** Take the next case of the worklist; null when none is left (204). */
  async nextCase(projectId: number): Promise<CaseSummary | null> {
    const r = await this.request<CaseSummary>("POST", `projects/${projectId}/next/`);
    return r.status === 204 ? null : r.data;
  }
}
