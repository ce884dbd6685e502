/**
 * The NiiVue viewer of one case: the volume, the label map as NiiVue's drawing layer (one colour per class
 * of the project), multiplanar + 3D layouts, window/level presets, and the editing tools:
 *
 * - brush/eraser: NiiVue's own pen (setDrawingEnabled, setPenValue, opts.penSize);
 * - box and click prompts: mouse events are taken before NiiVue sees them and turned into voxel prompts;
 *   the current class's prompts are drawn over every 2D view that shows them (marks.ts), after each frame;
 * - crisp voxels: nearest-neighbour display of the image (the label map is always drawn nearest);
 * - undo/redo: DrawHistory diffs of the drawing bitmap (NiiVue's drawUndo has no redo).
 *
 * The drawing bitmap is in NiiVue's RAS order; `orientation` converts to the server's NIfTI order.
 */

import { NVImage, Niivue, MULTIPLANAR_TYPE, SHOW_RENDER, SLICE_TYPE, cmapper } from "@niivue/niivue";

import type { ClickPrompt } from "./api";
import { WINDOW_PRESETS, labelColormap, locationText, type LabelClass, type WindowPreset } from "./display";
import { DrawHistory } from "./history";
import { type ClassMask, replaceClass } from "./labelmap";
import { drawSlicePrompts, mmToTile } from "./marks";
import {
  type Orientation,
  type Vec3,
  drawToNative,
  nativeAxisOfView,
  nativeToDraw,
  nativeToRas,
  orientationFrom,
  rasToNative,
} from "./orientation";
import { type DrawnBox, type PromptSession, outlineCorners, promptsOnSlice } from "./prompts";
import type { Tool } from "./shortcuts";

export const LAYOUTS = ["multi3d", "multi", "axial", "coronal", "sagittal", "render"] as const;
export type Layout = (typeof LAYOUTS)[number];

export interface ViewerEvents {
  /** A brush or eraser stroke changed the drawing. */
  onStroke?: () => void;
  /** The drawing changed for any reason (stroke, undo, redo, model result, load). */
  onChange?: () => void;
  onBox?: (box: DrawnBox) => void;
  onClick?: (click: ClickPrompt) => void;
  /** Crosshair position text (mm, voxel, value). */
  onLocation?: (text: string) => void;
  /** Any pointer or wheel input on the canvas (for the effort clock). */
  onInput?: () => void;
}

export class ViewerError extends Error {}

const DRAG_THRESHOLD_PX = 4;

export class Viewer {
  readonly nv: Niivue;
  readonly history = new DrawHistory();
  orientation: Orientation | null = null;
  tool: Tool = "navigate";
  penValue = 1;
  penSize = 3;
  opacity = 0.5;
  overlayVisible = true;
  readonly hidden = new Set<number>();
  layout: Layout = "multi3d";
  /** WebGL runs on the CPU (SwiftShader, llvmpipe): a 3D render of a big volume takes seconds a frame. */
  softwareGL = false;
  preset: WindowPreset = WINDOW_PRESETS[0];
  editable = true;
  /** Nearest-neighbour display of the image voxels. */
  crisp = false;
  private boxEl: HTMLDivElement;
  private marksEl: HTMLCanvasElement;
  private prompts: PromptSession | null = null;
  private press: { x: number; y: number; tile: number; shift: boolean } | null = null;

