// The dashboard's only script: it draws the charts whose data each page embeds
// (the #charts JSON, built in pages.py), keeps the Now page's feed live, opens a
// call's page from its row, and keeps the proxy's state in the navigation bar current.
"use strict";

const COLORS = ["#4269d0", "#efb118", "#ff725c", "#6cc5b0", "#3ca951", "#ff8ab7", "#a463f2", "#97bbf5", "#9c6b4e", "#9498a0"];
const FEED_ROWS = 200;
const PROXY_POLL_MS = 2000;

function drawCharts() {
  const source = document.getElementById("charts");
  if (!source) return;
  const charts = JSON.parse(source.textContent);
  for (const canvas of document.querySelectorAll("canvas[data-chart]")) {
    const spec = charts[canvas.dataset.chart];
    if (!spec) continue;
    const scales = {
      x: { stacked: spec.stacked },
      y: { stacked: spec.stacked, beginAtZero: true, title: { display: spec.money_axis, text: "tokens" } },
    };
    if (spec.money_axis) {
      scales.money = { position: "right", beginAtZero: true, grid: { drawOnChartArea: false }, title: { display: true, text: "USD" } };
    }
    new Chart(canvas, {
      type: spec.kind,
      data: {
        labels: spec.labels,
        datasets: spec.datasets.map((dataset, index) => ({
          label: dataset.label,
          data: dataset.data,
          text: dataset.text,
          type: dataset.type,
          yAxisID: dataset.axis === "money" ? "money" : "y",
          // A line is drawn in front of the bars (Chart.js draws the lowest order last).
          order: dataset.type === "line" ? 0 : 1,
          backgroundColor: COLORS[index % COLORS.length],
          borderColor: COLORS[index % COLORS.length],
          borderDash: dataset.label.startsWith("Target") ? [6, 4] : [],
        })),
      },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        scales,
        // A dataset may carry its values as the server writes them (costs: pages.py, money.usd).
        plugins: { tooltip: { callbacks: { label: (item) => `${item.dataset.label}: ${item.dataset.text?.[item.dataIndex] ?? item.formattedValue}` } } },
      },
    });
  }
}

function followFeed() {
  const table = document.getElementById("feed");
  if (!table) return;
  const state = document.getElementById("feed-state");
  const feed = new EventSource("/feed?after=" + encodeURIComponent(table.dataset.after));
  feed.addEventListener("call", (event) => {
    // The row comes rendered (and escaped) by the server's own template.
    const message = JSON.parse(event.data);
    document.getElementById("call-" + message.call.interaction_id)?.remove();
    const rows = table.tBodies[0];
    rows.insertAdjacentHTML("afterbegin", message.html);
    while (rows.rows.length > FEED_ROWS) rows.deleteRow(-1);
  });
  feed.addEventListener("open", () => {
    state.textContent = "live";
    state.className = "live";
  });
  feed.addEventListener("error", () => {
    state.textContent = "reconnecting";
    state.className = "stale";
  });
}

// A click anywhere on a call's row (but on its links and boxes) opens the call's page.
function openCallRows() {
  document.addEventListener("click", (event) => {
    const row = event.target.closest("tr.opens[data-interaction]");
    if (!row || event.target.closest("a, input, button, select, label")) return;
    window.location.assign("/calls/" + encodeURIComponent(row.dataset.interaction));
  });
}

// "tick all" ticks every call box of the retag form on the page.
function tickAll() {
  for (const all of document.querySelectorAll("input[data-tick-all]")) {
    all.addEventListener("change", () => {
      for (const box of document.querySelectorAll('input[type="checkbox"][name="call"][form="retag"]')) box.checked = all.checked;
    });
  }
}

// The call a link or a form sent back to (#call-ID) is shown open.
function openLinkedCall() {
  const target = window.location.hash ? document.getElementById(window.location.hash.slice(1)) : null;
  const details = target?.querySelector("details");
  if (details) details.open = true;
}

// What `meter status` warns of the proxy's OpenTelemetry export, a line each, under the navigation bar.
function showProblems(problems) {
  const list = document.getElementById("proxy-problems");
  if (!list) return;
  list.replaceChildren(
    ...problems.map((problem) => {
      const item = document.createElement("li");
      item.textContent = problem;
      return item;
    }),
  );
}

function watchProxy() {
  const badge = document.getElementById("proxy-state");
  if (!badge) return;
  const look = async () => {
    try {
      const response = await fetch("/proxy", { cache: "no-store" });
      if (!response.ok) return;
      const state = await response.json();
      badge.textContent = state.text;
      badge.className = "proxy " + state.state;
      showProblems(state.problems);
    } catch {
      badge.textContent = "The dashboard does not answer: is `meter ui` still running?";
      badge.className = "proxy unknown";
    }
  };
  look();
  setInterval(look, PROXY_POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  drawCharts();
  followFeed();
  openCallRows();
  openLinkedCall();
  tickAll();
  watchProxy();
});
