/**
 * Undo/redo for the drawing bitmap, as sparse diffs against a snapshot of the last committed state:
 * a brush stroke on a 256x256x128 volume costs a few kilobytes, not a copy of the 8 MB bitmap.
 * NiiVue keeps its own undo ring (drawUndo) but has no redo; this replaces it.
 */

interface Edit {
  /** Unique within the history: tells whether the newest undo step is still a given one. */
  id: number;
  index: Uint32Array;
  before: Uint8Array;
  after: Uint8Array;
}

export class DrawHistory {
  private snapshot: Uint8Array = new Uint8Array(0);
  private undos: Edit[] = [];
  private redos: Edit[] = [];
  private storedVoxels = 0;
  private serial = 0;

  /** maxEdits: undo depth; maxVoxels: how many changed voxels all undo steps may hold together. */
  constructor(
    readonly maxEdits = 100,
    readonly maxVoxels = 32 * 1024 * 1024,
  ) {}

  /** Start over from `bitmap` (a new case, a reload): nothing to undo. */
  reset(bitmap: Uint8Array): void {
    this.snapshot = bitmap.slice();
    this.undos = [];
    this.redos = [];
    this.storedVoxels = 0;
  }

  get canUndo(): boolean {
    return this.undos.length > 0;
  }

  get canRedo(): boolean {
    return this.redos.length > 0;
  }

  /** The id of the step `undo` would take back (0 when none): what a caller records to recognise it later. */
  get top(): number {
    return this.undos.at(-1)?.id ?? 0;
  }

  /** Record what changed in `bitmap` since the last commit as one undo step; false when nothing did. */
  commit(bitmap: Uint8Array): boolean {
    if (bitmap.length !== this.snapshot.length) {
      this.reset(bitmap);
      return false;
    }
    const snap = this.snapshot;
    let n = 0;
    for (let v = 0; v < bitmap.length; v++) if (bitmap[v] !== snap[v]) n++;
    if (n === 0) return false;
    const edit: Edit = {
      id: ++this.serial,
      index: new Uint32Array(n),
      before: new Uint8Array(n),
      after: new Uint8Array(n),
    };
    let e = 0;
    for (let v = 0; v < bitmap.length; v++) {
      if (bitmap[v] !== snap[v]) {
        edit.index[e] = v;
        edit.before[e] = snap[v];
        edit.after[e] = bitmap[v];
        snap[v] = bitmap[v];
        e++;
      }
    }
    this.undos.push(edit);
    this.storedVoxels += n;
    for (const dropped of this.redos) this.storedVoxels -= dropped.index.length;
    this.redos = [];
    while (this.undos.length > this.maxEdits || (this.storedVoxels > this.maxVoxels && this.undos.length > 1)) {
      this.storedVoxels -= this.undos.shift()!.index.length;
    }
    return true;
  }

  /** Put `bitmap` back to before the last step (uncommitted changes are committed first). */
  undo(bitmap: Uint8Array): boolean {
    this.commit(bitmap);
    const edit = this.undos.pop();
    if (!edit) return false;
    this.write(bitmap, edit.index, edit.before);
    this.redos.push(edit);
    return true;
  }

  redo(bitmap: Uint8Array): boolean {
    this.commit(bitmap);
    const edit = this.redos.pop();
    if (!edit) return false;
    this.write(bitmap, edit.index, edit.after);
    this.undos.push(edit);
    return true;
  }

  private write(bitmap: Uint8Array, index: Uint32Array, values: Uint8Array): void {
    for (let e = 0; e < index.length; e++) {
      bitmap[index[e]] = values[e];
      this.snapshot[index[e]] = values[e];
    }
  }
}