  constructor(
    readonly canvas: HTMLCanvasElement,
    readonly labels: readonly LabelClass[],
    readonly events: ViewerEvents = {},
  ) {
    this.nv = new Niivue({
      backColor: [0, 0, 0, 1],
      show3Dcrosshair: true,
      crosshairColor: [0.95, 0.8, 0.1, 0.8],
      // in voxels: a whole voxel hides what is under the crosshair when zoomed in
      crosshairWidth: 0.35,
      multiplanarLayout: MULTIPLANAR_TYPE.GRID,
      multiplanarShowRender: SHOW_RENDER.NEVER,
      isOrientationTextVisible: true,
      dragAndDropEnabled: false,
      // our own history does undo/redo; NiiVue's ring only needs to exist
      maxDrawUndoBitmaps: 2,
      penSize: this.penSize,
      isNearestInterpolation: false,
      // NiiVue's own hot keys (clip plane, view mode) would clash with ours
      clipPlaneHotKey: "",
      cycleClipPlaneHotKey: "",
      viewModeHotKey: "",
      logLevel: "warn",
      loadingText: "loading the volume...",
    });
    const host = canvas.parentElement;
    if (!host) throw new ViewerError("The viewer canvas needs a parent element (it sizes the canvas).");
    this.boxEl = document.createElement("div");
    this.boxEl.className = "prompt-box";
    this.boxEl.hidden = true;
    host.appendChild(this.boxEl);
    this.marksEl = document.createElement("canvas");
    this.marksEl.className = "prompt-marks";
    this.marksEl.setAttribute("aria-hidden", "true");
    host.appendChild(this.marksEl);
    // the prompt marks follow every frame NiiVue draws (slice scrolled, crosshair moved, zoom, resize)
    const drawScene = this.nv.drawScene.bind(this.nv);
    this.nv.drawScene = () => {
      const out = drawScene();
      this.drawMarks();
      return out;
    };
    // capture phase on the host: prompt tools see the mouse before NiiVue's canvas listeners do
    host.addEventListener("mousedown", (e) => this.promptDown(e), true);
    host.addEventListener("mousemove", (e) => this.promptMove(e), true);
    host.addEventListener("mouseup", (e) => this.promptUp(e), true);
    for (const type of ["mousedown", "wheel", "touchstart"]) {
      host.addEventListener(type, () => this.events.onInput?.(), { passive: true });
    }
  }

  /**
   * Show the volume (with the window `preset`, applied at load: re-windowing later re-uploads the volume)
   * and the mask at `maskUrl`, or an empty drawing. The default layout is the three planes + 3D, or the
   * three planes alone where WebGL runs in software.
   */
  async open(opts: {
    imageUrl: string;
    imageName?: string;
    maskUrl: string | null;
    preset?: WindowPreset;
  }): Promise<void> {
    await this.nv.attachToCanvas(this.canvas);
    this.softwareGL = isSoftwareRenderer(this.nv.gl);
    if (this.softwareGL) this.layout = "multi";
    this.nv.onLocationChange = (data: unknown) => {
      const { vox, values } = data as { vox?: ArrayLike<number>; values?: { value?: number }[] };
      if (!vox || !this.orientation) return;
      const [x, y, z] = [0, 1, 2].map((a) => Math.round(vox[a]));
      const [X, Y] = this.o.dimsRAS;
      const bitmap = this.nv.drawBitmap;
      const labelValue = bitmap ? bitmap[x + X * (y + Y * z)] ?? 0 : 0;
      this.events.onLocation?.(locationText(rasToNative(this.o, vox), values?.[0]?.value, labelValue, this.labels));
    };
    this.nv.onDrawingChanged = (action: string) => {
      if (action !== "draw") return;
      if (this.history.commit(this.drawing)) {
        this.events.onStroke?.();
        this.events.onChange?.();
      }
    };
    const preset = opts.preset ?? WINDOW_PRESETS[0];
    const range = preset.min !== undefined && preset.max !== undefined ? { cal_min: preset.min, cal_max: preset.max } : {};
    await this.nv.loadVolumes([
      { url: opts.imageUrl, name: opts.imageName ?? "volume.nii.gz", colormap: "gray", ...range },
    ]);
    this.preset = preset;
    const back = this.nv.back;
    if (!back?.permRAS || !back.hdr) throw new ViewerError("The volume loaded without a header.");
    this.orientation = orientationFrom(back.permRAS, [back.hdr.dims[1], back.hdr.dims[2], back.hdr.dims[3]]);
    if (opts.maskUrl) {
      await this.loadMaskUrl(opts.maskUrl);
    } else {
      this.nv.createEmptyDrawing();
      this.history.reset(this.drawing);
    }
    this.applyColormap();
    this.nv.setDrawOpacity(this.opacity);
    this.setLayout(this.layout);
    this.setTool(this.tool);
  }

  /** The drawing bitmap (RAS order), owned by NiiVue. */
  get drawing(): Uint8Array {
    const bitmap = this.nv.drawBitmap;
    if (!bitmap) throw new ViewerError("No drawing is open.");
    return bitmap;
  }

