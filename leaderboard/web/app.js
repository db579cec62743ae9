// siftbench leaderboard: draws the rankings embedded in index.html.
// Every submitted string goes into the page as text (textContent / text nodes), never as HTML.
"use strict";

(function () {
  const data = JSON.parse(document.getElementById("leaderboard-data").textContent);
  const MAX_TASK_COLUMNS = 8; // more tasks than this live in the breakdown only

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key === "on") for (const [event, fn] of Object.entries(value)) node.addEventListener(event, fn);
      else node.setAttribute(key, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child)); // strings become text nodes
    }
    return node;
  }

  const fmt = (x, digits = 4) => (x === null || x === undefined ? "—" : Number(x).toFixed(digits));
  const pm = (mean, std, digits = 4) => (std === null || std === undefined ? fmt(mean, digits) : `${fmt(mean, digits)} ± ${fmt(std, digits)}`);

  function rankCell(entry) {
    if (entry.rank === null) return el("td", { class: "rank unranked", title: `fewer than ${data.min_seeds} seeds: not ranked` }, "–");
    const cell = el("td", { class: "rank" }, String(entry.rank));
    if (entry.tied_with_leader) {
      cell.append(el("span", {
        class: "tie",
        title: `not distinguishable from the leader (Welch's t-test over seeds, p = ${fmt(entry.p_value, 3)} ≥ alpha ${data.alpha})`,
      }, " ≈"));
    }
    return cell;
  }

  function flagList(entry) {
    const span = el("span", { class: "flags" });
    for (const flag of entry.flags) {
      const kind = flag.startsWith("kept") ? "warn" : flag.startsWith("unranked") ? "muted" : "info";
      span.append(el("span", { class: `badge ${kind}` }, flag));
    }
    return span;
  }

  function columns(board) {
    const cols = [
      { key: "rank", label: "Rank", value: (e) => e.rank, type: "rank" },
      { key: "name", label: "Name", value: (e) => e.name, type: "text" },
      { key: "average", label: "Average", value: (e) => e.average, type: "num" },
      { key: "seeds", label: "Seeds", value: (e) => e.seeds, type: "num" },
      { key: "subset_size", label: "Subset size", value: (e) => e.subset_size, type: "num" },
    ];
    if (board.tasks.length <= MAX_TASK_COLUMNS) {
      for (const task of board.tasks) {
        cols.push({ key: `task:${task}`, label: task, value: (e) => e.tasks[task].mean, type: "num", task: true });
      }
    }
    return cols;
  }

  function compare(col, a, b, dir) {
    const va = col.value(a), vb = col.value(b);
    if (col.type === "rank" || col.type === "num") {
      const na = va === null || va === undefined, nb = vb === null || vb === undefined;
      if (na || nb) return na && nb ? 0 : na ? 1 : -1; // missing values (unranked) last either way
      return dir * (va - vb);
    }
    return dir * String(va).localeCompare(String(vb));
  }

  function renderBoard(board) {
    const section = el("section", { class: "board", id: `board-${board.id}`, "data-board-id": board.id });
    section.append(
      el("h2", {}, board.title),
      el("p", { class: "provenance" }, board.provenance),
    );
    const cols = columns(board);
    const table = el("table", { class: "ranking", "data-board-id": board.id });
    const headRow = el("tr");
    const tbody = el("tbody");
    let sortState = { key: "rank", dir: 1 };

    function sortBy(col, dir) {
      sortState = { key: col.key, dir };
      const rows = Array.from(tbody.querySelectorAll("tr"));
      const byId = new Map(board.entries.map((e) => [String(e.id), e]));
      rows.sort((ra, rb) => compare(col, byId.get(ra.dataset.entryId), byId.get(rb.dataset.entryId), dir)
        || compare(cols[0], byId.get(ra.dataset.entryId), byId.get(rb.dataset.entryId), 1));
      for (const row of rows) tbody.append(row);
      for (const th of headRow.children) {
        th.setAttribute("aria-sort", th.dataset.key === col.key ? (dir > 0 ? "ascending" : "descending") : "none");
      }
    }

    for (const col of cols) {
      const button = el("button", { type: "button", class: "sort" }, col.label);
      const th = el("th", {
        scope: "col", "data-key": col.key, class: col.type === "text" ? "text" : "num",
        "aria-sort": col.key === "rank" ? "ascending" : "none",
      }, button);
      button.addEventListener("click", () => {
        const first = col.type === "num" ? -1 : 1; // scores: best first; names and ranks: ascending first
        sortBy(col, sortState.key === col.key ? -sortState.dir : first);
      });
      headRow.append(th);
    }
    headRow.append(el("th", { scope: "col", class: "text" }, "Flags"));
    table.append(el("thead", {}, headRow), tbody);

    const breakdown = el("div", { class: "breakdown", hidden: "" });
    for (const entry of board.entries) {
      const row = el("tr", { "data-entry-id": entry.id, class: entry.rank === 1 ? "leader" : null });
      row.append(rankCell(entry));
      const open = el("button", { type: "button", class: "entry", title: "show the per-task breakdown" }, entry.name);
      open.addEventListener("click", () => showBreakdown(board, entry, breakdown, table));
      row.append(el("td", { class: "name" }, open));
      row.append(el("td", { class: "num" }, pm(entry.average, entry.average_std)));
      row.append(el("td", { class: "num" }, String(entry.seeds)));
      row.append(el("td", { class: "num" }, Math.round(entry.subset_size).toLocaleString("en")));
      for (const col of cols.filter((c) => c.task)) row.append(el("td", { class: "num" }, fmt(col.value(entry), 3)));
      row.append(el("td", { class: "text" }, flagList(entry)));
      tbody.append(row);
    }

    section.append(el("div", { class: "table-scroll" }, table), breakdown);
    const figures = el("div", { class: "plots" });
    const captions = { size: "Average vs subset size", tasks: "Per-task comparison" };
    for (const [kind, src] of Object.entries(board.plots || {})) {
      figures.append(el("figure", {},
        el("img", { src, alt: `${captions[kind]} for ${board.title}` }),
        el("figcaption", {}, captions[kind])));
    }
    section.append(figures);
    return section;
  }

  function showBreakdown(board, entry, panel, table) {
    for (const row of table.querySelectorAll("tr.selected")) row.classList.remove("selected");
    table.querySelector(`tr[data-entry-id="${CSS.escape(String(entry.id))}"]`).classList.add("selected");
    panel.replaceChildren();
    const leader = board.entries.find((e) => e.rank === 1);
    const close = el("button", { type: "button", class: "close", "aria-label": "close the breakdown" }, "×");
    close.addEventListener("click", () => {
      panel.hidden = true;
      for (const row of table.querySelectorAll("tr.selected")) row.classList.remove("selected");
    });
    panel.append(close, el("h3", { class: "entry-name" }, entry.name));
    const rank = entry.rank === null ? `unranked (${entry.seeds} seed${entry.seeds === 1 ? "" : "s"})` : `rank ${entry.rank}`;
    panel.append(el("p", { class: "summary" },
      `${rank} · average ${pm(entry.average, entry.average_std)} over ${entry.seeds} seed(s) · `,
      `subset ${Math.round(entry.subset_size).toLocaleString("en")} samples`, " ", flagList(entry)));

    const tasks = el("table", { class: "tasks" });
    const head = el("tr", {}, el("th", { class: "text" }, "Task"), el("th", { class: "num" }, "Mean ± std"));
    for (const run of entry.runs) head.append(el("th", { class: "num" }, `seed ${run.seed}`));
    if (leader && leader !== entry) head.append(el("th", { class: "num", title: `difference from ${leader.name}` }, "Δ leader"));
    tasks.append(el("thead", {}, head));
    const body = el("tbody");
    for (const task of board.tasks) {
      const stats = entry.tasks[task];
      const row = el("tr", { "data-task": task }, el("td", { class: "text" }, task), el("td", { class: "num" }, pm(stats.mean, stats.std, 4)));
      for (const run of entry.runs) row.append(el("td", { class: "num" }, fmt(run.tasks[task], 4)));
      if (leader && leader !== entry) {
        const delta = stats.mean - leader.tasks[task].mean;
        row.append(el("td", { class: `num ${delta >= 0 ? "up" : "down"}` }, `${delta >= 0 ? "+" : ""}${fmt(delta, 4)}`));
      }
      body.append(row);
    }
    tasks.append(body);
    panel.append(el("h4", {}, "Per-task results"), el("div", { class: "table-scroll" }, tasks));

    panel.append(el("h4", {}, "Filter config"), el("pre", { class: "config" }, JSON.stringify(entry.filter_config, null, 2)));
    if (Array.isArray(entry.filters) && entry.filters.length) {
      panel.append(el("p", { class: "filters" }, "Filters: ",
        entry.filters.map((f) => `${f.name ?? "?"} v${f.version ?? "?"}`).join(" → ")));
    }

    const runs = el("table", { class: "runs" });
    runs.append(el("thead", {}, el("tr", {}, ...["Seed", "Run", "Average", "Subset", "Subset sha256", "Re-evaluated",
      "siftbench", "Submitted"].map((h) => el("th", {}, h)))));
    const runBody = el("tbody");
    for (const run of entry.runs) {
      runBody.append(el("tr", {},
        el("td", { class: "num" }, String(run.seed)), el("td", {}, run.run_name),
        el("td", { class: "num" }, fmt(run.average)), el("td", { class: "num" }, String(run.subset_size)),
        el("td", { class: "mono", title: run.subset_sha256 }, run.subset_sha256.slice(0, 12) + "…"),
        el("td", {}, run.reevaluated ? "yes" : "no"),
        el("td", {}, `${run.siftbench_version ?? "?"}${run.git_revision ? ` (${run.git_revision.slice(0, 8)})` : ""}`),
        el("td", {}, run.submitted_at)));
    }
    runs.append(runBody);
    panel.append(el("h4", {}, "Runs"), el("div", { class: "table-scroll" }, runs));
    panel.hidden = false;
    panel.scrollIntoView({ block: "nearest" });
  }

  const nav = document.getElementById("board-nav");
  const container = document.getElementById("boards");
  if (!data.boards.length) container.append(el("p", { class: "notice" }, "No entries yet: submit one with `siftbench submit RUN_DIR --name NAME`."));
  for (const board of data.boards) {
    nav.append(el("a", { href: `#board-${board.id}` }, board.title));
    container.append(renderBoard(board));
  }
  document.getElementById("rule").textContent = data.rule;
  document.getElementById("generated").textContent = `Built ${data.generated}.`;
})();
