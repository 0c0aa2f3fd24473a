/* jivocore web chat widget: <script src="https://desk.example/widget.js" async></script>
   Plain JS, no build step. Everything typed by anyone is rendered with textContent. */
(function () {
  "use strict";
  var script = document.currentScript;
  var base = new URL(script ? script.src : "/widget.js", location.href);
  var wsBase = (base.protocol === "https:" ? "wss://" : "ws://") + base.host;
  var store = window.localStorage;
  var KEY = "jivocore.widget." + base.host;
  var saved = {};
  try { saved = JSON.parse(store.getItem(KEY) || "{}") || {}; } catch (e) { saved = {}; }
  function save() { store.setItem(KEY, JSON.stringify(saved)); }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  var style = el("style");
  style.textContent =
    "#jivo-widget{position:fixed;right:16px;bottom:16px;width:320px;font:14px sans-serif;" +
    "background:#fff;border:1px solid #ccc;border-radius:8px;box-shadow:0 2px 12px #0003;z-index:99999}" +
    "#jivo-widget header{background:#2b6cb0;color:#fff;padding:8px 12px;border-radius:8px 8px 0 0}" +
    ".jivo-status{font-size:12px;padding:4px 12px;color:#555}" +
    ".jivo-log{height:260px;overflow-y:auto;padding:8px 12px}" +
    ".jivo-msg{margin:4px 0;padding:6px 8px;border-radius:6px;white-space:pre-wrap;word-break:break-word}" +
    ".jivo-msg[data-author=client]{background:#e6f0fb;margin-left:40px}" +
    ".jivo-msg[data-author=operator]{background:#f1f1f1;margin-right:40px}" +
    ".jivo-msg .jivo-who{display:block;font-size:11px;color:#666}" +
    ".jivo-msg.pending{opacity:.5}" +
    ".jivo-notice{color:#b00;font-size:12px;padding:0 12px;min-height:14px}" +
    "#jivo-widget form{display:flex;gap:4px;padding:8px}#jivo-widget input{flex:1}";
  document.head.appendChild(style);

  var box = el("div");
  box.id = "jivo-widget";
  var header = el("header", null, "Chat with us");
  var status = el("div", "jivo-status", "Connecting…");
  var log = el("div", "jivo-log");
  var notice = el("div", "jivo-notice");
  var form = el("form");
  var input = el("input");
  input.placeholder = "Type a message";
  input.maxLength = 4000;
  input.setAttribute("aria-label", "message");
  var send = el("button", null, "Send");
  send.type = "submit";
  form.appendChild(input);
  form.appendChild(send);
  [header, status, log, notice, form].forEach(function (n) { box.appendChild(n); });

  // The token and conversation survive page loads (a new page shows the whole conversation);
  // the sequence number up to which every message was shown lives with the page, for its
  // reconnects (a reply may arrive after the visitor's next message: it is not skipped).
  var after = 0;
  var shown = {}; // "conversation:seq" -> true: nothing shown twice
  var pending = {}; // client message id -> {text, node}
  var ws = null;
  var retry = 500;
  var blockedUntil = 0;
  var maxBytes = 0; // the server's frame limit, once it says
  var lastSent = null; // the message id sent last: the one a close with 1009 refused

  function show(m) {
    var key = m.conversation_id + ":" + m.seq;
    if (shown[key]) return;
    shown[key] = true;
    if (saved.conversation_id !== m.conversation_id) {
      saved.conversation_id = m.conversation_id;
      after = 0;
      save();
    }
    while (shown[m.conversation_id + ":" + (after + 1)]) after += 1;
    var node = el("div", "jivo-msg");
    node.setAttribute("data-author", m.author);
    node.setAttribute("data-seq", String(m.seq));
    if (m.author === "operator") node.appendChild(el("span", "jivo-who", m.name || "Operator"));
    node.appendChild(document.createTextNode(m.text));
    var later = Array.prototype.find.call(log.querySelectorAll(".jivo-msg[data-seq]"), function (n) {
      return Number(n.getAttribute("data-seq")) > m.seq;
    });
    log.insertBefore(node, later || null); // in sequence order, whatever order they came in
    log.scrollTop = log.scrollHeight;
  }

  function connect() {
    var q = "?token=" + encodeURIComponent(saved.token || "");
    if (saved.conversation_id) {
      q += "&conversation_id=" + encodeURIComponent(saved.conversation_id) +
        "&after=" + encodeURIComponent(String(after));
    }
    ws = new WebSocket(wsBase + "/api/visitor/ws" + q);
    ws.onopen = function () {
      retry = 500;
      Object.keys(pending).forEach(function (id) { transmit(id); }); // ids make resends safe
    };
    ws.onmessage = function (event) {
      var data = JSON.parse(event.data);
      if (data.type === "welcome") {
        saved = { token: data.token };
        save();
      } else if (data.type === "limits") {
        maxBytes = data.max_message_bytes;
        Object.keys(pending).forEach(function (id) { if (tooLong(id)) refuse(id); });
      } else if (data.type === "status") {
        status.textContent = data.operators_online
          ? "An operator is online."
          : "No operator is online right now: leave a message and we will answer.";
        status.setAttribute("data-online", String(data.operators_online));
      } else if (data.type === "message") {
        show(data);
      } else if (data.type === "ack") {
        var p = pending[data.id];
        if (p) { p.node.remove(); delete pending[data.id]; }
      } else if (data.type === "error") {
        var p2 = pending[data.id];
        if (p2) { p2.node.remove(); delete pending[data.id]; }
        if (data.status === 429) {
          blockedUntil = Date.now() + data.retry_after * 1000;
          notice.textContent = "You are sending too fast: wait " + data.retry_after + " s.";
          if (p2) input.value = p2.text;
        } else {
          notice.textContent = data.message || "The message was refused.";
        }
      }
    };
    ws.onclose = function (event) {
      ws = null;
      if (event.code === 1009 && pending[lastSent]) refuse(lastSent); // not resent forever
      status.textContent = "Reconnecting…";
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 10000);
    };
  }

  function frame(id) {
    return JSON.stringify({ type: "message", id: id, text: pending[id].text, name: window.jivoVisitorName || undefined });
  }
  function tooLong(id) { return maxBytes && new Blob([frame(id)]).size > maxBytes; }
  function refuse(id) { // a message over the size limit: back to the input, to shorten
    var p = pending[id];
    p.node.remove();
    delete pending[id];
    input.value = p.text;
    notice.textContent = "That message is too long: please shorten it.";
  }
  function transmit(id) {
    if (!ws || ws.readyState !== 1) return;
    if (tooLong(id)) { refuse(id); return; }
    lastSent = id;
    ws.send(frame(id));
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var text = input.value;
    if (!text.trim()) return;
    if (Date.now() < blockedUntil) {
      notice.textContent = "You are sending too fast: wait " +
        Math.ceil((blockedUntil - Date.now()) / 1000) + " s.";
      return;
    }
    notice.textContent = "";
    var id = Date.now().toString(36) + Math.random().toString(36).slice(2, 10);
    var node = el("div", "jivo-msg pending", text);
    node.setAttribute("data-author", "client");
    log.appendChild(node);
    pending[id] = { text: text, node: node };
    input.value = "";
    transmit(id);
  });

  function start() { document.body.appendChild(box); connect(); }
  if (document.body) start(); else document.addEventListener("DOMContentLoaded", start);
})();
