// Shared by chat.html and battle.html (served by serve/app.py): SSE streaming and message rendering.
"use strict";

const $ = (id) => document.getElementById(id);

// POST `body` as JSON to `url` and read the server-sent events of an OpenAI chat-completion stream.
// onDelta(text) gets each content delta; resolves to the finish_reason; throws Error(message) on an
// HTTP error or an error event. `signal` (an AbortController's) stops the stream.
async function streamChat(url, body, onDelta, signal) {
  const res = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" },
                                 body: JSON.stringify(body), signal });
  if (!res.ok) {
    let message = "HTTP " + res.status;
    try { message = (await res.json()).error.message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", finish = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (!data || data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      for (const choice of chunk.choices || []) {
        if (choice.delta && choice.delta.content) onDelta(choice.delta.content);
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
  }
  return finish;
}

// The server shows a calculator call and its result as "[calc EXPR = VALUE]" (stages/chat.py's shown_text).
const CALC = /\[calc ([^\[\]=]*?) = ([^\[\]]*?)\]/g;

// Fill `el` with `text`, calculator spans styled apart. Text nodes only: nothing is parsed as HTML.
function renderText(el, text) {
  el.textContent = "";
  let last = 0;
  for (const m of text.matchAll(CALC)) {
    el.append(document.createTextNode(text.slice(last, m.index)));
    const span = document.createElement("span");
    span.className = "calc";
    span.title = "calculator: the result was computed by the tool, not the model";
    const expr = document.createElement("span");
    expr.className = "calc-expr";
    expr.textContent = m[1];
    const result = document.createElement("span");
    result.className = "calc-result";
    result.textContent = m[2];
    const label = document.createElement("span");
    label.className = "calc-label";
    label.textContent = "calc";
    span.append(label, " ", expr, " = ", result);
    el.append(span);
    last = m.index + m[0].length;
  }
  el.append(document.createTextNode(text.slice(last)));
}

function numberOr(id, fallback) {
  const v = parseFloat($(id).value);
  return Number.isFinite(v) ? v : fallback;
}
