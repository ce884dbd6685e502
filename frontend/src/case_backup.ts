/**
 * Unsaved edits kept in the browser (localStorage), so a crash, a closed tab or a lost lock loses
 * nothing: the payload a save would send, on top of the version it was drawn on.
 */

import type { MaskPayload } from "./labelmap";

export type Backup = { parent: number | null; at: string } & MaskPayload;

export type BackupStorage = Pick<Storage, "getItem" | "setItem" | "removeItem">;

const BACKUP_PREFIX = "annotator:unsaved:";

function browserStorage(): BackupStorage | null {
  try {
    return globalThis.localStorage ?? null;
  } catch {
    return null; // storage disabled
  }
}

export class UnsavedBackup {
  constructor(
    readonly caseId: number,
    private readonly storage: BackupStorage | null = browserStorage(),
  ) {}

  get key(): string {
    return `${BACKUP_PREFIX}${this.caseId}`;
  }

  write(entry: Backup): void {
    try {
      this.storage?.setItem(this.key, JSON.stringify(entry));
    } catch {
      // storage full or disabled: the server copy (autosave) is what counts
    }
  }

  read(): Backup | null {
    try {
      return JSON.parse(this.storage?.getItem(this.key) ?? "null") as Backup | null;
    } catch {
      return null;
    }
  }

  clear(): void {
    try {
      this.storage?.removeItem(this.key);
    } catch {
      /* nothing kept */
    }
  }
}
