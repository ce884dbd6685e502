/** Keyboard shortcuts of the case page: one table, used both to dispatch keys and to document them. */

export type Tool = "navigate" | "brush" | "eraser" | "box" | "click-positive" | "click-negative";

export type Action =
  | { kind: "class"; index: number }
  | { kind: "tool"; tool: Tool }
  | { kind: "brush-size"; delta: number }
  | { kind: "undo" }
  | { kind: "redo" }
  | { kind: "save" }
  | { kind: "next-case" }
  | { kind: "toggle-class" }
  | { kind: "toggle-overlay" }
  | { kind: "cycle-window" }
  | { kind: "cycle-layout" }
  | { kind: "clear-prompts" }
  | { kind: "undo-click" }
  | { kind: "help" };

export interface KeyLike {
  key: string;
  ctrlKey?: boolean;
  metaKey?: boolean;
  shiftKey?: boolean;
  altKey?: boolean;
}

/** [keys as shown, what they do] in the order the help lists them. */
export const SHORTCUTS: readonly [string, string][] = [
  ["1 … 9", "pick class 1 to 9 of the label set"],
  ["n", "navigate (click moves the crosshair in all views)"],
  ["b", "brush"],
  ["e", "eraser"],
  ["[  ]", "brush size smaller / larger"],
  ["x", "box prompt: drag a box around the structure"],
  ["c", "positive click prompt (shift+click: negative)"],
  ["v", "negative click prompt (shift+click: positive)"],
  ["Backspace", "take back the last click of the current class (its mask too)"],
  ["Esc", "forget the prompts of the current class"],
  ["Ctrl+Z", "undo"],
  ["Ctrl+Shift+Z, Ctrl+Y", "redo"],
  ["h", "hide / show the current class"],
  ["o", "hide / show the whole mask"],
  ["w", "next window/level preset"],
  ["l", "next layout (3 planes + 3D, 3 planes, axial, coronal, sagittal, 3D)"],
  ["s", "save now"],
  ["Space", "save, then the next case of the worklist"],
  ["?", "show / hide this help"],
  ["right drag", "window/level; wheel: scroll slices"],
];

export function actionForKey(e: KeyLike): Action | null {
  const mod = e.ctrlKey || e.metaKey;
  const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
  if (mod && !e.altKey) {
    if (key === "z") return e.shiftKey ? { kind: "redo" } : { kind: "undo" };
    if (key === "y") return { kind: "redo" };
    if (key === "s") return { kind: "save" };
    return null;
  }
  if (e.altKey || mod) return null;
  if (/^[1-9]$/.test(key)) return { kind: "class", index: Number(key) - 1 };
  switch (key) {
    case "n":
      return { kind: "tool", tool: "navigate" };
    case "b":
      return { kind: "tool", tool: "brush" };
    case "e":
      return { kind: "tool", tool: "eraser" };
    case "x":
      return { kind: "tool", tool: "box" };
    case "c":
      return { kind: "tool", tool: "click-positive" };
    case "v":
      return { kind: "tool", tool: "click-negative" };
    case "[":
      return { kind: "brush-size", delta: -1 };
    case "]":
      return { kind: "brush-size", delta: 1 };
    case "h":
      return { kind: "toggle-class" };
    case "o":
      return { kind: "toggle-overlay" };
    case "w":
      return { kind: "cycle-window" };
    case "l":
      return { kind: "cycle-layout" };
    case "s":
      return { kind: "save" };
    case " ":
      return { kind: "next-case" };
    case "Escape":
      return { kind: "clear-prompts" };
    case "Backspace":
      return { kind: "undo-click" };
    case "?":
      return { kind: "help" };
    default:
      return null;
  }
}

/** Keys typed into a form field belong to the field. */
export function isTypingTarget(target: EventTarget | null): boolean {
  if (!target || typeof (target as HTMLElement).tagName !== "string") return false;
  const el = target as HTMLElement;
  const tag = el.tagName.toLowerCase();
  if (tag === "textarea" || tag === "select" || el.isContentEditable) return true;
  if (tag !== "input") return false;
  const type = (el as HTMLInputElement).type;
  return !["range", "checkbox", "radio", "button", "submit"].includes(type);
}