  get o(): Orientation {
    if (!this.orientation) throw new ViewerError("No volume is open.");
    return this.orientation;
  }

  /**
   * Go to native voxel `ijk` (the crosshair moves there, so every 2D view shows its slice) and return
   * where it is drawn on the page in the 2D view of `tile`, in CSS pixels: what a script or a browser
   * test clicks to act as a user would.
   */
  pagePoint(ijk: ArrayLike<number>, tile: number): [number, number] {
    const frac = this.nv.vox2frac(nativeToRas(this.o, ijk));
    this.nv.scene.crosshairPos = frac;
    this.nv.drawScene();
    const hit = this.nv.frac2canvasPosWithTile(frac, tile);
    if (!hit) throw new ViewerError(`View ${tile} does not show voxel [${Array.from(ijk)}].`);
    const rect = this.canvas.getBoundingClientRect();
    const dpr = this.nv.uiData.dpr || 1;
    return [rect.left + hit.pos[0] / dpr, rect.top + hit.pos[1] / dpr];
  }

  /** Replace the drawing with a stored version's label map (a gzipped NIfTI on the volume's grid). */
  async loadMaskUrl(url: string): Promise<void> {
    const mask = await NVImage.loadFromUrl({ url, name: "mask.nii.gz" });
    if (!this.nv.loadDrawing(mask)) {
      throw new ViewerError("The stored mask does not have the volume's dimensions; it cannot be shown.");
    }
    this.history.reset(this.drawing);
    this.applyColormap();
    this.events.onChange?.();
  }

  /** Fetch a stored version's label map in native (server) order without showing it. */
  async fetchNativeMask(url: string): Promise<Uint8Array> {
    const mask = await NVImage.loadFromUrl({ url, name: "mask.nii.gz" });
    const img = mask.img;
    if (!img || img.length !== this.o.size) {
      throw new ViewerError("The stored mask does not have the volume's dimensions.");
    }
    return img instanceof Uint8Array ? img : Uint8Array.from(img as ArrayLike<number>);
  }

  /** The label map in the server's voxel order. */
  nativeMask(): Uint8Array {
    return drawToNative(this.o, this.drawing);
  }

  /** Show a native-order label map; `resetHistory` forgets undo (a reload), else it is one undo step. */
  setNativeMask(native: Uint8Array, resetHistory: boolean): void {
    nativeToDraw(this.o, native, this.drawing);
    if (resetHistory) this.history.reset(this.drawing);
    else this.history.commit(this.drawing);
    this.nv.refreshDrawing(true);
    this.events.onChange?.();
  }

  /** A model's mask replaces its class; one undo step. Returns the class's voxel count. */
  applyClassMask(cm: ClassMask): number {
    const voxels = replaceClass(this.o, this.drawing, cm);
    this.history.commit(this.drawing);
    this.nv.refreshDrawing(true);
    this.events.onChange?.();
    return voxels;
  }

  undo(): boolean {
    return this.step(this.history.undo(this.drawing));
  }

  redo(): boolean {
    return this.step(this.history.redo(this.drawing));
  }

  private step(changed: boolean): boolean {
    if (changed) {
      this.nv.refreshDrawing(true);
      this.events.onChange?.();
    }
    return changed;
  }

  setTool(tool: Tool): void {
    this.tool = tool;
    const drawing = this.editable && (tool === "brush" || tool === "eraser");
    this.nv.setDrawingEnabled(drawing);
    if (drawing) this.nv.setPenValue(tool === "eraser" ? 0 : this.penValue, false);
    this.canvas.dataset.tool = tool;
    this.canvas.parentElement!.dataset.tool = tool;
  }

  setPenValue(value: number): void {
    this.penValue = value;
    this.setTool(this.tool);
  }

  setPenSize(size: number): number {
    this.penSize = Math.min(Math.max(Math.round(size), 1), 51);
    this.nv.opts.penSize = this.penSize;
    return this.penSize;
  }

  setOpacity(opacity: number): void {
    this.opacity = Math.min(Math.max(opacity, 0), 1);
    if (this.overlayVisible) this.nv.setDrawOpacity(this.opacity);
  }

