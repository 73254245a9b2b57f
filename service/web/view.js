// DOM of the page: one TurnView per turn in the conversation, and the metrics panel.
//
// Everything a test or a person needs to read is in the DOM: the turn's state, stream id,
// resume count and timings are data attributes on its <li>, so tests read the page the way
// it is rendered instead of reaching into module state.

import { perceivedGap } from "./metrics.js";

const PHASES = {
  sending: "Sending",
  connecting: "Connecting to the provider",
  retrying: "Provider busy, retrying",
  waiting: "Waiting for the provider",
  waiting_first_token: "Waiting for the first token",
  thinking: "Thinking",
  generating: "Generating",
  resuming: "Connection lost, resuming",
};

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

const seconds = (ms) => `${(ms / 1000).toFixed(1)} s`;
const millis = (ms) => (ms === null || ms === undefined ? "–" : `${Math.round(ms)} ms`);

/** One turn: the prompt, the live activity line, thinking, answer text and tool calls. */
export class TurnView {
  constructor(list, prompt) {
    this.root = el("li", "turn");
    const user = el("div", "bubble user");
    user.append(el("span", "who", "You"), el("p", "prompt", prompt));
    this.assistant = el("div", "bubble assistant");
    this.root.append(user, this.assistant);
    list.append(this.root);
    this.reset();
  }

  /** Empty the assistant side (a new attempt: the partial answer is discarded). */
  reset() {
    this.assistant.replaceChildren(el("span", "who", "Assistant"));
    this.activity = el("p", "activity");
    this.activity.setAttribute("aria-live", "off"); // a ticking clock must not chatter
    this.thinking = el("details", "thinking");
    this.thinking.open = true;
    this.thinking.hidden = true;
    this.thinkingLabel = el("summary", "thinking-label", "Thinking");
    this.thinkingText = el("div", "thinking-text");
    this.thinking.append(this.thinkingLabel, this.thinkingText);
    this.answer = el("div", "answer");
    this.answer.setAttribute("aria-live", "polite");
    this.answer.setAttribute("aria-label", "Answer");
    this._answerText = document.createTextNode("");
    this.answer.append(this._answerText);
    this.tools = el("div", "tools");
    this.meta = el("p", "meta");
    this.meta.hidden = true;
    this.assistant.append(this.activity, this.thinking, this.answer, this.tools, this.meta);
    this._toolViews = new Map();
    this._phase = "sending";
    this.setState("sending");
  }

  setState(state) {
    this.root.dataset.state = state;
  }

  /** The live "what is happening" line; elapsed is client time since Send. */
  showActivity(phase, elapsedMs) {
    if (phase) this._phase = phase;
    const label = PHASES[this._phase] ?? this._phase;
    this.activity.hidden = false;
    this.activity.dataset.phase = this._phase;
    this.activity.textContent = `${label} · ${seconds(elapsedMs)}`;
  }

  hideActivity() {
    this.activity.hidden = true;
  }

  /**
   * Thinking state: the activity line says "Thinking" with the time since Send, from the
   * first relay_progress in the thinking phase or the first thinking text, whichever is first.
   */
  showThinking(elapsedMs) {
    if (this.root.dataset.state !== "streaming") this.setState("thinking");
    this.showActivity("thinking", elapsedMs);
  }

  /** Streamed thinking text, in its own collapsible block. */
  appendThinking(text) {
    this.thinking.hidden = false;
    this.thinkingText.append(text);
    this.thinkingText.scrollTop = this.thinkingText.scrollHeight;
  }

  /** The answer started: the thinking block becomes a record of how long it took. */
  thinkingDone(elapsedMs) {
    if (this.root.dataset.state === "thinking" && !this.root.dataset.thoughtMs) {
      this.root.dataset.thoughtMs = String(Math.round(elapsedMs));
      this.thinkingLabel.textContent = `Thought for ${seconds(elapsedMs)}`;
    }
  }

  appendText(text) {
    this._answerText.appendData(text);
  }

  get answerText() {
    return this._answerText.data;
  }

  toolStart(block) {
    const card = el("div", "tool");
    card.dataset.toolName = block.name ?? "";
    card.dataset.state = "receiving";
    const head = el("div", "tool-head");
    const status = el("span", "tool-status", "receiving arguments (0 bytes)");
    status.setAttribute("aria-live", "off");
    head.append(el("span", "tool-name", block.name ?? "tool"), status);
    const args = el("pre", "tool-args");
    args.hidden = true;
    card.append(head, args);
    this.tools.append(card);
    this._toolViews.set(block.index, { card, status, args });
  }

