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
    (function add(children) {
      children.forEach(function (child) {
        if (child === null || child === undefined) return;
        if (Array.isArray(child)) add(child);
        else node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
      });
    })(Array.prototype.slice.call(arguments, 2));
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
    old.querySelectorAll("input[aria-label]:not([type=file]), textarea[aria-label]").forEach(function (input) {
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
    return api("GET", "api/archive?" + paged("archive", q)).then(function (page) {
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
        cursors = {};
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
      var wrap = el("div", {}, filters, list, pager("archive", page));
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

  // --- CRM: clients (with CSV import and export), deals, tasks, my day ---------------------
  var crmView = "clients";
  var CRM_VIEWS = [["clients", "Clients"], ["deals", "Deals"], ["tasks", "Tasks"], ["today", "My day"]];
  function crm() {
    var views = { clients: crmClients, deals: crmDeals, tasks: crmTasks, today: crmToday };
    var sub = el("div", { class: "subnav" });
    CRM_VIEWS.forEach(function (v) {
      sub.appendChild(el("button", { "data-crm": v[0], class: v[0] === crmView ? "active" : "",
        text: v[1], on: { click: function () { crmView = v[0]; render(); } } }));
    });
    return views[crmView]().then(function (body) {
      return el("div", { class: "crm", "data-crm": crmView }, sub, body);
    });
  }

  function query(filters) {
    return Object.keys(filters).filter(function (k) { return filters[k]; })
      .map(function (k) { return k + "=" + encodeURIComponent(filters[k]); }).join("&");
  }
  function picker(label, options, value, anyText) {
    var select = el("select", { "aria-label": label }, el("option", { value: "", text: anyText }));
    options.forEach(function (o) {
      var opt = el("option", { value: o[0], text: o[1] });
      if (o[0] === value) opt.selected = true;
      select.appendChild(opt);
    });
    return select;
  }
  function operatorOptions() { return operators.map(function (o) { return [o.id, o.name]; }); }
  function same(values) { return values.map(function (v) { return [v, v]; }); }
  function filterForm(fields, apply) {
    return el("form", { class: "filters", on: { submit: function (e) { e.preventDefault(); apply(); cursors = {}; render(); } } },
      fields, el("button", { type: "submit", text: "Filter" }));
  }
  function table(cls, headers, rows) {
    var t = el("table", { class: cls }, el("tr", {}, headers.map(function (h) { return el("th", { text: h }); })));
    rows.forEach(function (r) { t.appendChild(r); });
    return t;
  }
  // Pages of a listing: the cursors that led to the page shown, per list (a filter starts over).
  var PAGE = 50;
  var cursors = {};
  function paged(name, q) {
    var stack = cursors[name] || [];
    var after = stack[stack.length - 1];
    return q + "&limit=" + PAGE + (after ? "&after=" + encodeURIComponent(after) : "");
  }
  function pager(name, page) {
    var stack = cursors[name] || (cursors[name] = []);
    var nav = el("span", { class: "pager" });
    if (stack.length) nav.appendChild(el("button", { class: "previous", text: "Previous", on: { click: function () { stack.pop(); render(); } } }));
    if (page.next) nav.appendChild(el("button", { class: "next", text: "Next", on: { click: function () { stack.push(page.next); render(); } } }));
    return nav;
  }
  function counted(name, page, noun) {
    var first = (cursors[name] || []).length * PAGE, shown = page.items.length;
    var total = page.count + (page.exact ? "" : "+");
    var range = shown < page.count ? (shown ? first + 1 : first) + "-" + (first + shown) + " of " : "";
    return el("p", { class: "count" }, el("span", { class: "shown", text: range + total + " " + noun }), pager(name, page));
  }
  function when(iso) { return iso ? new Date(iso).toLocaleString() : ""; }
  function tagCell(tags) {
    var td = el("td", {});
    tags.concat([]).sort().forEach(function (t) { td.appendChild(el("span", { class: "tag", text: t })); });
    return td;
  }

  // A file the API answers with: fetched with the token, then saved through a temporary link.
  function download(path, filename) {
    return fetch(path, { headers: { Authorization: "Bearer " + token } }).then(function (r) {
      if (!r.ok) return r.json().then(function (d) { throw new Error(d.message); });
      return r.blob();
    }).then(function (blob) {
      var url = URL.createObjectURL(blob);
      var a = el("a", { href: url, download: filename });
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(function () { URL.revokeObjectURL(url); }, 1000);
    }).catch(fail);
  }

  var crmFilters = { responsible_id: "", status: "", tag: "", text: "" };
  var importFile = null; // the File chosen, kept across live re-renders
  var importReport = null;
  function crmClients() {
    return Promise.all([api("GET", "api/clients?" + paged("clients", query(crmFilters))), api("GET", "api/statuses")]).then(function (r) {
      var page = r[0], statuses = r[1];
      var responsible = picker("responsible", operatorOptions(), crmFilters.responsible_id, "any operator");
      var status = picker("status", same(statuses), crmFilters.status, "any status");
      var tag = el("input", { placeholder: "tag", "aria-label": "client tag", value: crmFilters.tag });
      var text = el("input", { placeholder: "name, email, phone", "aria-label": "client search", value: crmFilters.text });
      var filters = filterForm([responsible, status, tag, text], function () {
        crmFilters = { responsible_id: responsible.value, status: status.value, tag: tag.value, text: text.value };
      });
      var rows = page.items.map(function (c) {
        return el("tr", { "data-id": c.id },
          el("td", { class: "client-name", text: c.name }), el("td", { text: c.emails.join(", ") }),
          el("td", { text: c.status }), el("td", { text: c.responsible_id ? nameOf(c.responsible_id) : "" }),
          tagCell(c.tags));
      });
      var add = miniForm("Add client", ["name", "email", "phone"], function (v) {
        act("POST", "api/clients", { name: v[0], email: v[1] || undefined, phone: v[2] || undefined });
      });
      var exporter = el("button", { class: "export", text: "Export CSV", on: { click: function () {
        download("api/clients/export?" + query(crmFilters), "clients.csv");
      } } });
      return el("div", {}, filters, el("div", { class: "row-actions" }, counted("clients", page, "clients"), exporter),
        table("clients", ["Name", "Email", "Status", "Responsible", "Tags"], rows),
        el("h3", { text: "Add a client" }), add, importer());
    });
  }

  function importer() {
    var file = el("input", { type: "file", accept: ".csv,.txt,text/csv", "aria-label": "CSV file", on: { change: function (e) {
      importFile = e.target.files[0] || null;
      importReport = null;
      render();
    } } });
    function run(dryRun) {
      if (!importFile) return;
      fetch("api/clients/import?dry_run=" + dryRun, {
        method: "POST", headers: { Authorization: "Bearer " + token, "Content-Type": "text/csv" }, body: importFile
      }).then(function (r) {
        return r.json().then(function (d) { if (!r.ok) throw new Error(d.message); return d; });
      }).then(function (report) {
        importReport = report;
        if (!dryRun) importFile = null;
        $("error").textContent = "";
        render();
      }).catch(fail);
    }
    var box = el("div", { class: "import" }, el("h3", { text: "Import clients from CSV" }), file,
      importFile ? el("span", { class: "chosen", text: importFile.name }) : null,
      el("button", { class: "check", text: "Check file", on: { click: function () { run(true); } } }),
      el("button", { class: "import-run", text: "Import", on: { click: function () { run(false); } } }));
    if (importReport) box.appendChild(reportOf(importReport));
    return box;
  }

  function reportOf(report) {
    var box = el("div", { class: "report", "data-dry-run": String(report.dry_run) },
      el("p", { class: "summary", text: (report.dry_run ? "Plan: " : "Imported: ") + report.summary }));
    if (report.errors.length) {
      box.appendChild(table("rejected", ["Record", "Line", "Column", "Reason"], report.errors.map(function (e) {
        return el("tr", {}, el("td", { text: String(e.record) }), el("td", { text: String(e.line) }),
          el("td", { text: e.column }), el("td", { class: "reason", text: e.reason }));
      })));
      if (report.errors.length < report.rejected) {
        box.appendChild(el("p", { text: "The first " + report.errors.length + " of " + report.rejected + " rejected rows." }));
      }
    }
    if (report.rejected_file) {
      box.appendChild(el("button", { class: "rejected-file", text: "Download rejected rows", on: { click: function () {
        download(report.rejected_file, "rejected.csv");
      } } }));
    }
    return box;
  }

  var dealFilters = { status: "open", stage: "", responsible_id: "" };
  function crmDeals() {
    return Promise.all([api("GET", "api/deals?" + paged("deals", query(dealFilters))), api("GET", "api/stages")]).then(function (r) {
      var page = r[0];
      var status = picker("deal status", same(["open", "won", "lost"]), dealFilters.status, "any status");
      var stage = picker("stage", same(r[1]), dealFilters.stage, "any stage");
      var responsible = picker("deal responsible", operatorOptions(), dealFilters.responsible_id, "any operator");
      var filters = filterForm([status, stage, responsible], function () {
        dealFilters = { status: status.value, stage: stage.value, responsible_id: responsible.value };
      });
      return el("div", {}, filters, counted("deals", page, "deals"), dealTable(page.items));
    });
  }
  function dealTable(items) {
    return table("deals", ["Deal", "Client", "Amount", "Stage", "Status", "Responsible", "Updated"], items.map(function (d) {
      return el("tr", { "data-id": d.id }, el("td", { class: "title", text: d.title }),
        el("td", { class: "client-name", text: d.client_name }), el("td", { text: d.amount + " " + d.currency }),
        el("td", { text: d.stage }), el("td", { text: d.status }),
        el("td", { text: d.responsible_id ? nameOf(d.responsible_id) : "" }), el("td", { text: when(d.updated) }));
    }));
  }

  var taskFilters = { state: "open", due: "", assignee_id: "" };
  function crmTasks() {
    return api("GET", "api/tasks?" + paged("tasks", query(taskFilters))).then(function (page) {
      var state = picker("task state", same(["open", "done"]), taskFilters.state === "any" ? "" : taskFilters.state, "open and done");
      var due = picker("due", [["today", "due today or overdue"], ["overdue", "overdue"]], taskFilters.due, "any due time");
      var assignee = picker("assignee", operatorOptions(), taskFilters.assignee_id, "anyone");
      var filters = filterForm([state, due, assignee], function () {
        taskFilters = { state: state.value || "any", due: due.value, assignee_id: assignee.value };
      });
      return el("div", {}, filters, counted("tasks", page, "tasks"), taskTable(page.items));
    });
  }
  function taskTable(items) {
    return table("tasks", ["Task", "Client", "Due", "Assignee", "Done"], items.map(function (t) {
      return el("tr", { "data-id": t.id, class: t.overdue ? "overdue" : "" }, el("td", { class: "title", text: t.title }),
        el("td", { class: "client-name", text: t.client_name }), el("td", { text: when(t.due) }),
        el("td", { text: nameOf(t.assignee_id) }), el("td", { text: t.done ? "done" : "" }));
    }));
  }

  function crmToday() {
    return api("GET", "api/today").then(function (day) {
      var clients = table("clients", ["Newly assigned client", "Status", "Tags"], day.clients.map(function (c) {
        return el("tr", { "data-id": c.id }, el("td", { class: "client-name", text: c.name }),
          el("td", { text: c.status }), tagCell(c.tags));
      }));
      return el("div", { class: "today" },
        el("h3", { text: "Tasks due today" }),
        el("p", { class: "overdue-count", text: day.overdue ? day.overdue + " overdue" : "Nothing overdue." }),
        taskTable(day.tasks), el("h3", { text: "Deals needing action" }), dealTable(day.deals),
        el("h3", { text: "Newly assigned clients" }), clients);
    });
  }

  if (token) start();
})();
