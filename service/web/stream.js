// One streamed turn through the relay: fetch + ReadableStream + AbortController.
//
// EventSource cannot POST, so the page reads the fetch body itself with the SSE parser. The
// request opts into early relay events (X-Relay-Events: all), so relay_progress can reach the
// page even before message_start, and carries an Idempotency-Key, which makes the stream
// resumable: a dropped connection is picked up with GET /v1/streams/{id} and Last-Event-ID
// (no duplicate, no gap). Stop aborts the fetch *and* calls the cancel endpoint: a resumable
// stream outlives its connection for the relay's resume grace, so the abort alone would leave
// the provider generating for a while.

import { MessageFold } from "./message.js";
import { TurnClock } from "./metrics.js";
import { SSEParseError, SSEParser } from "./sse.js";

/** Statuses worth a whole-turn retry (the relay's own retry list, DESIGN.md section 6). */
const RETRYABLE_STATUS = new Set([408, 409, 429, 500, 502, 503, 504, 529]);
const RESUME_BASE_DELAY_MS = 250;
const HEADERS_WAIT_ON_STOP_MS = 2000;

/** The turn failed: HTTP status before the stream, an error event in it, or a lost stream. */
export class TurnError extends Error {
  constructor(message, { type = "api_error", status = null, retryable = false, partial = false, reason = null } = {}) {
    super(message);
    this.type = type;
    this.status = status;
    this.retryable = retryable;
    this.partial = partial;
    this.reason = reason;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function idempotencyKey() {
  // randomUUID needs a secure context; a page opened over plain http on a LAN address is not.
  if (globalThis.crypto?.randomUUID) return `web-${crypto.randomUUID()}`;
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return `web-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

async function statusError(response, partial = false) {
  let type = "api_error";
  let message = `HTTP ${response.status}`;
  try {
    const body = await response.json();
    type = body.error?.type ?? type;
    message = body.error?.message ?? message;
  } catch {
    // Not the Anthropic error shape (a proxy's HTML page): keep the status line.
  }
  return new TurnError(message, {
    type,
    status: response.status,
    retryable: RETRYABLE_STATUS.has(response.status),
    partial,
  });
}

/**
 * @typedef {object} TurnHandlers
 * @property {(streamId: string|null) => void} [onHeaders] response headers arrived
 * @property {(change: object, turn: RelayTurn) => void} [onChange] a stream event was folded
 * @property {(progress: {phase: string, elapsed_ms: number}) => void} [onProgress] relay_progress
 * @property {(metrics: object) => void} [onServerMetrics] relay_metrics (server-side figures)
 * @property {(attempt: number, lastEventId: string|null) => void} [onResume] reconnecting
 */

export class RelayTurn {
  /**
   * @param {{body: object, baseUrl?: string, handlers?: TurnHandlers, maxResumes?: number}} options
   */
  constructor({ body, baseUrl = "", handlers = {}, maxResumes = 3 }) {
    this.body = body;
    this.baseUrl = baseUrl;
    this.handlers = handlers;
    this.maxResumes = maxResumes;
    this.fold = new MessageFold();
    this.clock = null;
    this.streamId = null;
    this.serverMetrics = null;
    this.resumes = 0;
    this.stopped = false;
    this.done = false;
    this._abort = new AbortController();
    this._parser = new SSEParser();
    this._headersSeen = null;
    this._error = null;
    this._headers = new Promise((resolve) => {
      this._headersSeen = resolve;
    });
  }

  /** The resume cursor: the id of the last event received. */
  get lastEventId() {
    return this._parser.lastEventId;
  }

  /**
   * Stream the turn to its end.
   * @returns {Promise<"completed"|"stopped">} resolves when the stream ended or was stopped
   * @throws {TurnError} the turn failed (see its retryable / partial / reason)
   */
  async run() {
    this.clock = new TurnClock();
    try {
      let response = await this._post();
      while (!this.stopped) {
        if (await this._consume(response)) return "completed";
        if (this.stopped) break;
        response = await this._resume();
      }
      return "stopped";
    } finally {
      this.done = true;
      this.clock.finish();
      this._headersSeen();
    }
  }

  /**
   * Stop: no more events are applied from now on, the fetch is aborted, and the relay is asked
   * to cancel the stream (and so the upstream generation).
   * @returns {Promise<object|null>} the cancel endpoint's answer, if it was called
   */
  async stop() {
    if (this.stopped || this.done) return null;
    this.stopped = true;
    this.clock?.finish();
    if (this.streamId === null) {
      // The id arrives with the response headers; without it the cancel cannot name the stream.
      await Promise.race([this._headers, sleep(HEADERS_WAIT_ON_STOP_MS)]);
    }
    this._abort.abort();
    if (this.streamId === null) return null;
    let answer;
    try {
      const response = await fetch(this._url(`/v1/streams/${encodeURIComponent(this.streamId)}/cancel`), {
        method: "POST",
      });
      answer = await response.json();
      answer.status ??= `http_${response.status}`;
    } catch (err) {
      // The abort already closed our connection; the relay stops an unread stream after its
      // resume grace. Say so rather than fail the click.
      answer = { status: "cancel_failed", error: String(err) };
    }
    console.info(`stream.cancel stream_id=${this.streamId} status=${answer.status}`);
    return answer;
  }

  /**
   * Post what the page observed to the relay (POST .../client-metrics).
   * @returns {Promise<object|null>} the relay's answer ({last_mile_ms, ...}) or null
   */
  async reportMetrics() {
    if (this.streamId === null || this.clock === null) return null;
    const response = await fetch(this._url(`/v1/streams/${encodeURIComponent(this.streamId)}/client-metrics`), {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(this.clock.report()),
    });
    return response.ok ? response.json() : null;
  }

  _url(path) {
    return `${this.baseUrl}${path}`;
  }

  async _post() {
    let response;
    try {
      response = await fetch(this._url("/v1/messages"), {
        method: "POST",
        headers: {
          "content-type": "application/json",
          "anthropic-version": "2023-06-01",
          "x-relay-events": "all",
          // A fresh key per turn attempt: a whole-turn retry must not attach to the failed one.
          "idempotency-key": idempotencyKey(),
        },
        body: JSON.stringify({ ...this.body, stream: true }),
        signal: this._abort.signal,
        cache: "no-store",
      });
    } catch (err) {
      if (this.stopped) return null;
      throw new TurnError(`cannot reach the relay: ${err.message}`, { retryable: true, reason: "connect_failed" });
    }
    if (!response.ok) throw await statusError(response);
    this.streamId = response.headers.get("x-relay-stream-id");
    this._headersSeen();
    this.handlers.onHeaders?.(this.streamId);
    return response;
  }

  /** Read one connection's body; true once message_stop arrived and the body ended. */
  async _consume(response) {
    if (response === null || this.stopped) return false;
    const reader = response.body.getReader();
    this._parser.reset();
    let finished = false;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) {
          finished = true;
          break;
        }
        if (this.stopped) return false;
        this.clock.markByte();
        for (const event of this._parser.feed(value)) {
          this._handle(event);
          if (this.stopped) return false; // Stop pressed by a handler: apply nothing more
        }
      }
    } catch (err) {
      if (err instanceof TurnError) throw err;
      if (err instanceof SSEParseError) throw new TurnError(err.message, { reason: "bad_stream", partial: this._partial() });
      // A network error (TypeError) or the abort of Stop: the connection is gone.
    } finally {
      if (!finished) reader.cancel().catch(() => {});
    }
    if (this._error !== null && !this.stopped) throw this._error;
    return this.fold.finished;
  }

  async _resume() {
    const lost = () =>
      new TurnError("connection lost and cannot resume", {
        retryable: true,
        partial: this._partial(),
        reason: "connection_lost",
      });
    if (this.streamId === null) throw lost();
    while (this.resumes < this.maxResumes) {
      this.resumes += 1;
      const cap = this._parser.reconnectionTime ?? 1000;
      await sleep(Math.min(cap, RESUME_BASE_DELAY_MS * 2 ** (this.resumes - 1)));
      if (this.stopped) return null;
      this.handlers.onResume?.(this.resumes, this.lastEventId);
      console.info(`stream.resume stream_id=${this.streamId} attempt=${this.resumes} last_event_id=${this.lastEventId}`);
      const headers = this.lastEventId === null ? {} : { "last-event-id": this.lastEventId };
      let response;
      try {
        response = await fetch(this._url(`/v1/streams/${encodeURIComponent(this.streamId)}`), {
          headers,
          signal: this._abort.signal,
          cache: "no-store",
        });
      } catch {
        if (this.stopped) return null;
        continue; // still unreachable: try again, within maxResumes
      }
      if (response.ok) return response;
      const error = await statusError(response, this._partial());
      error.retryable = true; // the stream is gone, the turn is not: a whole-turn retry can work
      error.reason = "resume_unavailable";
      throw error;
    }
    throw lost();
  }

  _partial() {
    return this.clock !== null && this.clock.contentDeltas > 0;
  }

  _handle(event) {
    switch (event.event) {
      case "relay_progress": {
        this.clock.markProgress();
        this.handlers.onProgress?.(JSON.parse(event.data));
        return;
      }
      case "relay_metrics":
        this.serverMetrics = JSON.parse(event.data);
        this.handlers.onServerMetrics?.(this.serverMetrics);
        return;
      case "error":
        // Keep reading: the relay's relay_metrics (outcome, server timings) follows the error.
        this._error ??= this._errorEvent(event.data);
        return;
      default:
        break;
    }
    if (this._error !== null) return; // nothing after an error is applied
    if (event.event.startsWith("relay_")) return; // future relay additions: ignorable
    let payload;
    try {
      payload = JSON.parse(event.data);
    } catch {
      throw new TurnError(`malformed ${event.event} event from the relay`, {
        reason: "malformed_event",
        partial: this._partial(),
      });
    }
    const change = this.fold.apply(payload);
    if (payload.type === "content_block_delta" && change !== null) {
      const visible = change.kind !== "other_delta";
      this.clock.markDelta({ isText: change.kind === "text", visible });
    } else if (payload.type === "message_delta" && this.fold.outputTokens !== null) {
      this.clock.setOutputTokens(this.fold.outputTokens);
    }
    if (change !== null) this.handlers.onChange?.(change, this);
  }

  _errorEvent(data) {
    let payload = {};
    try {
      payload = JSON.parse(data);
    } catch {
      // An unparseable error is still an error.
    }
    const error = payload.error ?? {};
    const relay = payload.relay ?? {};
    return new TurnError(error.message ?? "stream error", {
      type: error.type ?? "api_error",
      retryable: Boolean(relay.retryable),
      partial: relay.partial ?? this._partial(),
      reason: relay.reason ?? null,
    });
  }
}
