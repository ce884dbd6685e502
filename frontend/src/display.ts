/** What the viewer shows: the label colormap of a project's label set, and window/level presets. */

export interface LabelClass {
  value: number;
  name: string;
  /** "#rrggbb" */
  colour: string;
}

/** NiiVue's colormap table (`ColorMap`): parallel arrays, one entry per index in `I`. */
export interface LabelColormap {
  R: number[];
  G: number[];
  B: number[];
  A: number[];
  I: number[];
  labels: string[];
}

export function parseColour(colour: string): [number, number, number] {
  const m = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(colour);
  if (!m) throw new RangeError(`A colour is written #rrggbb, got '${colour}'.`);
  return [parseInt(m[1], 16), parseInt(m[2], 16), parseInt(m[3], 16)];
}

/**
 * A dense 256-entry label colormap: index 0 (background), hidden classes and values outside the label set
 * are transparent; each class has its colour, fully opaque (the overlay opacity is applied on top).
 * Dense, because NiiVue's drawing LUT is read from index 0.
 */
export function labelColormap(labels: readonly LabelClass[], hidden: ReadonlySet<number> = new Set()): LabelColormap {
  const cm: LabelColormap = { R: [], G: [], B: [], A: [], I: [], labels: [] };
  const byValue = new Map(labels.map((l) => [l.value, l]));
  for (let v = 0; v < 256; v++) {
    const label = byValue.get(v);
    const [r, g, b] = label ? parseColour(label.colour) : [0, 0, 0];
    cm.R.push(r);
    cm.G.push(g);
    cm.B.push(b);
    cm.A.push(label && v !== 0 && !hidden.has(v) ? 255 : 0);
    cm.I.push(v);
    cm.labels.push(label ? label.name : v === 0 ? "background" : "");
  }
  return cm;
}

export interface WindowPreset {
  key: string;
  name: string;
  /** "auto": NiiVue's robust range of the volume (2nd..98th percentile); else the window [min, max]. */
  min?: number;
  max?: number;
}

function wl(key: string, name: string, width: number, level: number): WindowPreset {
  return { key, name, min: level - width / 2, max: level + width / 2 };
}

export const WINDOW_PRESETS: readonly WindowPreset[] = [
  { key: "auto", name: "Auto (robust range)" },
  { key: "full", name: "Full range" },
  wl("ct-soft", "CT soft tissue (W400 L40)", 400, 40),
  wl("ct-lung", "CT lung (W1500 L-600)", 1500, -600),
  wl("ct-bone", "CT bone (W2000 L500)", 2000, 500),
  wl("ct-brain", "CT brain (W80 L40)", 80, 40),
  wl("ct-liver", "CT liver (W150 L60)", 150, 60),
];

/** The preset a volume opens with: auto for MR and anything else, soft tissue for CT. */
export function defaultPreset(modality: string): WindowPreset {
  return modality.toUpperCase() === "CT" ? WINDOW_PRESETS[2] : WINDOW_PRESETS[0];
}

/**
 * The cursor readout under the views: the native voxel (the `[i, j, k]` prompts and the server use), the
 * image value there and the structure the mask has there. NiiVue's own string gives millimetres, a frame
 * number and its label table's name, which says little to an annotator.
 */
export function locationText(
  ijk: ArrayLike<number>,
  value: number | undefined,
  labelValue: number,
  labels: readonly LabelClass[],
): string {
  let shown = "–";
  if (value !== undefined && Number.isFinite(value)) {
    shown = Number.isInteger(value) ? String(value) : String(Number(value.toPrecision(4)));
  }
  const label = labels.find((l) => l.value === labelValue);
  const where = labelValue === 0 ? "background" : label ? label.name : `label ${labelValue}`;
  return `voxel ${ijk[0]}, ${ijk[1]}, ${ijk[2]} · value ${shown} · ${where}`;
}
