// Fold of Anthropic Messages stream events into content blocks (text, thinking, tool_use).
//
// Tool input arrives as input_json_delta fragments cut anywhere (inside strings, escapes,
// multi-byte characters). They are only concatenated while the block streams, and parsed
// exactly once at content_block_stop (an empty concatenation is {}), as DESIGN.md section 6
// requires: no partial parsing anywhere. One console line per parse proves it.

const utf8 = new TextEncoder();

/** One content block as the page knows it so far. */
export class Block {
  constructor(index, start) {
    this.index = index;
    this.type = start.type;
    this.text = start.text ?? "";
    this.thinking = start.thinking ?? "";
    this.name = start.name ?? null;
    this.id = start.id ?? null;
    this.fragments = [];
    this.bytes = 0;
    this.input = undefined;
    this.parseAttempts = 0;
    this.parseError = null;
    this.stopped = false;
  }
}

export class MessageFold {
  /** @param {(line: string) => void} [log] where the parse line goes (the console). */
  constructor(log = (line) => console.info(line)) {
    this._log = log;
    this.blocks = [];
    this.messageId = null;
    this.model = null;
    this.stopReason = null;
    this.outputTokens = null;
    this.started = false;
    this.finished = false;
  }

  /** The answer text so far (all text blocks). */
  get text() {
    return this.blocks.filter((b) => b.type === "text").map((b) => b.text).join("");
  }

  /**
   * Apply one decoded event; returns what changed for the page to render, or null.
   * @param {object} payload the event's JSON data
   * @returns {{kind: string, block?: Block, text?: string} | null}
   */
  apply(payload) {
    switch (payload.type) {
      case "message_start":
        this.started = true;
        this.messageId = payload.message?.id ?? null;
        this.model = payload.message?.model ?? null;
        this._usage(payload.message?.usage);
        return { kind: "message_start" };
      case "content_block_start": {
        const block = new Block(payload.index, payload.content_block ?? {});
        this.blocks[payload.index] = block;
        return { kind: "block_start", block };
      }
      case "content_block_delta":
        return this._delta(this.blocks[payload.index], payload.delta ?? {});
      case "content_block_stop":
        return this._stop(this.blocks[payload.index]);
      case "message_delta":
        this.stopReason = payload.delta?.stop_reason ?? this.stopReason;
        this._usage(payload.usage);
        return { kind: "message_delta" };
      case "message_stop":
        this.finished = true;
        return { kind: "message_stop" };
      default:
        return null; // ping and future event types
    }
  }

  _usage(usage) {
    if (usage && typeof usage.output_tokens === "number") this.outputTokens = usage.output_tokens;
  }

  _delta(block, delta) {
    if (block === undefined) return null;
    switch (delta.type) {
      case "text_delta":
        block.text += delta.text;
        return { kind: "text", block, text: delta.text };
      case "thinking_delta":
        block.thinking += delta.thinking;
        return { kind: "thinking", block, text: delta.thinking };
      case "input_json_delta":
        block.fragments.push(delta.partial_json);
        block.bytes += utf8.encode(delta.partial_json).length;
        return { kind: "tool_bytes", block };
      default:
        return { kind: "other_delta", block }; // signature_delta, citations: not shown
    }
  }

  _stop(block) {
    if (block === undefined || block.stopped) return null;
    block.stopped = true;
    if (block.type === "tool_use") this._parseToolInput(block);
    return { kind: "block_stop", block };
  }

  _parseToolInput(block) {
    const raw = block.fragments.join("");
    block.parseAttempts += 1;
    try {
      block.input = raw === "" ? {} : JSON.parse(raw);
    } catch (err) {
      block.parseError = String(err.message ?? err);
      this._log(
        `tool_input.parse_failed tool=${block.name} fragments=${block.fragments.length} ` +
          `bytes=${block.bytes} error=${block.parseError}`,
      );
      return;
    }
    this._log(
      `tool_input.parsed tool=${block.name} fragments=${block.fragments.length} ` +
        `bytes=${block.bytes} parse_attempts=${block.parseAttempts}`,
    );
  }
}