  toggleOverlay(): boolean {
    this.overlayVisible = !this.overlayVisible;
    this.nv.setDrawOpacity(this.overlayVisible ? this.opacity : 0);
    return this.overlayVisible;
  }

  setClassVisible(value: number, visible: boolean): void {
    if (visible) this.hidden.delete(value);
    else this.hidden.add(value);
    this.applyColormap();
  }

  /** The drawing's colours; only the colormap texture is rebuilt (setDrawColormap re-uploads the volume). */
  private applyColormap(): void {
    this.nv.drawLut = cmapper.makeDrawLut(labelColormap(this.labels, this.hidden));
    if (this.nv.back) {
      this.nv.refreshColormaps();
      this.nv.drawScene();
    }
  }

  /** Nearest-neighbour (crisp voxels) or linear display of the image. */
  setCrisp(crisp: boolean): void {
    this.crisp = crisp;
    this.nv.setInterpolation(crisp);
  }

  /** The prompts to draw (the current class's), or null for none. */
  showPrompts(session: PromptSession | null): void {
    this.prompts = session;
    this.drawMarks();
  }

  /** Draw the prompts over each 2D view: the box where the view's slice crosses it, the clicks on that slice. */
  private drawMarks(): void {
    const el = this.marksEl;
    if (el.width !== this.canvas.width || el.height !== this.canvas.height) {
      el.width = this.canvas.width;
      el.height = this.canvas.height;
    }
    const ctx = el.getContext("2d");
    if (!ctx) return;
    ctx.clearRect(0, 0, el.width, el.height);
    const session = this.prompts;
    if (!session || !this.orientation || !this.nv.back) return;
    const o = this.orientation;
    const crosshair = this.crosshairVoxel();
    const dpr = this.nv.uiData.dpr || 1;
    for (const tile of this.nv.screenSlices) {
      if (tile.axCorSag > 2 || tile.leftTopMM.length < 2 || tile.fovMM.length < 2) continue;
      const normal = nativeAxisOfView(o, tile.axCorSag);
      const marks = promptsOnSlice(session, normal, crosshair[normal]);
      if (!marks.box && marks.clicks.length === 0) continue;
      const toCanvas = (ijk: readonly number[]) =>
        mmToTile(tile, this.nv.frac2mm(this.nv.vox2frac(nativeToRas(o, ijk))));
      ctx.save();
      const [left, top, width, height] = tile.leftTopWidthHeight;
      ctx.beginPath();
      ctx.rect(Math.min(left, left + width), top, Math.abs(width), height);
      ctx.clip();
      drawSlicePrompts(ctx, marks, marks.box ? outlineCorners(marks.box, normal) : null, toCanvas, dpr);
      ctx.restore();
    }
  }

  setWindow(preset: WindowPreset): void {
    const back = this.nv.back;
    if (!back) return;
    this.preset = preset;
    if (preset.key === "auto") {
      back.cal_min = back.robust_min ?? back.cal_min;
      back.cal_max = back.robust_max ?? back.cal_max;
    } else if (preset.key === "full") {
      back.cal_min = back.global_min ?? back.cal_min;
      back.cal_max = back.global_max ?? back.cal_max;
    } else {
      back.cal_min = preset.min!;
      back.cal_max = preset.max!;
    }
    this.nv.updateGLVolume();
  }

  setLayout(layout: Layout): void {
    this.layout = layout;
    this.nv.opts.multiplanarShowRender = layout === "multi3d" ? SHOW_RENDER.ALWAYS : SHOW_RENDER.NEVER;
    const type = {
      multi3d: SLICE_TYPE.MULTIPLANAR,
      multi: SLICE_TYPE.MULTIPLANAR,
      axial: SLICE_TYPE.AXIAL,
      coronal: SLICE_TYPE.CORONAL,
      sagittal: SLICE_TYPE.SAGITTAL,
      render: SLICE_TYPE.RENDER,
    }[layout];
    this.nv.setSliceType(type);
  }

  /** The crosshair in native voxels. */
  crosshairVoxel(): Vec3 {
    return rasToNative(this.o, this.nv.frac2vox(this.nv.scene.crosshairPos));
  }

