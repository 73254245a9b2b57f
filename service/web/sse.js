// Incremental WHATWG event-stream parser: bytes (or text) in any chunking, events out.
//
// EventSource cannot POST, so the page reads the response body of a fetch() itself and needs
// the same interpretation rules EventSource applies (HTML spec, "Interpreting an event
// stream"). Chunk boundaries never change the result: a multi-byte UTF-8 character split
// between two chunks is held by a streaming TextDecoder, a CR that ends one chunk swallows an
// LF that starts the next, and only the unterminated tail of a line is carried over.
// The same rules as the relay's Python decoder (service/sse.py); tests/test_web_sse.py feeds
// both the same bytes split at every offset.

/** A dispatched event: type, data (lines joined with "\n"), last event id, retry. */
export class SSEEvent {
  constructor(event, data, id, retry) {
    /** Event type; "message" when the block had no (or an empty) event field. */
    this.event = event;
    /** The block's data values joined with "\n". */
    this.data = data;
    /** The last-event-id buffer at dispatch (persists across events); null if never set. */
    this.id = id;
    /** A valid retry value carried in this block, else null. */
    this.retry = retry;
  }
}

/** The stream broke a bound (a line longer than maxLineLength characters). */
export class SSEParseError extends Error {}

const LF = "\n";
const CR = "\r";

export class SSEParser {
  /**
   * @param {{maxLineLength?: number}} [options] bound on one line (characters), so a server
   *   that never ends a line cannot make the page buffer without limit.
   */
  constructor({ maxLineLength = 1 << 20 } = {}) {
    this._maxLine = maxLineLength;
    this._lastId = null;
    this.reconnectionTime = null;
    this._resetConnection();
  }

  /** The last-event-id buffer (the resume cursor): the latest valid id, null if never set. */
  get lastEventId() {
    return this._lastId;
  }

  /**
   * A new connection (a resume): drop partial bytes of the old one, keep the last event id.
   */
  reset() {
    this._resetConnection();
  }

  _resetConnection() {
    this._decoder = new TextDecoder("utf-8"); // strips one leading BOM, like EventSource
    this._tail = ""; // unterminated end of the current line
    this._skipLF = false; // the previous chunk ended with CR: a leading LF belongs to it
    this._bomChecked = false; // for text input, which bypasses the decoder
    this._data = [];
    this._type = "";
    this._retry = null;
  }

  /**
   * Feed a chunk (Uint8Array or string) and return the events it completed.
   * @param {Uint8Array|string} chunk
   * @returns {SSEEvent[]}
   */
  feed(chunk) {
    let text;
    if (typeof chunk === "string") {
      text = chunk;
      if (!this._bomChecked && text.length > 0) {
        this._bomChecked = true;
        if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
      }
    } else {
      text = this._decoder.decode(chunk, { stream: true });
    }
    const events = [];
    this._consume(text, events);
    return events;
  }

  /**
   * End of stream: flush the decoder. An unterminated last block is discarded (never
   * dispatched), as the spec requires; returns what a final complete line still dispatched.
   * @returns {SSEEvent[]}
   */
  end() {
    const events = [];
    this._consume(this._decoder.decode(), events);
    this._tail = "";
    this._data = [];
    this._type = "";
    this._retry = null;
    return events;
  }

  _consume(text, events) {
    let pos = 0;
    if (this._skipLF && text.length > 0) {
      this._skipLF = false;
      if (text[0] === LF) pos = 1;
    }
    const n = text.length;
    // Next LF / CR positions, searched again only once passed: one scan per chunk.
    let lf = text.indexOf(LF, pos);
    let cr = text.indexOf(CR, pos);
    while (pos < n) {
      if (lf !== -1 && lf < pos) lf = text.indexOf(LF, pos);
      if (cr !== -1 && cr < pos) cr = text.indexOf(CR, pos);
      if (lf === -1 && cr === -1) break;
      const end = cr === -1 || (lf !== -1 && lf < cr) ? lf : cr;
      const line = this._tail + text.slice(pos, end);
      this._tail = "";
      pos = end + 1;
      if (text[end] === CR) {
        if (pos < n) {
          if (text[pos] === LF) pos += 1;
        } else {
          this._skipLF = true; // the LF of a CRLF may come in the next chunk
        }
      }
      this._line(line, events);
    }
    if (pos < n) {
      this._tail += text.slice(pos);
      if (this._tail.length > this._maxLine) {
        throw new SSEParseError(`SSE line longer than ${this._maxLine} characters`);
      }
    }
  }

  _line(line, events) {
    if (line === "") {
      this._dispatch(events);
      return;
    }
    if (line[0] === ":") return; // comment: heartbeats, the relay's opening frame
    const colon = line.indexOf(":");
    let field = line;
    let value = "";
    if (colon !== -1) {
      field = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value[0] === " ") value = value.slice(1);
    }
    switch (field) {
      case "event":
        this._type = value;
        break;
      case "data":
        this._data.push(value);
        break;
      case "id":
        if (!value.includes("\0")) this._lastId = value;
        break;
      case "retry":
        if (/^[0-9]+$/.test(value)) {
          this._retry = Number.parseInt(value, 10);
          this.reconnectionTime = this._retry;
        }
        break;
      default:
        break; // unknown fields are ignored
    }
  }

  _dispatch(events) {
    const hadData = this._data.length > 0;
    const data = this._data.join(LF);
    const type = this._type || "message";
    const retry = this._retry;
    this._data = [];
    this._type = "";
    this._retry = null;
    if (hadData) events.push(new SSEEvent(type, data, this._lastId, retry));
  }
}
