/**
 * The case page's controls: the tool and class buttons, sliders and selects, and the keyboard
 * (shortcuts.ts is the table), bound to the page's actions. The help lists the same table.
 */

import { $ } from "./case_ui";
import type { Decision } from "./case_review";
import { WINDOW_PRESETS } from "./display";
import { SHORTCUTS, type Action, type Tool, actionForKey, isTypingTarget } from "./shortcuts";
import { LAYOUTS, type Layout, type Viewer } from "./viewer";

/** What the controls act on: the page implements it. */
export interface CaseActions {
  readonly viewer: Viewer;
  readonly labels: readonly { value: number }[];
  pickClass(value: number): void;
  setTool(tool: Tool): void;
  setBrushSize(size: number): void;
  undo(): void;
  redo(): void;
  save(): void;
  submit(): void;
  nextCase(): void;
  review(decision: Decision): void;
  clearPrompts(): void;
  undoClick(): void;
  status(text: string): void;
}

/** The shortcut table and the window presets, which the page's HTML leaves empty. */
export function renderControls(): void {
  $("shortcut-table").replaceChildren(
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

export function bindControls(page: CaseActions): void {
  const viewer = page.viewer;
  for (const b of document.querySelectorAll<HTMLButtonElement>(".tool")) {
    b.addEventListener("click", () => page.setTool(b.dataset.tool as Tool));
  }
  for (const b of document.querySelectorAll<HTMLButtonElement>(".class-pick")) {
    b.addEventListener("click", () => page.pickClass(Number(b.dataset.value)));
  }
  for (const c of document.querySelectorAll<HTMLInputElement>(".class-visible")) {
    c.addEventListener("change", () => viewer.setClassVisible(Number(c.dataset.value), c.checked));
  }
  const size = $("brush-size") as HTMLInputElement;
  size.addEventListener("input", () => page.setBrushSize(Number(size.value)));
  const opacity = $("opacity") as HTMLInputElement;
  opacity.addEventListener("input", () => viewer.setOpacity(Number(opacity.value)));
  const preset = $("window-preset") as HTMLSelectElement;
  preset.addEventListener("change", () => {
    const p = WINDOW_PRESETS.find((w) => w.key === preset.value);
    if (p) viewer.setWindow(p);
  });
  const layout = $("layout") as HTMLSelectElement;
  layout.addEventListener("change", () => viewer.setLayout(layout.value as Layout));
  const crisp = document.getElementById("crisp") as HTMLInputElement | null;
  if (crisp) {
    crisp.checked = viewer.crisp;
    crisp.addEventListener("change", () => {
      viewer.setCrisp(crisp.checked);
      rememberCrisp(crisp.checked);
    });
  }
  document.getElementById("undo-click")?.addEventListener("click", () => page.undoClick());
  $("undo").addEventListener("click", () => page.undo());
  $("redo").addEventListener("click", () => page.redo());
  $("save").addEventListener("click", () => page.save());
  $("submit").addEventListener("click", () => page.submit());
  $("next-case").addEventListener("click", () => page.nextCase());
  $("approve").addEventListener("click", () => page.review("approve"));
  $("reject").addEventListener("click", () => page.review("reject"));
  document.addEventListener("keydown", (e) => onKey(page, e));
}

function onKey(page: CaseActions, e: KeyboardEvent): void {
  if (isTypingTarget(e.target) || ($("stale-dialog") as HTMLDialogElement).open) return;
  const action = actionForKey(e);
  if (!action) return;
  e.preventDefault();
  runAction(page, action);
}

function runAction(page: CaseActions, action: Action): void {
  const viewer = page.viewer;
  switch (action.kind) {
    case "class": {
      const label = page.labels[action.index];
      if (label) page.pickClass(label.value);
      break;
    }
    case "tool":
      page.setTool(action.tool);
      break;
    case "brush-size":
      page.setBrushSize(viewer.penSize + action.delta * (viewer.penSize >= 9 ? 2 : 1));
      break;
    case "undo":
      page.undo();
      break;
    case "redo":
      page.redo();
      break;
    case "save":
      page.save();
      break;
    case "next-case":
      page.nextCase();
      break;
    case "toggle-class": {
      const value = viewer.penValue;
      const visible = viewer.hidden.has(value);
      viewer.setClassVisible(value, visible);
      const box = document.querySelector<HTMLInputElement>(`.class-visible[data-value="${value}"]`);
      if (box) box.checked = visible;
      break;
    }
    case "toggle-overlay":
      page.status(viewer.toggleOverlay() ? "Mask shown." : "Mask hidden (o shows it).");
      break;
    case "cycle-window": {
      const i = WINDOW_PRESETS.findIndex((p) => p.key === viewer.preset.key);
      const next = WINDOW_PRESETS[(i + 1) % WINDOW_PRESETS.length];
      viewer.setWindow(next);
      ($("window-preset") as HTMLSelectElement).value = next.key;
      page.status(`Window: ${next.name}`);
      break;
    }
    case "cycle-layout": {
      const next = LAYOUTS[(LAYOUTS.indexOf(viewer.layout) + 1) % LAYOUTS.length];
      viewer.setLayout(next);
      ($("layout") as HTMLSelectElement).value = next;
      break;
    }
    case "clear-prompts":
      page.clearPrompts();
      break;
    case "undo-click":
      page.undoClick();
      break;
    case "help":
      $("help").classList.toggle("collapsed");
      break;
  }
}

const CRISP_KEY = "annotator:crisp";

/** The annotator's choice of crisp voxels, kept in this browser for every case. */
export function crispRemembered(): boolean {
  try {
    return globalThis.localStorage?.getItem(CRISP_KEY) === "1";
  } catch {
    return false;
  }
}

function rememberCrisp(crisp: boolean): void {
  try {
    globalThis.localStorage?.setItem(CRISP_KEY, crisp ? "1" : "0");
  } catch {
    /* storage disabled: the choice lasts this page */
  }
}
