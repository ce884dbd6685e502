import assert from "node:assert/strict";
import { test } from "node:test";

import { type BackupStorage, UnsavedBackup } from "../src/case_backup";

function memory(): BackupStorage & { items: Map<string, string> } {
  const items = new Map<string, string>();
  return {
    items,
    getItem: (k) => items.get(k) ?? null,
    setItem: (k, v) => void items.set(k, v),
    removeItem: (k) => void items.delete(k),
  };
}

test("a case's unsaved edits are kept under its own key and read back", () => {
  const storage = memory();
  const seven = new UnsavedBackup(7, storage);
  const eight = new UnsavedBackup(8, storage);
  seven.write({ parent: 3, at: "2026-12-06T00:00:00Z", labelmap: "H4sI" });
  assert.deepEqual(seven.read(), { parent: 3, at: "2026-12-06T00:00:00Z", labelmap: "H4sI" });
  assert.equal(eight.read(), null);
  seven.clear();
  assert.equal(seven.read(), null);
});

test("a full or broken storage loses the backup, never the page", () => {
  const full: BackupStorage = {
    getItem: () => "{not json",
    setItem: () => {
      throw new Error("QuotaExceededError");
    },
    removeItem: () => {
      throw new Error("SecurityError");
    },
  };
  const backup = new UnsavedBackup(1, full);
  backup.write({ parent: null, at: "", labelmap: "" });
  assert.equal(backup.read(), null);
  backup.clear();
  assert.equal(new UnsavedBackup(1, null).read(), null);
});
