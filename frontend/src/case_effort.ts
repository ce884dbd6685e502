/**
 * The case page's effort clock: input and tab visibility feed the EffortCounter (effort.ts), and the
 * counters are shown once a second.
 */

import { $, fmtSeconds } from "./case_ui";
import type { EffortCounter } from "./effort";

export function trackEffort(effort: EffortCounter): void {
  for (const type of ["keydown", "mousemove", "wheel", "pointerdown"]) {
    document.addEventListener(type, () => effort.input(performance.now()), { passive: true });
  }
  document.addEventListener("visibilitychange", () => {
    effort.setVisible(document.visibilityState === "visible", performance.now());
  });
}

export function showEffortEverySecond(effort: EffortCounter): void {
  window.setInterval(() => showEffort(effort), 1000);
}

function showEffort(effort: EffortCounter): void {
  const e = effort.snapshot(performance.now());
  $("effort-seconds").textContent = fmtSeconds(e.seconds);
  $("effort-clicks").textContent = String(e.clicks);
  $("effort-strokes").textContent = String(e.strokes);
  $("effort-model-calls").textContent = String(e.model_calls);
}
