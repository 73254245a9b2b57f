// Client-side stream timings: the same definitions as service/measure.py (DESIGN.md section 5).
//
// - TTFT: request sent -> first content delta of any block (thinking counts).
// - Time to first answer token: request sent -> first text delta (kept apart: a reasoning
//   model can think for a minute before it).
// - Perceived latency: request sent -> first visible progress (relay_progress event,
//   thinking text, or any visible delta). This is what the person watching the page feels.
// - TPOT: (t_last - t_first) / (output_tokens - 1), output_tokens from the final cumulative
//   usage, falling back to the number of content deltas while the stream is live.
// - ITL: gap between consecutive content deltas.
// All times are performance.now() milliseconds, relative to the request being sent.

/** Nearest-rank percentile (q in 0..100) of values; null when empty. */
export function percentile(values, q) {
  if (values.length === 0) return null;
  const ordered = [...values].sort((a, b) => a - b);
  const rank = Math.max(1, Math.ceil((q / 100) * ordered.length));
  return ordered[Math.min(rank, ordered.length) - 1];
}

const round = (ms) => (ms === null ? null : Math.round(ms * 1000) / 1000);

export class TurnClock {
  /** @param {() => number} [now] injectable clock (milliseconds). */
  constructor(now = () => performance.now()) {
    this._now = now;
    this.start = now();
    this.firstByte = null;
    this.firstToken = null;
    this.firstText = null;
    this.firstProgress = null;
    this.lastToken = null;
    this.end = null;
    this.contentDeltas = 0;
    this.outputTokens = null;
    this.gaps = [];
  }

  /** Milliseconds since the request was sent. */
  elapsed() {
    return (this.end ?? this._now()) - this.start;
  }

  /** Body bytes arrived (the first call counts). */
  markByte() {
    if (this.firstByte === null) this.firstByte = this._now();
  }

  /** A visible progress signal (relay_progress, thinking text). */
  markProgress() {
    if (this.firstProgress === null) this.firstProgress = this._now();
  }

  /**
   * A content delta of any block.
   * @param {{isText?: boolean, visible?: boolean}} kind text delta / shown on the page
   */
  markDelta({ isText = false, visible = true } = {}) {
    const now = this._now();
    if (this.firstToken === null) this.firstToken = now;
    else this.gaps.push(now - this.lastToken);
    if (isText && this.firstText === null) this.firstText = now;
    if (visible) this.markProgress();
    this.lastToken = now;
    this.contentDeltas += 1;
  }

  /** Cumulative usage.output_tokens (the latest value wins). */
  setOutputTokens(tokens) {
    this.outputTokens = tokens;
  }

  /** Close the measurement (idempotent). */
  finish() {
    if (this.end === null) this.end = this._now();
  }

  /** TPOT per the definition above; null before two tokens. */
  tpot() {
    if (this.firstToken === null) return null;
    const tokens = this.outputTokens || this.contentDeltas;
    if (tokens < 2) return null;
    return (this.lastToken - this.firstToken) / (tokens - 1);
  }

  _since(t) {
    return t === null ? null : t - this.start;
  }

  /** Figures so far, in milliseconds (null where the event never happened). */
  summary() {
    return {
      ttft_ms: round(this._since(this.firstToken)),
      ttfb_ms: round(this._since(this.firstByte)),
      first_text_ms: round(this._since(this.firstText)),
      perceived_ms: round(this._since(this.firstProgress)),
      tpot_ms: round(this.tpot()),
      itl_last_ms: round(this.gaps.length ? this.gaps[this.gaps.length - 1] : null),
      itl_p50_ms: round(percentile(this.gaps, 50)),
      itl_p99_ms: round(percentile(this.gaps, 99)),
      itl_max_ms: round(this.gaps.length ? this.gaps.reduce((a, b) => Math.max(a, b)) : null),
      total_ms: round(this.elapsed()),
      content_deltas: this.contentDeltas,
      output_tokens: this.outputTokens,
    };
  }

  /** The body of POST /v1/streams/{id}/client-metrics (service/client/report.py). */
  report() {
    const s = this.summary();
    return {
      ttft_ms: s.ttft_ms,
      ttfb_ms: s.ttfb_ms,
      perceived_ms: s.perceived_ms,
      tpot_ms: s.tpot_ms,
      total_ms: s.total_ms,
      content_deltas: s.content_deltas,
      client: "browser",
    };
  }
}

/**
 * How much earlier the page showed progress than the first answer token, as a sentence.
 * @param {{perceived_ms: number|null, first_text_ms: number|null, ttft_ms: number|null}} s
 */
export function perceivedGap(s) {
  if (s.perceived_ms === null || s.first_text_ms === null) return null;
  const gap = s.first_text_ms - s.perceived_ms;
  if (gap < 50) return "progress and the first answer token arrived together";
  return `progress shown ${(gap / 1000).toFixed(1)} s before the first answer token`;
}
