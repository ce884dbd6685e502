import assert from "node:assert/strict";
import { test } from "node:test";

import { SHORTCUTS, actionForKey } from "../src/shortcuts";

const cases: [Parameters<typeof actionForKey>[0], ReturnType<typeof actionForKey>][] = [
  [{ key: "1" }, { kind: "class", index: 0 }],
  [{ key: "9" }, { kind: "class", index: 8 }],
  [{ key: "0" }, null],
  [{ key: "b" }, { kind: "tool", tool: "brush" }],
  [{ key: "E", shiftKey: true }, { kind: "tool", tool: "eraser" }],
  [{ key: "x" }, { kind: "tool", tool: "box" }],
  [{ key: "c" }, { kind: "tool", tool: "click-positive" }],
  [{ key: "v" }, { kind: "tool", tool: "click-negative" }],
  [{ key: "[" }, { kind: "brush-size", delta: -1 }],
  [{ key: "]" }, { kind: "brush-size", delta: 1 }],
  [{ key: "z", ctrlKey: true }, { kind: "undo" }],
  [{ key: "Z", ctrlKey: true, shiftKey: true }, { kind: "redo" }],
  [{ key: "z", metaKey: true, shiftKey: true }, { kind: "redo" }],
  [{ key: "y", ctrlKey: true }, { kind: "redo" }],
  [{ key: "s" }, { kind: "save" }],
  [{ key: "s", ctrlKey: true }, { kind: "save" }],
  [{ key: " " }, { kind: "next-case" }],
  [{ key: "Escape" }, { kind: "clear-prompts" }],
  [{ key: "Backspace" }, { kind: "undo-click" }],
  [{ key: "Backspace", ctrlKey: true }, null],
  [{ key: "b", altKey: true }, null],
  [{ key: "c", ctrlKey: true }, null],
];

for (const [key, action] of cases) {
  test(`key ${JSON.stringify(key)}`, () => assert.deepEqual(actionForKey(key), action));
}

test("every single-letter key in the help dispatches to an action", () => {
  for (const [keys] of SHORTCUTS) {
    if (/^[a-z]$/.test(keys)) assert.notEqual(actionForKey({ key: keys }), null, keys);
  }
});
