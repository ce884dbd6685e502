/**
 * What the case page shows about itself: elements by id, the status line, the lock banner, the case's
 * status badge, and the metrics that browser tests and benchmarks read.
 */

/** What browser tests and benchmarks read: model round trips and saves, as they happened. */
export interface PageMetrics {
  ready: boolean;
  firstPaintMs: number | null;
  modelCalls: { ms: number; bytesSent: number; voxels: number; label: number }[];
  saves: { ms: number; bytesSent: number; kind: "delta" | "labelmap"; version: number }[];
  errors: string[];
}

export type StatusKind = "ok" | "warn" | "error" | "";

export function $(id: string): HTMLElement {
  const el = document.getElementById(id);
  if (!el) throw new Error(`The page lacks #${id}.`);
  return el;
}

export function fmtBytes(n: number): string {
  return n < 1024 ? `${n} B` : n < 1024 * 1024 ? `${(n / 1024).toFixed(1)} kB` : `${(n / 1048576).toFixed(1)} MB`;
}

export function fmtSeconds(s: number): string {
  if (s < 60) return `${Math.round(s)} s`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m} min ${Math.round(s % 60)} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

/** The page's messages: the status line (transient), the banner (who holds the case), the status badge. */
export class Notices {
  constructor(private readonly metrics: PageMetrics) {}

  status(text: string, kind: StatusKind = ""): void {
    const el = $("status");
    el.textContent = text;
    el.className = `status ${kind}`;
    el.setAttribute("role", kind === "error" ? "alert" : "status");
  }

  /** An error the user sees, also kept in the metrics for tests. */
  fail(text: string): void {
    this.metrics.errors.push(text);
    this.status(text, "error");
  }

  banner(text: string, kind: "ok" | "info" | "error"): void {
    const el = $("lock-banner");
    el.textContent = text;
    el.className = `banner ${kind}`;
  }

  badge(status: string, text: string): void {
    const el = $("case-status");
    el.textContent = text;
    el.className = `badge ${status}`;
  }
}