  toolBytes(block) {
    const view = this._toolViews.get(block.index);
    if (view) view.status.textContent = `receiving arguments (${block.bytes} bytes)`;
  }

  /** Arguments are shown only now, once parsed at content_block_stop. */
  toolDone(block) {
    const view = this._toolViews.get(block.index);
    if (!view) return;
    if (block.parseError !== null) {
      view.card.dataset.state = "error";
      view.status.textContent = `arguments did not parse: ${block.parseError}`;
      return;
    }
    view.card.dataset.state = "done";
    view.status.textContent = `arguments complete (${block.bytes} bytes, ${block.fragments.length} fragments)`;
    view.args.textContent = JSON.stringify(block.input, null, 2);
    view.args.hidden = false;
  }

  /** A footnote under the answer (how the turn got there: resumed, retried). */
  note(text) {
    this.meta.textContent = text;
    this.meta.hidden = false;
  }

  /** Final state: completed, stopped or error; timings kept on the element. */
  finish(state, summary) {
    this.setState(state);
    this.hideActivity();
    const labels = { stopped: "Stopped", error: "Failed" };
    if (labels[state]) {
      this.activity.hidden = false;
      this.activity.dataset.phase = state;
      this.activity.textContent = `${labels[state]} · ${seconds(summary.total_ms)}`;
    }
    if (!this.thinking.hidden && !this.root.dataset.thoughtMs) {
      this.thinkingLabel.textContent = `Thinking (${state}) after ${seconds(summary.total_ms)}`;
    }
  }

  /** Timings on the element for tests and for a person using the inspector. */
  recordTimings(summary) {
    const data = this.root.dataset;
    for (const [key, attr] of [
      ["perceived_ms", "perceivedMs"],
      ["ttft_ms", "ttftMs"],
      ["first_text_ms", "firstTextMs"],
      ["ttfb_ms", "ttfbMs"],
    ]) {
      if (summary[key] !== null) data[attr] = String(Math.round(summary[key]));
    }
  }
}

/** The side panel with live client figures and the relay's own view. */
export class MetricsPanel {
  constructor(root) {
    this.root = root;
    this.gap = root.querySelector("#perceived-gap");
    this.streamId = root.querySelector("#stream-id");
  }

  clear() {
    for (const dd of this.root.querySelectorAll("dd")) dd.textContent = "–";
    this.gap.textContent = "";
    this.streamId.textContent = "–";
  }

  _set(selector, text) {
    const node = this.root.querySelector(selector);
    if (node) node.textContent = text;
  }

  show(summary) {
    for (const key of ["perceived_ms", "ttft_ms", "first_text_ms", "itl_last_ms", "ttfb_ms", "total_ms"]) {
      this._set(`[data-metric="${key}"]`, millis(summary[key]));
    }
    this._set('[data-metric="tpot_ms"]', summary.tpot_ms === null ? "–" : `${summary.tpot_ms.toFixed(1)} ms`);
    this._set('[data-metric="itl"]', summary.itl_p50_ms === null ? "–" : `${millis(summary.itl_p50_ms)} / ${millis(summary.itl_p99_ms)}`);
    const tokens = summary.output_tokens === null ? "" : ` / ${summary.output_tokens}`;
    this._set('[data-metric="tokens"]', `${summary.content_deltas}${tokens}`);
    this.gap.textContent = perceivedGap(summary) ?? "";
    if (summary.perceived_ms !== null && summary.first_text_ms === null) {
      this.gap.textContent = `progress shown at ${seconds(summary.perceived_ms)}; no answer token yet`;
    }
  }

  showStream(streamId) {
    this.streamId.textContent = streamId ?? "–";
  }

  showServer(metrics) {
    const server = metrics.server ?? {};
    this._set('[data-server="ttft_ms"]', millis(server.ttft_ms));
    this._set('[data-server="tpot_ms"]', server.tpot_ms == null ? "–" : `${server.tpot_ms.toFixed(1)} ms`);
    this._set('[data-server="outcome"]', metrics.outcome ?? "–");
  }

  showLastMile(answer) {
    if (answer && answer.last_mile_ms !== null && answer.last_mile_ms !== undefined) {
      this._set('[data-server="last_mile_ms"]', millis(answer.last_mile_ms));
    }
  }
}
