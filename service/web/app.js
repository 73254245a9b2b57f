// The chat page's controller: the form, Send / Stop / Retry, and one RelayTurn at a time.

import { RelayTurn } from "./stream.js";
import { MetricsPanel, TurnView } from "./view.js";

const $ = (id) => document.getElementById(id);
const TICK_MS = 100;

class ChatApp {
  constructor() {
    this.form = $("composer");
    this.prompt = $("prompt");
    this.model = $("model");
    this.maxTokens = $("max-tokens");
    this.mockOptions = $("mock-options");
    this.sendButton = $("send");
    this.stopButton = $("stop");
    this.retryButton = $("retry");
    this.banner = $("error-banner");
    this.bannerText = $("error-text");
    this.status = $("status");
    this.list = $("conversation");
    this.panel = new MetricsPanel(document.querySelector(".metrics"));
    this.history = []; // finished turns, sent with the next prompt
    this.current = null; // {turn, view}
    this.failed = null; // {view, body, prompt}: what Retry sends again
    this._ticker = null;
    this._frame = 0;
    this._wire();
    this._prefill(new URLSearchParams(window.location.search));
  }

  _wire() {
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.send();
    });
    this.prompt.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        this.form.requestSubmit();
      }
    });
    this.stopButton.addEventListener("click", () => this.stop());
    this.retryButton.addEventListener("click", () => this.retry());
  }

  /** ?prompt=&model=&max_tokens=&mock= prefill the form (demo links). */
  _prefill(params) {
    if (params.has("prompt")) this.prompt.value = params.get("prompt");
    if (params.has("model")) this.model.value = params.get("model");
    if (params.has("max_tokens")) this.maxTokens.value = params.get("max_tokens");
    if (params.has("mock")) {
      this.mockOptions.value = params.get("mock");
      this.mockOptions.closest("details").open = true;
    }
  }

  _body(prompt) {
    const body = {
      model: this.model.value.trim() || "mock-text",
      max_tokens: Number.parseInt(this.maxTokens.value, 10) || 200,
      messages: [...this.history, { role: "user", content: prompt }],
    };
    const raw = this.mockOptions.value.trim();
    if (raw) body.mock = JSON.parse(raw); // a SyntaxError is shown by send()
    return body;
  }

  send() {
    if (this.current !== null) return;
    const prompt = this.prompt.value.trim();
    if (!prompt) return;
    let body;
    try {
      body = this._body(prompt);
    } catch (err) {
      this._showBanner(`Provider options are not valid JSON: ${err.message}`, false);
      return;
    }
    this.prompt.value = "";
    this._run(new TurnView(this.list, prompt), body, prompt);
  }

  async stop() {
    if (this.current === null) return;
    const { turn, view } = this.current;
    this.stopButton.disabled = true;
    this._setStatus("stopping", "Stopping…");
    // turn.stop() marks the turn stopped before its first await: nothing more is rendered.
    const answer = await turn.stop();
    if (answer) view.root.dataset.cancel = answer.status;
  }

  retry() {
    if (this.failed === null || this.current !== null) return;
    const { view, body, prompt } = this.failed;
    view.reset(); // a whole-turn retry: the partial answer is discarded
    view.root.dataset.attempt = String(Number(view.root.dataset.attempt ?? "1") + 1);
    this._run(view, body, prompt);
  }

  async _run(view, body, prompt) {
    this._hideBanner();
    this.failed = null;
    this.panel.clear();
    const turn = new RelayTurn({ body, handlers: this._handlers(view) });
    this.current = { turn, view };
    this._setRunning(true);
    this._setStatus("sending", "Sending…");
    const tick = () => this._tick(turn, view);
    this._ticker = setInterval(tick, TICK_MS);
    let outcome;
    let error = null;
    try {
      outcome = await turn.run();
    } catch (err) {
      error = err;
      outcome = "error";
    } finally {
      clearInterval(this._ticker);
      this.current = null;
      this._setRunning(false);
    }
    this._finish(turn, view, outcome, error, { body, prompt });
    const answer = await turn.reportMetrics().catch(() => null);
    this.panel.showLastMile(answer);
    view.root.dataset.metricsReported = answer ? "yes" : "no";
  }

  _finish(turn, view, outcome, error, request) {
    const summary = turn.clock.summary();
    view.recordTimings(summary);
    this.panel.show(summary);
    view.finish(outcome, summary);
    const notes = [];
    if (turn.resumes > 0) notes.push(`resumed ${turn.resumes}× after a dropped connection (Last-Event-ID)`);
    if (view.root.dataset.attempt) notes.push(`whole turn retried (attempt ${view.root.dataset.attempt})`);
    if (notes.length) view.note(notes.join("; "));
    const text = view.answerText;
    if (outcome !== "error") {
      this.history.push({ role: "user", content: request.prompt });
      if (text) this.history.push({ role: "assistant", content: text });
    }
    if (error !== null) {
      this.failed = { view, ...request };
      const detail = error.reason ? ` (${error.reason})` : "";
      const partial = error.partial ? " The partial answer is discarded on retry." : "";
      this._showBanner(`The answer failed: ${error.type}: ${error.message}${detail}.${partial}`, error.retryable !== false);
      view.root.dataset.error = error.type;
    }
    const states = { completed: "Completed", stopped: "Stopped", error: "Failed" };
    this._setStatus(outcome, `${states[outcome]} · ${(summary.total_ms / 1000).toFixed(1)} s`);
    console.info(
      `turn.end stream_id=${turn.streamId} outcome=${outcome} ttft_ms=${summary.ttft_ms} ` +
        `perceived_ms=${summary.perceived_ms} first_text_ms=${summary.first_text_ms} ` +
        `deltas=${summary.content_deltas} resumes=${turn.resumes}`,
    );
  }

  _handlers(view) {
    return {
      onHeaders: (streamId) => {
        view.root.dataset.streamId = streamId ?? "";
        this.panel.showStream(streamId);
        view.setState("waiting");
        this._setStatus("waiting", "Waiting for the model…");
      },
      onProgress: (progress) => this._progress(view, progress),
      onChange: (change, turn) => this._change(view, turn, change),
      onServerMetrics: (metrics) => this.panel.showServer(metrics),
      onResume: (attempt) => {
        view.root.dataset.resumes = String(attempt);
        view.showActivity("resuming", this.current?.turn.clock.elapsed() ?? 0);
        this._setStatus("resuming", "Connection lost, resuming…");
      },
    };
  }

  _progress(view, progress) {
    const data = view.root.dataset;
    data.progress = String(Number(data.progress ?? "0") + 1);
    const elapsed = this.current?.turn.clock.elapsed() ?? progress.elapsed_ms;
    if (progress.phase === "thinking") this._thinking(view, elapsed);
    else view.showActivity(progress.phase, elapsed);
    this._scheduleRender();
  }

  _thinking(view, elapsed) {
    if (view.root.dataset.state === "streaming") return;
    if (view.root.dataset.state !== "thinking") this._setStatus("thinking", "Thinking…");
    view.showThinking(elapsed);
  }

  _change(view, turn, change) {
    const elapsed = turn.clock.elapsed();
    switch (change.kind) {
      case "block_start":
        if (change.block.type === "tool_use") {
          view.hideActivity();
          view.toolStart(change.block);
        }
        break;
      case "thinking":
        this._thinking(view, elapsed);
        view.appendThinking(change.text);
        break;
      case "text":
        if (view.root.dataset.state !== "streaming") {
          view.thinkingDone(elapsed);
          view.setState("streaming");
          this._setStatus("streaming", "Streaming…");
        }
        view.hideActivity();
        view.appendText(change.text);
        break;
      case "tool_bytes":
        view.setState("streaming");
        view.toolBytes(change.block);
        break;
      case "block_stop":
        if (change.block.type === "tool_use") view.toolDone(change.block);
        break;
      default:
        break;
    }
    this._scheduleRender();
  }

  /** The clock on the activity line and the live figures, every TICK_MS. */
  _tick(turn, view) {
    if (!view.activity.hidden && turn.clock !== null) view.showActivity(null, turn.clock.elapsed());
    this._scheduleRender();
  }

  /** Figures are recomputed at most once a frame, however fast deltas arrive. */
  _scheduleRender() {
    if (this._frame || this.current === null) return;
    const { turn, view } = this.current;
    this._frame = requestAnimationFrame(() => {
      this._frame = 0;
      const summary = turn.clock.summary();
      this.panel.show(summary);
      view.recordTimings(summary);
    });
  }

  _setRunning(running) {
    this.sendButton.disabled = running;
    this.stopButton.disabled = !running;
  }

  _setStatus(state, text) {
    this.status.dataset.state = state;
    this.status.textContent = text;
  }

  _showBanner(text, retryable) {
    this.bannerText.textContent = text;
    this.retryButton.hidden = !retryable;
    this.banner.hidden = false;
  }

  _hideBanner() {
    this.banner.hidden = true;
  }
}

window.relayChat = new ChatApp();
