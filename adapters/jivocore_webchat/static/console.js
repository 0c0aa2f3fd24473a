/* jivocore operator console: plain JS, no build step. Text from users only via textContent. */
(function () {
  "use strict";
  var token = sessionStorage.getItem("jivocore.token");
  var me = null;
  var tab = "inbox";
  var selected = null; // the conversation open in Chats or All
  var operators = [];
  var socket = null;
  var $ = function (id) { return document.getElementById(id); };

  function el(tag, props) {
    var node = document.createElement(tag);
    Object.keys(props || {}).forEach(function (k) {
      if (k === "text") node.textContent = props[k];
      else if (k === "on") Object.keys(props.on).forEach(function (e) { node.addEventListener(e, props.on[e]); });
      else node.setAttribute(k, props[k]);
    });
    for (var i = 2; i < arguments.length; i++) {
      var child = arguments[i];
      if (child === null || child === undefined) continue;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function api(method, path, body) {
    var init = { method: method, headers: { Authorization: "Bearer " + token } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(path, init).then(function (r) {
      return r.json().then(function (data) {
        if (r.status === 401) { logout(true); }
        if (!r.ok) throw new Error(data.message || ("HTTP " + r.status));
        $("error").textContent = "";
        return data;
      });
    });
  }
  function fail(e) { $("error").textContent = e.message; }
  function act(method, path, body) {
    return api(method, path, body).then(render).catch(fail);
  }

  function nameOf(id) {
    var o = operators.find(function (x) { return x.id === id; });
    return o ? o.name : id;
  }

  // --- login -----------------------------------------------------------------------------
  $("login").addEventListener("submit", function (event) {
    event.preventDefault();
    var f = event.target;
    fetch("api/login", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ login: f.login.value, password: f.password.value })
    }).then(function (r) { return r.json().then(function (d) { return [r, d]; }); })
      .then(function (rd) {
        if (!rd[0].ok) { $("login-error").textContent = rd[1].message; return; }
        token = rd[1].token;
        sessionStorage.setItem("jivocore.token", token);
        start();
      });
  });

  function logout(expired) {
    if (!expired && token) fetch("api/logout", { method: "POST", headers: { Authorization: "Bearer " + token } });
    token = null;
    sessionStorage.removeItem("jivocore.token");
    if (socket) { socket.onclose = null; socket.close(); socket = null; }
    $("app").hidden = true;
    $("login").hidden = false;
    if (expired) $("login-error").textContent = "Your session ended: log in again.";
  }
  $("logout").addEventListener("click", function () { logout(false); });

  function start() {
    api("GET", "api/me").then(function (m) {
      me = m;
      $("me").textContent = m.name + " (" + m.role + ")";
      $("presence").value = m.presence;
      $("login").hidden = true;
      $("app").hidden = false;
      connect();
      return api("GET", "api/operators");
    }).then(function (ops) { operators = ops; render(); }).catch(function () {});
  }

  function connect() {
    var url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host +
      location.pathname.replace(/[^/]*$/, "") + "api/operator/ws?token=" + encodeURIComponent(token);
    socket = new WebSocket(url);
    socket.onmessage = function (event) {
      var data = JSON.parse(event.data);
      if (data.type === "events") render();
    };
    socket.onclose = function (event) {
      socket = null;
      if (event.code === 4401) { logout(true); return; }
      if (token) setTimeout(connect, 1000);
    };
  }

  $("presence").addEventListener("change", function (e) {
    api("POST", "api/presence", { presence: e.target.value }).then(render).catch(fail);
  });
  $("refresh").addEventListener("click", function () { render(); });
  document.querySelectorAll("nav [data-tab]").forEach(function (b) {
    b.addEventListener("click", function () { tab = b.getAttribute("data-tab"); selected = null; render(); });
  });
  setInterval(function () { if (token && tab === "inbox") render(); }, 5000);

  // --- views -------------------------------------------------------------------------------
  var rendering = 0;
  function render() {
    var mine = ++rendering;
    document.querySelectorAll("nav [data-tab]").forEach(function (b) {
      b.classList.toggle("active", b.getAttribute("data-tab") === tab);
    });
    var views = { inbox: inbox, chats: chats, all: all, crm: crm };
    return views[tab]().then(function (node) {
      if (mine !== rendering) return;
      var view = $("view");
      keepTyping(view, node);
      view.replaceChildren(node);
      view.setAttribute("data-tab", tab);
    }).catch(fail);
  }

  // A live update re-renders the view: what the operator is typing survives it.
  function keepTyping(old, next) {
    var focused = document.activeElement;
    old.querySelectorAll("input[aria-label], textarea[aria-label]").forEach(function (input) {
      var label = input.getAttribute("aria-label");
      var twin = next.querySelector('[aria-label="' + label + '"]');
      if (!twin) return;
      if (input.value && !twin.value) twin.value = input.value;
      if (input === focused) setTimeout(function () { twin.focus(); }, 0);
    });
  }

  function clientName(v) { return v.client.name || v.client.id; }

  function inbox() {
    return api("GET", "api/inbox").then(function (items) {
      $("inbox-count").textContent = items.length ? "(" + items.length + ")" : "";
      var list = el("div", { class: "inbox" });
      if (!items.length) list.appendChild(el("p", { text: "The inbox is empty." }));
      items.forEach(function (v) {
        var id = v.conversation.id;
        list.appendChild(el("div", { class: "row", "data-id": id },
          el("b", { class: "client", text: clientName(v) }),
          el("span", { class: "grow preview", text: v.preview }),
          el("button", { text: "Accept", on: { click: function () {
            api("POST", "api/conversations/" + id + "/accept").then(function () {
              tab = "chats"; selected = id; render();
            }).catch(fail);
          } } }),
          el("button", { text: "Ignore", on: { click: function () {
            act("POST", "api/conversations/" + id + "/ignore");
          } } })));
      });
      return list;
    });
  }

  function messagesOf(view) {
    var box = el("div", { class: "messages" });
    view.messages.forEach(function (m) {
      box.appendChild(el("div", { class: "msg", "data-author": m.author },
        el("span", { class: "who", text: m.author === "operator" ? m.name : clientName(view) }),
        m.text));
    });
    setTimeout(function () { box.scrollTop = box.scrollHeight; }, 0);
    return box;
  }

  function miniForm(label, fields, submit) {
    var inputs = fields.map(function (f) { return el("input", { placeholder: f, "aria-label": label + " " + f }); });
    var form = el("form", { class: label.toLowerCase().replace(/ /g, "-") });
    inputs.forEach(function (i) { form.appendChild(i); });
    form.appendChild(el("button", { type: "submit", text: label }));
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      var values = inputs.map(function (i) { return i.value; });
      inputs.forEach(function (i) { i.value = ""; });
      submit(values);
    });
    return form;
  }

  function colleaguePicker(label, path) {
    var select = el("select", { "aria-label": label });
    operators.filter(function (o) { return o.id !== me.id; }).forEach(function (o) {
      select.appendChild(el("option", { value: o.id, text: o.name + " (" + o.presence + ")" }));
    });
    return el("form", { class: label.toLowerCase(), on: { submit: function (e) {
      e.preventDefault();
      act("POST", path, { operator_id: select.value });
    } } }, select, el("button", { type: "submit", text: label }));
  }

  function infoPanel(view) {
    var c = view.client, id = view.conversation.id, base = "api/conversations/" + id;
    var tags = el("dd", { class: "tags" });
    view.conversation.tags.concat([]).sort().forEach(function (t) { tags.appendChild(el("span", { class: "tag", text: t })); });
    var dl = el("dl", {},
      el("dt", { text: "Client" }), el("dd", { class: "client-name", text: c.name || c.id }),
      el("dt", { text: "Emails" }), el("dd", { text: c.emails.join(", ") || "-" }),
      el("dt", { text: "Phones" }), el("dd", { text: c.phones.join(", ") || "-" }),
      el("dt", { text: "Status" }), el("dd", { text: c.status }),
      el("dt", { text: "Tags" }), tags);
    Object.keys(c.custom || {}).forEach(function (k) {
      dl.appendChild(el("dt", { text: k }));
      dl.appendChild(el("dd", { text: c.custom[k] }));
    });
    var panel = el("div", { class: "info" }, dl);
    if (view.conversation.state === "active") {
      panel.appendChild(miniForm("Add tag", ["tag"], function (v) { act("POST", base + "/tags", { name: v[0] }); }));
      panel.appendChild(miniForm("Create task", ["task title"], function (v) { act("POST", base + "/tasks", { title: v[0] }); }));
      panel.appendChild(miniForm("Create deal", ["deal title", "amount"], function (v) {
        act("POST", base + "/deals", { title: v[0], amount: v[1] || "0" });
      }));
      panel.appendChild(colleaguePicker("Transfer", base + "/transfer"));
      panel.appendChild(colleaguePicker("Invite", base + "/invite"));
      panel.appendChild(el("button", { class: "block", text: "Block client", on: { click: function () {
        if (confirm("Block this client?")) act("POST", "api/clients/" + c.id + "/block");
      } } }));
      panel.appendChild(el("button", { class: "end", text: "End chat", on: { click: function () {
        act("POST", base + "/close");
      } } }));
    }
    return panel;
  }

  function chats() {
    return api("GET", "api/chats").then(function (items) {
      if (!selected && items.length) selected = items[0].conversation.id;
      var list = el("div", { class: "chat-list" });
      items.forEach(function (v) {
        list.appendChild(el("div", {
          class: "row" + (v.conversation.id === selected ? " selected" : ""), "data-id": v.conversation.id,
          on: { click: function () { selected = v.conversation.id; render(); } }
        }, el("span", { class: "grow client", text: clientName(v) })));
      });
      if (!items.length) list.appendChild(el("p", { text: "No open chats." }));
      var open = items.some(function (v) { return v.conversation.id === selected; });
      if (!open) return el("div", { class: "cols" }, list);
      return api("GET", "api/conversations/" + selected).then(function (view) {
        var input = el("textarea", { "aria-label": "reply", rows: "3" });
        var form = el("form", { class: "reply", on: { submit: function (e) {
          e.preventDefault();
          var text = input.value;
          input.value = "";
          if (text.trim()) act("POST", "api/conversations/" + selected + "/reply", { text: text });
        } } }, input, el("button", { type: "submit", text: "Send" }));
        return el("div", { class: "cols" }, list, el("div", {}, messagesOf(view), form), infoPanel(view));
      });
    });
  }

  var allFilters = { text: "", outcome: "", tag: "" };
  function all() {
    var q = Object.keys(allFilters).filter(function (k) { return allFilters[k]; })
      .map(function (k) { return k + "=" + encodeURIComponent(allFilters[k]); }).join("&");
    return api("GET", "api/archive?" + q).then(function (page) {
      var text = el("input", { placeholder: "search", "aria-label": "search", value: allFilters.text });
      var tag = el("input", { placeholder: "tag", "aria-label": "tag filter", value: allFilters.tag });
      var outcome = el("select", { "aria-label": "outcome" });
      ["", "answered", "missed", "blocked"].forEach(function (o) {
        var opt = el("option", { value: o, text: o || "any outcome" });
        if (o === allFilters.outcome) opt.selected = true;
        outcome.appendChild(opt);
      });
      var filters = el("form", { class: "filters", on: { submit: function (e) {
        e.preventDefault();
        allFilters = { text: text.value, outcome: outcome.value, tag: tag.value };
        selected = null;
        render();
      } } }, text, outcome, tag, el("button", { type: "submit", text: "Search" }));
      var list = el("div", { class: "archive" });
      page.items.forEach(function (v) {
        var s = v.statistics.episodes[v.statistics.episodes.length - 1] || {};
        list.appendChild(el("div", {
          class: "row" + (v.conversation.id === selected ? " selected" : ""), "data-id": v.conversation.id,
          on: { click: function () { selected = v.conversation.id; render(); } }
        },
          el("b", { class: "client", text: clientName(v) }),
          el("span", { class: "grow preview", text: v.preview }),
          el("span", { class: "stats", text: (v.conversation.outcome || "") + " · " +
            (s.client_messages || 0) + "+" + (s.operator_messages || 0) + " messages · " +
            (s.operators || []).map(nameOf).join(", ") })));
      });
      if (!page.items.length) list.appendChild(el("p", { text: "Nothing found." }));
      var wrap = el("div", {}, filters, list);
      if (!selected) return wrap;
      return api("GET", "api/conversations/" + selected).then(function (view) {
        wrap.appendChild(el("h3", { text: clientName(view) }));
        wrap.appendChild(messagesOf(view));
        if (view.conversation.state === "closed") {
          wrap.appendChild(el("button", { class: "join", text: "Join chat", on: { click: function () {
            var id = selected;
            api("POST", "api/conversations/" + id + "/join").then(function () {
              tab = "chats"; selected = id; render();
            }).catch(fail);
          } } }));
        }
        return wrap;
      });
    });
  }

  var crmFilters = { responsible_id: "", status: "", tag: "", text: "" };
  function crm() {
    var q = Object.keys(crmFilters).filter(function (k) { return crmFilters[k]; })
      .map(function (k) { return k + "=" + encodeURIComponent(crmFilters[k]); }).join("&");
    return Promise.all([api("GET", "api/clients?" + q), api("GET", "api/statuses")]).then(function (r) {
      var page = r[0], statuses = r[1];
      var responsible = el("select", { "aria-label": "responsible" }, el("option", { value: "", text: "any operator" }));
      operators.forEach(function (o) {
        var opt = el("option", { value: o.id, text: o.name });
        if (o.id === crmFilters.responsible_id) opt.selected = true;
        responsible.appendChild(opt);
      });
      var status = el("select", { "aria-label": "status" }, el("option", { value: "", text: "any status" }));
      statuses.forEach(function (s) {
        var opt = el("option", { value: s, text: s });
        if (s === crmFilters.status) opt.selected = true;
        status.appendChild(opt);
      });
      var tag = el("input", { placeholder: "tag", "aria-label": "client tag", value: crmFilters.tag });
      var text = el("input", { placeholder: "name, email, phone", "aria-label": "client search", value: crmFilters.text });
      var filters = el("form", { class: "filters", on: { submit: function (e) {
        e.preventDefault();
        crmFilters = { responsible_id: responsible.value, status: status.value, tag: tag.value, text: text.value };
        render();
      } } }, responsible, status, tag, text, el("button", { type: "submit", text: "Filter" }));
      var table = el("table", { class: "clients" }, el("tr", {},
        el("th", { text: "Name" }), el("th", { text: "Email" }), el("th", { text: "Status" }),
        el("th", { text: "Responsible" }), el("th", { text: "Tags" })));
      page.items.forEach(function (c) {
        var tags = el("td", {});
        c.tags.concat([]).sort().forEach(function (t) { tags.appendChild(el("span", { class: "tag", text: t })); });
        table.appendChild(el("tr", { "data-id": c.id },
          el("td", { class: "client-name", text: c.name }), el("td", { text: c.emails.join(", ") }),
          el("td", { text: c.status }), el("td", { text: c.responsible_id ? nameOf(c.responsible_id) : "" }), tags));
      });
      var add = miniForm("Add client", ["name", "email", "phone"], function (v) {
        act("POST", "api/clients", { name: v[0], email: v[1] || undefined, phone: v[2] || undefined });
      });
      return el("div", { class: "crm" }, filters, el("p", { text: page.count + " clients" }), table, el("h3", { text: "Add a client" }), add);
    });
  }

  if (token) start();
})();
