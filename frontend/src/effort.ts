/**
 * Effort on a case, counted in the browser and sent with every save (the server stores it on the new
 * version as the work since its parent):
 *
 * - seconds: time the page was visible and in use: the tab is visible and there was input (mouse, key,
 *   wheel) in the last `idleSeconds`; a viewer left open over lunch counts the first idle minutes only;
 * - clicks: prompts placed for the model (each positive/negative click, each box);
 * - strokes: brush and eraser strokes;
 * - model_calls: requests to the interactive model.
 */

export interface Effort {
  seconds: number;
  clicks: number;
  strokes: number;
  model_calls: number;
}

export class EffortCounter {
  private seconds = 0;
  private clicks = 0;
  private strokes = 0;
  private modelCalls = 0;
  private visible: boolean;
  private lastInput: number;
  private lastTick: number;

  constructor(
    now: number,
    visible = true,
    readonly idleSeconds = 120,
  ) {
    this.visible = visible;
    this.lastInput = now;
    this.lastTick = now;
  }

  /** Account time up to `now` (milliseconds). */
  tick(now: number): void {
    if (this.visible) {
      const activeUntil = Math.min(now, this.lastInput + this.idleSeconds * 1000);
      if (activeUntil > this.lastTick) this.seconds += (activeUntil - this.lastTick) / 1000;
    }
    this.lastTick = Math.max(this.lastTick, now);
  }

  input(now: number): void {
    this.tick(now);
    this.lastInput = now;
  }

  setVisible(visible: boolean, now: number): void {
    this.tick(now);
    this.visible = visible;
    if (visible) this.lastInput = now;
  }

  click(): void {
    this.clicks++;
  }

  stroke(): void {
    this.strokes++;
  }

  modelCall(): void {
    this.modelCalls++;
  }

  snapshot(now: number): Effort {
    this.tick(now);
    return {
      seconds: Math.round(this.seconds * 10) / 10,
      clicks: this.clicks,
      strokes: this.strokes,
      model_calls: this.modelCalls,
    };
  }

  /** After a save: what was sent belongs to that version; what came in during the request stays. */
  consume(sent: Effort): void {
    this.seconds = Math.max(0, this.seconds - sent.seconds);
    this.clicks = Math.max(0, this.clicks - sent.clicks);
    this.strokes = Math.max(0, this.strokes - sent.strokes);
    this.modelCalls = Math.max(0, this.modelCalls - sent.model_calls);
  }
}