  // ---- box and click prompts ----------------------------------------------------------------------

  private promptTool(): boolean {
    return this.editable && (this.tool === "box" || this.tool === "click-positive" || this.tool === "click-negative");
  }

  private canvasXY(e: MouseEvent): [number, number] {
    const rect = this.canvas.getBoundingClientRect();
    const dpr = this.nv.uiData.dpr ?? window.devicePixelRatio ?? 1;
    return [(e.clientX - rect.left) * dpr, (e.clientY - rect.top) * dpr];
  }

  /** The 2D view under a canvas point: its tile and native voxel, or null (3D view, outside). */
  private voxelAt(x: number, y: number): { tile: number; axCorSag: number; ijk: Vec3; frac: ArrayLike<number> } | null {
    const tile = this.nv.tileIndex(x, y);
    if (tile < 0) return null;
    const axCorSag = this.nv.screenSlices[tile]?.axCorSag;
    if (axCorSag === undefined || axCorSag > 2) return null;
    const frac = this.nv.canvasPos2frac([x, y]);
    if (frac[0] < 0) return null;
    return { tile, axCorSag, ijk: rasToNative(this.o, this.nv.frac2vox(frac)), frac };
  }

  private promptDown(e: MouseEvent): void {
    if (!this.promptTool() || e.button !== 0 || e.target !== this.canvas) return;
    e.stopPropagation();
    e.preventDefault();
    const [x, y] = this.canvasXY(e);
    const at = this.voxelAt(x, y);
    if (!at) return;
    this.press = { x, y, tile: at.tile, shift: e.shiftKey };
  }

  private promptMove(e: MouseEvent): void {
    if (!this.press) return;
    e.stopPropagation();
    if (this.tool !== "box") return;
    const dpr = this.nv.uiData.dpr ?? 1;
    const [x, y] = this.canvasXY(e);
    const left = Math.min(x, this.press.x) / dpr;
    const top = Math.min(y, this.press.y) / dpr;
    Object.assign(this.boxEl.style, {
      left: `${this.canvas.offsetLeft + left}px`,
      top: `${this.canvas.offsetTop + top}px`,
      width: `${Math.abs(x - this.press.x) / dpr}px`,
      height: `${Math.abs(y - this.press.y) / dpr}px`,
    });
    this.boxEl.hidden = false;
  }

  private promptUp(e: MouseEvent): void {
    const press = this.press;
    if (!press) return;
    this.press = null;
    this.boxEl.hidden = true;
    e.stopPropagation();
    const [x, y] = this.canvasXY(e);
    const start = this.voxelAt(press.x, press.y);
    if (!start) return;
    const moved = Math.hypot(x - press.x, y - press.y) > DRAG_THRESHOLD_PX;
    if (this.tool === "box") {
      const end = this.voxelAt(x, y);
      if (!moved || !end || end.tile !== press.tile) return;
      const normal = nativeAxisOfView(this.o, start.axCorSag);
      const lo = [0, 1, 2].map((n) => Math.min(start.ijk[n], end.ijk[n])) as Vec3;
      const hi = [0, 1, 2].map((n) => Math.max(start.ijk[n], end.ijk[n])) as Vec3;
      lo[normal] = hi[normal] = start.ijk[normal];
      this.events.onBox?.({ lo, hi, normal });
      return;
    }
    if (moved) return;
    // a click also moves the crosshair there, so all views show the clicked voxel
    this.nv.scene.crosshairPos = [start.frac[0], start.frac[1], start.frac[2]] as unknown as typeof this.nv.scene.crosshairPos;
    this.nv.drawScene();
    this.nv.createOnLocationChange();
    const positive = (this.tool === "click-positive") !== press.shift;
    this.events.onClick?.({ ijk: start.ijk, positive });
  }
}

export function isSoftwareRenderer(gl: WebGL2RenderingContext | WebGLRenderingContext | null): boolean {
  if (!gl) return false;
  const info = gl.getExtension("WEBGL_debug_renderer_info");
  const renderer = String(gl.getParameter(info ? info.UNMASKED_RENDERER_WEBGL : gl.RENDERER));
  return /swiftshader|llvmpipe|softpipe|software/i.test(renderer);
}
